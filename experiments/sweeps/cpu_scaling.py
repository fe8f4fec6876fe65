r"""A scaling sweep on a CPU: 5 compute budgets over 2 decades x 5 model sizes, and a second seed
for the two sizes nearest each budget's minimum: 35 members, about 3 minutes on 2 cores with
AVX-512 (its timings are in BENCHMARKS.md).

  python -m launch.sweep --sweep=experiments/sweeps/cpu_scaling.py --workdir=runs/cpu_scaling \
      --parallel=2

Byte-level GPTs of 2 layers, d_model 4 to 64 (2.0K to 125K parameters), trained on the embedded
stdlib corpus at C = 6e9, 2e10, 6e10, 2e11 and 6e11 FLOPs spent (`flops_full`: every matmul,
attention and the readout over the 256 byte ids; Chinchilla's accounting, with N the total
parameter count). Each member reads D = C / (its FLOPs per token) tokens, so the members of a
budget spend it within one step. Neighbouring budgets share sizes, so each size is trained to the
end of its schedule at 2 to 5 budgets (what Chinchilla's approach 1 reads).

Fixed before the sweep's losses were seen:
- 4 sequences of 128 bytes per step (512 tokens). With 16 per step the same tokens came in 4x fewer
  steps and these models were limited by optimizer steps: the smallest model won every budget and
  no IsoFLOP curve had a minimum. At 2 per step the loss got worse again.
- The hyperparameters come from `cpu_tuning.json`, written by the tuning sweeps at this batch and
  these budgets (experiments/tuning.py says how): AdamW's beta2, the warmup fraction (each run's
  own steps), and a peak learning rate for every d_model, each tuned at a budget it is trained at.
  The cosine decay ends at each member's own last step (at 10% of the peak), so every member is a
  finished run of its token budget (Hoffmann et al.).
- 200 eval batches = 102K tokens, the same windows for every member: the standard error of a
  difference between two members is 0.003 nats (paired over batches).
- `data.max_corpus_bytes` = 12 MB: 11.4M training tokens, more than any member reads (at most
  5.4M), so no member sees a token twice.
- 16 optimizer steps per jitted call (`train.steps_per_call`): the same run, with the host's share
  of these tiny steps paid once per 16 (docs/performance.md).
Chosen after a first run of this sweep: the windows of sizes. They sat one size higher (d_model 6
to 96); the minima at 6e9 and 2e10 then fell on the smallest size, so each window moved one size
down, where every budget's curve turns up on both sides.

muP was measured on this grid (`cpu_tuning_mup.py`, docs/scaling.md): its best rate drifts with
width and it ends above the tuned SP rates, so the sweep stays in SP with a rate per size.
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
  tuned = tuning.read_tuning(stages=('optimizer', 'lr'))
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
