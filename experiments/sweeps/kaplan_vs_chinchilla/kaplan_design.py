"""Budgets in Kaplan's C (6N + attention, no readout), untuned hyperparameters."""

from experiments.sweeps import cpu_scaling
from experiments.sweeps.kaplan_vs_chinchilla import UNTUNED


def get_sweep():
  return cpu_scaling.make_sweep('kaplan', **UNTUNED)
