"""Chinchilla approach 2 (Hoffmann et al. 2022) on an IsoFLOP sweep's final records.

Per compute budget, a parabola of final loss in log N; its minimum N_opt(C); then the power laws
N_opt ∝ C^a and D_opt ∝ C^b through the minima. Seed replicas of one (budget, size) are averaged
first (`gptjax.scaling.replicas`); where the sweep has them, the bootstrap redraws every cell's
loss with their measured noise, and otherwise it resamples runs within each budget.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import scipy.stats

from gptjax.scaling import replicas as scaling_replicas
from gptjax.scaling.accounting import ComputeRelation
from gptjax.scaling.laws import Records, central_interval, positive_columns
from gptjax.scaling.records import design_budgets
from gptjax.scaling.replicas import Cells, SeedNoise


def _parabola_minimum(log_n: np.ndarray, loss: np.ndarray) -> tuple | None:
  """(coefficients, log N at the minimum, loss there), or None when there is no minimum."""
  if len(np.unique(log_n)) < 3:
    return None
  coef = np.polyfit(log_n, loss, 2)
  if coef[0] <= 0:
    return None
  x_min = -coef[1] / (2 * coef[0])
  return coef, float(x_min), float(np.polyval(coef, x_min))


def _minimum_fit_interval(log_n: np.ndarray, loss: np.ndarray, level: float) -> tuple[float, float]:
  """The `level` interval of a parabola's minimum in log N from the fit's own residuals: the delta
  method on x* = -c1 / (2 c2), with Student's t at n - 3 degrees of freedom.

  The residuals hold both the losses' noise and the curve's departure from a parabola, so exact
  data from a law whose IsoFLOP curve is not a parabola still gets an honest width. (nan, nan) with
  fewer than 4 sizes or no minimum.
  """
  dof = len(log_n) - 3
  if dof < 1 or len(np.unique(log_n)) < 3:
    return float('nan'), float('nan')
  coef, residuals, *_ = np.polyfit(log_n, loss, 2, full=True)
  c2, c1, _ = coef
  if c2 <= 0:
    return float('nan'), float('nan')
  design_Kx3 = np.vander(log_n, 3)
  rss = float(residuals[0]) if len(residuals) else 0.0
  covariance_3x3 = rss / dof * np.linalg.inv(design_Kx3.T @ design_Kx3)
  gradient_3 = np.array([c1 / (2 * c2**2), -1 / (2 * c2), 0.0])
  half_width = scipy.stats.t.ppf(0.5 + level / 2, dof) * np.sqrt(gradient_3 @ covariance_3x3
                                                                  @ gradient_3)
  x_min = -c1 / (2 * c2)
  return float(x_min - half_width), float(x_min + half_width)


@dataclasses.dataclass(frozen=True)
class IsoFLOPResult:
  """Per-budget parabola minima and the power laws N_opt = k_N·C^a, D_opt = k_D·C^b through them.

  `cells` are the (budget, size) points fitted (seed means); `groups[i]` indexes the cells of
  budget i, `parabolas[i]` is its (c2, c1, c0) in log N. `noise` is the measured seed noise (None
  without replicas). `bootstrap` holds (log k_N, a) refits; `minima_bootstrap` [S, G] each
  resample's log N_opt per budget (NaN where that resample's parabola has no minimum), and
  `minima_fit_interval` [G, 2] each minimum's interval in log N from its own fit. D_opt solves
  the records' own C(N, D) (`relation`) at N_opt; under C = 6ND, b = 1 - a exactly.
  """

  budgets: np.ndarray
  n_opt: np.ndarray
  d_opt: np.ndarray
  loss_min: np.ndarray
  parabolas: np.ndarray
  groups: list[np.ndarray]
  n_exponent: float
  log_n_coefficient: float
  bootstrap: np.ndarray
  level: float
  cells: Cells
  noise: SeedNoise | None
  relation: ComputeRelation
  minima_bootstrap: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
  minima_fit_interval: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2)))

  @property
  def d_exponent(self) -> float:
    """b in D_opt ∝ C^b, the slope through the minima's D_opt."""
    return float(np.polyfit(np.log(self.budgets), np.log(self.d_opt), 1)[0])

  def predict_d_opt(self, compute: Any) -> np.ndarray:
    return self.relation.tokens(compute, self.predict_n_opt(compute))

  @property
  def n_exponent_ci(self) -> tuple[float, float]:
    lo, hi = central_interval(self.bootstrap[:, 1:], self.level)[0]
    return float(lo), float(hi)

  def predict_n_opt(self, compute: Any) -> np.ndarray:
    return np.exp(self.log_n_coefficient + self.n_exponent * np.log(np.asarray(compute, float)))

  def n_opt_interval(self, budget_index: int) -> tuple[float, float]:
    """The measured uncertainty of one budget's N_opt: the union of the `level` intervals of its
    resampled minima (seed noise or runs) and of its parabola's own fit, holding the minimum itself;
    (nan, nan) where neither exists."""
    log_n_S = self.minima_bootstrap[:, budget_index] if self.minima_bootstrap.size else np.zeros(0)
    finite_Sx1 = log_n_S[np.isfinite(log_n_S), None]
    ends = [np.log(self.n_opt[budget_index])] * 2
    if len(finite_Sx1):
      ends += list(central_interval(finite_Sx1, self.level)[0])
    if len(self.minima_fit_interval) and np.isfinite(self.minima_fit_interval[budget_index]).all():
      ends += list(self.minima_fit_interval[budget_index])
    if len(ends) == 2:
      return float('nan'), float('nan')
    return float(np.exp(min(ends))), float(np.exp(max(ends)))

  def n_opt_band(self, compute: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise `level` band of the N_opt(C) line over the bootstrap refits."""
    log_c = np.log(np.atleast_1d(np.asarray(compute, float)))
    lines_SxC = np.exp(self.bootstrap[:, :1] + self.bootstrap[:, 1:] * log_c[None])
    lo, hi = central_interval(lines_SxC, self.level).T
    return lo, hi


def _minima(log_n, loss, groups) -> tuple[list[int], list[tuple]]:
  kept, minima = [], []
  for g, index in enumerate(groups):
    found = _parabola_minimum(log_n[index], loss[index])
    if found is not None:
      kept.append(g)
      minima.append(found)
  return kept, minima


def isoflop_minima(records: Records, *, compute_key: str = 'flops_full',
                   params_key: str = 'params_total', loss_key: str = 'eval_loss',
                   tokens_key: str = 'tokens_seen', budget_rtol: float = 0.1,
                   n_bootstrap: int = 200, level: float = 0.95, seed: int = 0) -> IsoFLOPResult:
  """Approach 2 on final records of an IsoFLOP sweep (several model sizes per compute budget).

  Runs are grouped by their design budget where the records carry one, else by compute. A budget
  whose parabola opens downwards or has fewer than 3 sizes is skipped with a warning.
  """
  c, n, l, d = positive_columns(records, compute_key, params_key, loss_key, tokens_key)
  relation = ComputeRelation.from_columns(c, n, d, f'{compute_key} / {tokens_key} per size')
  cells = scaling_replicas.replica_cells(c, n, l, budget_rtol, design_budgets(records))
  noise = scaling_replicas.seed_noise(cells, l)
  log_n, groups = np.log(cells.params), scaling_replicas.budget_groups(cells)
  kept, minima = _minima(log_n, cells.loss, groups)
  for g, index in enumerate(groups):
    if g not in kept:
      warnings.warn(f'Budget C~{np.median(cells.compute[index]):.3g} skipped: {len(index)} model '
                    'sizes with no loss minimum among them; add sizes on both sides.')
  if len(kept) < 2:
    raise ValueError(f'IsoFLOP fit needs at least 2 compute budgets each with 3+ model sizes '
                     f'around a loss minimum; found {len(kept)} of {len(groups)} budgets. Add '
                     'budgets (and sizes on both sides of each minimum) to the sweep.')
  groups = [groups[g] for g in kept]
  budgets = np.array([np.exp(np.mean(np.log(cells.compute[index]))) for index in groups])
  log_n_opt = np.array([m[1] for m in minima])
  a, log_k = np.polyfit(np.log(budgets), log_n_opt, 1)

  rng = np.random.default_rng(seed)
  if noise is not None:
    resamples = [(groups, loss_K) for loss_K in
                 scaling_replicas.perturbed_losses(cells, noise, n_bootstrap, rng)]
  else:
    resamples = [([rng.choice(index, len(index)) for index in groups], cells.loss)
                 for _ in range(n_bootstrap)]
  samples, minima_SxG = [], np.full((len(resamples), len(groups)), np.nan)
  for i, (groups_i, loss_K) in enumerate(resamples):
    kept_i, minima_i = _minima(log_n, loss_K, groups_i)
    minima_SxG[i, kept_i] = [m[1] for m in minima_i]
    if len(kept_i) >= 2:
      samples.append(np.polyfit(np.log(budgets[kept_i]), [m[1] for m in minima_i], 1)[::-1])
  n_opt = np.exp(log_n_opt)
  return IsoFLOPResult(
      budgets=budgets, n_opt=n_opt, d_opt=relation.tokens(budgets, n_opt),
      loss_min=np.array([m[2] for m in minima]), parabolas=np.array([m[0] for m in minima]),
      groups=groups, n_exponent=float(a), log_n_coefficient=float(log_k),
      bootstrap=np.array(samples).reshape(-1, 2), level=level, cells=cells, noise=noise,
      relation=relation,
      minima_bootstrap=minima_SxG,
      minima_fit_interval=np.array([_minimum_fit_interval(log_n[index], cells.loss[index], level)
                                    for index in groups]).reshape(-1, 2))
