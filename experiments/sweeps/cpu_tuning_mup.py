r"""muP on the CPU scaling grid: does one learning rate serve every width, at least as well as the
per-size SP rates (experiments/tuning.py)?

  python -m launch.sweep --sweep=experiments/sweeps/cpu_tuning_mup.py \
      --workdir=runs/cpu_tuning_mup --parallel=2 --nofit

d_model 8, 24 and 48 under muP with base_width 8 (the proxy has 2 heads of 4, so base_head_dim 4:
head_dim grows to 12 at d_model 24 and stays there as d_model 48 doubles the heads), each at the
budget its SP rate was tuned at and with the tuned beta2 and warmup, at 5 rates a factor of 2
apart: 15 runs. `experiments.tuning mup`
compares each width's best with the SP rate tuning's best at the same size and budget.
"""

import launch
from experiments import tuning
from experiments.sweeps import cpu_scaling, cpu_tuning_lr

D_MODELS = (8, 24, 48)
BASE_WIDTH = 8
BASE_HEAD_DIM = BASE_WIDTH // cpu_scaling.num_heads(BASE_WIDTH)
RATES = (0.004, 0.008, 0.016, 0.032, 0.064)


def get_sweep():
  base = cpu_scaling.get_base()
  chosen = tuning.read_tuning(stages=('optimizer',))
  members = []
  for d in D_MODELS:
    for rate in RATES:
      member = tuning.tuning_member(
          base, d, cpu_scaling.num_heads(d), cpu_tuning_lr.tuning_budget(d), learning_rate=rate,
          b2=chosen['b2'], warmup_fraction=chosen['warmup_fraction'], tag=f'mup_lr{rate:g}')
      members.append(launch.Member(member.name, {**member.overrides,
                                                 'model.parametrization': 'mup',
                                                 'model.base_width': BASE_WIDTH,
                                                 'model.base_head_dim': BASE_HEAD_DIM},
                                   budget=member.budget))
  return base, members
