"""The CPU scaling sweep with one correction added at a time (experiments/kaplan_vs_chinchilla.py).

`untuned` is the grid's starting point: beta2 0.95, warmup 5% of each run's steps and the rate rule
at the centre of the tuning grid (`cpu_tuning_lr.centre_rate`).
"""

from experiments.sweeps import cpu_tuning_lr, cpu_scaling

UNTUNED = dict(b2=0.95, warmup_fraction=0.05,
               rates={d: cpu_tuning_lr.centre_rate(d) for d in cpu_scaling.d_models()})
