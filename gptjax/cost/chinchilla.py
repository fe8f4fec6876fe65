"""The Chinchilla loss law L(N, D) and the split of a compute budget it calls optimal.

The law is what a sweep's approach-3 fit produces (`gptjax.scaling.laws.fit_chinchilla`) and what
the cost estimator asks for a budget's model size and tokens (`gptjax.cost.estimator`), so it lives
below both: numpy only, no fitting.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

CHINCHILLA_PARAMS = ('E', 'A', 'B', 'alpha', 'beta')


@dataclasses.dataclass(frozen=True)
class ChinchillaFit:
  """L(N, D) = E + A/N^alpha + B/D^beta, with bootstrap intervals when they were asked for."""

  E: float
  A: float
  B: float
  alpha: float
  beta: float
  objective: float = 0.0  # the Huber loss at the optimum, divided by delta
  intervals: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
  # [S, 5] the bootstrap refits' (E, A, B, alpha, beta); no rows without a bootstrap.
  bootstrap: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 5)),
                                            compare=False, repr=False)

  def predict(self, params: Any, tokens: Any) -> np.ndarray:
    n, d = np.asarray(params, np.float64), np.asarray(tokens, np.float64)
    return self.E + self.A / n**self.alpha + self.B / d**self.beta

  @property
  def n_exponent(self) -> float:
    """a in N_opt ∝ C^a."""
    return self.beta / (self.alpha + self.beta)

  @property
  def d_exponent(self) -> float:
    """b in D_opt ∝ C^b."""
    return self.alpha / (self.alpha + self.beta)

  def compute_optimal(self, compute: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) minimising L under C = 6·N·D, in closed form (Hoffmann et al. eq. 4)."""
    c = np.asarray(compute, np.float64)
    log_g = (np.log(self.alpha * self.A) - np.log(self.beta * self.B)) / (self.alpha + self.beta)
    log_c6 = np.log(c / 6)
    n_opt = np.exp(log_g + self.n_exponent * log_c6)
    d_opt = np.exp(-log_g + self.d_exponent * log_c6)
    return n_opt, d_opt

  def refits(self) -> ChinchillaFit:
    """The bootstrap refits as one law whose fields are [S] arrays: its `compute_optimal` and
    `predict` give a sample per refit, for intervals on anything the law derives."""
    return ChinchillaFit(*self.bootstrap.T)
