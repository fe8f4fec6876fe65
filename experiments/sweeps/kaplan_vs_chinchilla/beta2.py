"""Budgets in FLOPs spent, the tuned warmup and beta2; the rates untuned."""

from experiments.sweeps import cpu_scaling
from experiments.sweeps.kaplan_vs_chinchilla import UNTUNED


def get_sweep():
  return cpu_scaling.make_sweep('full', **{**UNTUNED, 'warmup_fraction': None, 'b2': None})
