r"""Learning-rate transfer across widths, under SP and under muP: final loss against the peak
learning rate for d_model 64 to 512.

  python -m launch.sweep --sweep=experiments/sweeps/mup_lr_transfer.py --workdir=runs/mup_lr \
      --parallel=2
  python -m experiments.lr_transfer --workdir=runs/mup_lr   # the table and lr_transfer.png

88 byte-level GPTs: widths 64, 128, 256 and 512 (2 layers, 4 heads, so head_dim grows with the
width) x peak learning rates 2^-14 ... 2^-4 x {SP, muP with base_width 64}. Every member trains
on the same 51K tokens of the stdlib corpus (200 steps of 4 x 64 bytes, warmup 20 steps, cosine
to 10%) and is evaluated on the same 40 validation batches (10K tokens). The runs are short so
that the 88 of them fit in about 20 minutes of an idle 2-core CPU (65 under a load of 8-10).
Measured (docs/scaling.md, BENCHMARKS.md): under SP the best rate falls from 2^-9 at width 64 to
2^-12 at 512; under muP it stays at 2^-9. The CPU scaling sweep stays in SP (see its docstring).
"""

import ml_collections

import launch
from experiments.configs import base as base_config

WIDTHS = (64, 128, 256, 512)
LOG2_LEARNING_RATES = tuple(range(-14, -3))  # 2^-14 ... 2^-4
PARAMETRIZATIONS = ('sp', 'mup')
BASE_WIDTH = 64
NUM_STEPS = 200


def get_base() -> ml_collections.ConfigDict:
  config = base_config.get_config()
  config.model.update(num_layers=2, num_heads=4, max_seq_len=64, base_width=BASE_WIDTH)
  config.data.update(source='stdlib', tokenizer='byte', seq_len=64, batch_size=4,
                     max_corpus_bytes=2_000_000)
  config.train.update(num_steps=NUM_STEPS, warmup_steps=NUM_STEPS // 10, eval_every=NUM_STEPS,
                      eval_batches=40, log_every=NUM_STEPS // 4, checkpoint_every=NUM_STEPS,
                      async_checkpoints=False)
  return config


def member(parametrization: str, d_model: int, log2_lr: int) -> launch.Member:
  return launch.Member(f'{parametrization}_d{d_model}_log2lr{log2_lr}', {
      'model.parametrization': parametrization, 'model.d_model': d_model,
      'train.learning_rate': 2.0**log2_lr})


def get_sweep():
  # Width by width, so a sweep cut short still compares SP and muP over the widths it reached.
  return get_base(), [member(p, d, k) for d in WIDTHS for p in PARAMETRIZATIONS
                      for k in LOG2_LEARNING_RATES]
