"""IsoFLOP sweep small enough for a 2-core CPU: 3 compute budgets x 5 model sizes.

  python -m launch.sweep --sweep=experiments/sweeps/cpu_scaling.py --workdir=runs/cpu_scaling
"""

import ml_collections

import launch
from experiments.configs import base as base_config

Size = launch.Size

def _lr(d_model: int) -> float:
  return 2e-3 * (128 / d_model) ** 0.5

SIZES = {name: Size(d, l, h, _lr(d)) for name, (d, l, h) in {
    'd16': (16, 2, 2), 'd24': (24, 2, 2), 'd32': (32, 2, 2), 'd48': (48, 2, 4), 'd64': (64, 2, 4),
    'd64l3': (64, 3, 4), 'd96': (96, 3, 4), 'd128': (128, 3, 4), 'd128l4': (128, 4, 4),
    'd192': (192, 4, 6)}.items()}


def get_base() -> ml_collections.ConfigDict:
  config = base_config.get_config()
  config.model.max_seq_len = 128
  config.data.update(source='stdlib', tokenizer='byte', seq_len=128, batch_size=16,
                     max_corpus_bytes=8_000_000)
  config.train.update(eval_batches=24, async_checkpoints=False)
  return config


def get_sweep():
  base = get_base()
  names = ['d16', 'd24', 'd32', 'd48', 'd64', 'd64l3', 'd96', 'd128']
  budgets = {1e11: names[:5], 1e12: names[2:]}
  members = launch.isoflop_members(base, {c: [SIZES[n] for n in ns] for c, ns in budgets.items()})
  return base, members
