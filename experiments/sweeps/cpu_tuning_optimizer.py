r"""AdamW's beta2 and the warmup fraction for the CPU scaling sweep (experiments/tuning.py).

  python -m launch.sweep --sweep=experiments/sweeps/cpu_tuning_optimizer.py \
      --workdir=runs/cpu_tuning_optimizer --parallel=2 --nofit

beta2 in {0.95, 0.99, 0.999} x warmup in {2%, 5%, 15%, 30%} of each run's steps, at three sizes each
trained at a budget where it is mid-curve in the scaling sweep, with the rate rule that centres the
learning-rate grid (`cpu_tuning_lr.centre_rate`): 36 runs.
"""

from experiments import tuning
from experiments.sweeps import cpu_scaling, cpu_tuning_lr

SIZES = ((12, 2e10), (24, 6e10), (48, 2e11))  # (d_model, budget in FLOPs spent)
B2S = (0.95, 0.99, 0.999)
WARMUP_FRACTIONS = (0.02, 0.05, 0.15, 0.3)


def get_sweep():
  base = cpu_scaling.get_base()
  members = [tuning.tuning_member(base, d, cpu_scaling.num_heads(d), budget,
                                  learning_rate=cpu_tuning_lr.centre_rate(d), b2=b2,
                                  warmup_fraction=w, tag=f'b{b2:g}_w{w:g}')
             for d, budget in SIZES for b2 in B2S for w in WARMUP_FRACTIONS]
  return base, members
