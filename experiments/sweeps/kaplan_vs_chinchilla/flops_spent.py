"""Budgets in the FLOPs each run spends, untuned hyperparameters."""

from experiments.sweeps import cpu_scaling
from experiments.sweeps.kaplan_vs_chinchilla import UNTUNED


def get_sweep():
  return cpu_scaling.make_sweep('full', **UNTUNED)
