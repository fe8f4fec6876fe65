r"""Learning-rate transfer across widths, under SP and under muP: final loss against the peak
learning rate for d_model 64 to 512.

  python -m launch.sweep --sweep=experiments/sweeps/mup_lr_transfer.py --workdir=runs/mup_lr \
      --parallel=2
  python -m experiments.lr_transfer --workdir=runs/mup_lr   # the table and lr_transfer.png

264 byte-level GPTs: widths 64, 128, 256 and 512 (2 layers, 4 heads, so head_dim grows with the
width) x peak learning rates 2^-14 ... 2^-4 x {SP, muP with base_width 64} x 3 seeds (the
initialisation and the data order; the members of seeds 1 and 2 end in `_s1`, `_s2`). Every
member trains on 51K tokens of the stdlib corpus (200 steps of 4 x 64 bytes, warmup 20 steps,
cosine to 10%) and is evaluated on the same 40 validation batches (10K tokens).
`experiments.lr_transfer` reports the mean over seeds and a bootstrap interval over seeds of each
width's best rate (docs/scaling.md has the measured table and its time).
"""

import ml_collections

import launch
from experiments.configs import base as base_config

WIDTHS = (64, 128, 256, 512)
LOG2_LEARNING_RATES = tuple(range(-14, -3))  # 2^-14 ... 2^-4
PARAMETRIZATIONS = ('sp', 'mup')
BASE_WIDTH = 64
NUM_STEPS = 200
SEEDS = (0, 1, 2)


def get_base() -> ml_collections.ConfigDict:
  config = base_config.get_config()
  config.model.update(num_layers=2, num_heads=4, max_seq_len=64, base_width=BASE_WIDTH)
  config.data.update(source='stdlib', tokenizer='byte', seq_len=64, batch_size=4,
                     max_corpus_bytes=2_000_000)
  config.train.update(num_steps=NUM_STEPS, warmup_steps=NUM_STEPS // 10, eval_every=NUM_STEPS,
                      eval_batches=40, log_every=NUM_STEPS // 4, checkpoint_every=NUM_STEPS,
                      async_checkpoints=False)
  return config


def member(parametrization: str, d_model: int, log2_lr: int, seed: int = 0) -> launch.Member:
  suffix = f'_s{seed}' if seed else ''
  return launch.Member(f'{parametrization}_d{d_model}_log2lr{log2_lr}{suffix}', {
      'model.parametrization': parametrization, 'model.d_model': d_model,
      'train.learning_rate': 2.0**log2_lr, 'seed': seed})


def get_sweep():
  # Seed by seed and width by width, so a sweep cut short still compares SP and muP over the
  # widths and seeds it reached.
  return get_base(), [member(p, d, k, seed) for seed in SEEDS for d in WIDTHS
                      for p in PARAMETRIZATIONS for k in LOG2_LEARNING_RATES]
