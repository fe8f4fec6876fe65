"""Budgets in FLOPs spent, the tuned warmup; beta2 and the rates untuned."""

from experiments.sweeps import cpu_scaling
from experiments.sweeps.kaplan_vs_chinchilla import UNTUNED


def get_sweep():
  return cpu_scaling.make_sweep('full', **{**UNTUNED, 'warmup_fraction': None})
