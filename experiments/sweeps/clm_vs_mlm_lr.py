r"""The peak learning rate of each objective and size of the CLM/MLM study, at seed 0.

  python -m launch.sweep --sweep=experiments/sweeps/clm_vs_mlm_lr.py \
      --workdir=runs/clm_vs_mlm_lr --parallel=2 --nofit
  python -m experiments.clm_vs_mlm rates --workdir=runs/clm_vs_mlm_lr

5 rates a factor of 2 apart around the CPU scaling sweep's grid centre, 8e-3 * min(1, 32 / d_model)
(`cpu_tuning_lr.centre_rate`), for each objective and width: 30 runs of the study's recipe.
"""

from experiments.sweeps import clm_vs_mlm, cpu_tuning_lr

FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def get_sweep():
  base = clm_vs_mlm.get_base()
  members = []
  for d in clm_vs_mlm.WIDTHS:
    for objective in clm_vs_mlm.OBJECTIVES:
      for factor in FACTORS:
        rate = cpu_tuning_lr.centre_rate(d) * factor
        members.append(clm_vs_mlm.member(objective, d, rate, f'{objective}_d{d}_lr{rate:.3g}',
                                         base.seed))
  return base, members
