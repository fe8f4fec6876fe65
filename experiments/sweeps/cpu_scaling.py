r"""A scaling sweep on a CPU: 5 compute budgets over 2 decades x 5 model sizes, and a second seed
for the two sizes nearest each budget's minimum: 35 members, about 10 minutes on 2 cores (its
timings are in BENCHMARKS.md).

  python -m launch.sweep --sweep=experiments/sweeps/cpu_scaling.py --workdir=runs/cpu_scaling \
      --parallel=2

Byte-level GPTs of 2 layers, d_model 6 to 96 (1.0K to 224K non-embedding parameters), trained on
the embedded stdlib corpus at C = 6e9, 2e10, 6e10, 2e11 and 6e11 FLOPs (Kaplan's C, attention
included). Each budget's sizes straddle its IsoFLOP minimum, which moves from N = 1.1K (d_model 6)
at 6e9 to 27K (d_model 32) at 6e11; neighbouring budgets share sizes, so each size is trained to
the end of its schedule at 2 to 5 budgets (what Chinchilla's approach 1 reads). The choices below
were measured at C = 3e11 (with an 8 MB corpus cap, whose validation split differs: compare these
losses with each other only):

- 4 sequences of 128 bytes per step (512 tokens). With 16 per step the same tokens came in 4x fewer
  steps and d_model=32 ended at 2.19 nats instead of 1.87: at that batch these models are limited
  by optimizer steps, not tokens, so the smallest model (the most steps) wins every budget and no
  IsoFLOP curve has a minimum. At 2 per step the loss got worse again (1.95).
- Learning rate 8e-3 up to d_model=32, then 8e-3 * 32/d_model. d_model=32 ended at 2.07 / 1.87 /
  1.79 / 1.78 with 2e-3 / 4e-3 / 8e-3 / 1.2e-2; d_model=48 at 2.06 / 1.99 with 3.3e-3 / 5.2e-3;
  d_model=16 at 1.89 / 1.92 with 5.7e-3 / 1.6e-2; d_model=64 at 2.19 / 2.20 with 2.8e-3 / 5.7e-3.
  A too-low rate for one size would tilt its IsoFLOP curve and move the minimum. The rates of
  d_model 6 to 12 were not tuned.
  The sweep stays in SP with these per-size rates rather than muP with one rate
  (`model.parametrization='mup'`, docs/mup.md): muP has not been measured on this grid, and in the
  LR-transfer sweep (experiments/sweeps/mup_lr_transfer.py) muP, while its best rate held, ended
  above SP's best loss at every width past its base, so switching could tilt the IsoFLOP curves.
- Warmup 5% of each member's steps, then cosine decay to 10% at its own last step, so every member
  is a finished run of its token budget (Hoffmann et al.: a schedule longer than the run inflates
  the loss of the shorter runs).
- Seeds: the replicas differ from their twin in initialisation and data order. Between seeds the
  final loss moves by 0.018 nats (pooled standard deviation, widest gap 0.059), 6 times the 0.003 nats
  to which the evaluation pins a difference between two runs: one seed per point is what made
  IsoFLOP curves jagged;
  the fits average the seeds and carry their spread into the bootstrap (docs/scaling.md).
- 200 eval batches = 102K tokens, the same windows for every member: the standard error of a
  difference between two members is 0.003 nats (paired over batches).
- `data.max_corpus_bytes` = 12 MB: 11.4M training tokens, more than any member reads (at most
  4.8M), so no member sees a token twice; it also keeps each member's token cache small.
- 16 optimizer steps per jitted call (`train.steps_per_call`): the same run, with the host's share
  of these tiny steps paid once per 16 (docs/performance.md).
"""

from typing import Mapping

import ml_collections

import launch
from experiments import tuning
from experiments.configs import base as base_config

BUDGETS = {  # compute (FLOPs spent) -> the d_model of its sizes
    6e9: (4, 6, 8, 12, 16),
    2e10: (6, 8, 12, 16, 24),
    6e10: (8, 12, 16, 24, 32),
    2e11: (12, 16, 24, 32, 48),
    6e11: (16, 24, 32, 48, 64),
}
SEEDED = (1, 2)  # the sizes (by position) trained with 2 seeds: each budget's minimum lies there


def d_models() -> list[int]:
  return sorted({d for sizes in BUDGETS.values() for d in sizes})


def num_heads(d_model: int) -> int:
  return 2 if d_model < 48 else 4


def get_base() -> ml_collections.ConfigDict:
  config = base_config.get_config()
  config.model.max_seq_len = 128
  config.data.update(source='stdlib', tokenizer='byte', seq_len=128, batch_size=4,
                     max_corpus_bytes=12_000_000)
  config.train.update(eval_batches=200, async_checkpoints=False, steps_per_call=16)
  return config


def make_sweep(method: str = 'full', b2: float | None = None,
               warmup_fraction: float | None = None,
               rates: Mapping[int, float] | None = None):
  """The sweep designed in `method`'s compute, with these hyperparameters; each one left None comes
  from the tuning file. The reconciliation study (experiments/kaplan_vs_chinchilla.py) varies them.
  """
  base = get_base()
  tuned = tuning.read_tuning()
  base.train.b2 = tuned['b2'] if b2 is None else b2
  if rates is None:
    rates = {int(d): rate for d, rate in tuned['learning_rate'].items()}
  budgets = {c: [launch.Size(d_model=d, num_layers=2, num_heads=num_heads(d),
                             learning_rate=rates[d], seeds=2 if i in SEEDED else 1)
                 for i, d in enumerate(sizes)]
             for c, sizes in BUDGETS.items()}
  warmup = tuned['warmup_fraction'] if warmup_fraction is None else warmup_fraction
  return base, launch.isoflop_members(base, budgets, method=method, warmup_fraction=warmup,
                                      num_evals=4, checkpoints=2, log_lines=8)


def get_sweep():
  return make_sweep()
