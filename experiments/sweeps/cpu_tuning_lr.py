r"""The peak learning rate of every size of the CPU scaling sweep (experiments/tuning.py).

  python -m launch.sweep --sweep=experiments/sweeps/cpu_tuning_lr.py \
      --workdir=runs/cpu_tuning_lr --parallel=2 --nofit

Each d_model of the grid at a budget near the middle of the budgets it is trained at, with the
beta2 and warmup `experiments.tuning optimizer` chose, at 7 rates a factor of 2 apart around
`centre_rate` (the grid's centre, not a result): 63 runs.
"""

from experiments import tuning
from experiments.sweeps import cpu_scaling

FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def centre_rate(d_model: int) -> float:
  """The centre of the rate grid: 8e-3 up to d_model 32, then falling as 1/d_model."""
  return 8e-3 * min(1.0, 32 / d_model)


def tuning_budget(d_model: int) -> float:
  """The middle one of the budgets `d_model` is trained at (the lower of two middles)."""
  budgets = sorted(c for c, sizes in cpu_scaling.BUDGETS.items() if d_model in sizes)
  return budgets[(len(budgets) - 1) // 2]


def get_sweep():
  base = cpu_scaling.get_base()
  chosen = tuning.read_tuning(stages=('optimizer',))
  members = []
  for d in cpu_scaling.d_models():
    for factor in FACTORS:
      rate = centre_rate(d) * factor
      members.append(tuning.tuning_member(
          base, d, cpu_scaling.num_heads(d), tuning_budget(d), learning_rate=rate,
          b2=chosen['b2'], warmup_fraction=chosen['warmup_fraction'], tag=f'lr{rate:.3g}'))
  return base, members
