"""Scaling laws fitted to a sweep's records, and the holdout test of them (numpy and scipy only).

- `compute_frontier` + `fit_power_law_with_floor`: the best loss reached at each compute,
  L(C) = E + A·C^-alpha (Kaplan et al. 2020, with an irreducible floor E).
- `fit_chinchilla`: Chinchilla approach 3 (Hoffmann et al. 2022), L(N, D) = E + A/N^alpha +
  B/D^beta by Huber loss on log L.
IsoFLOP minima (approach 2) are in `gptjax.scaling.isoflop`, the holdout test of both laws in
`gptjax.scaling.holdout`; approach 3's objective and the batched BFGS behind its bootstrap in
`gptjax.scaling.huber`.

Compute, parameters, tokens and losses come from the records' columns, so the same fit runs on
Kaplan's N and C (non-embedding parameters, `flops_kaplan`) or on total parameters and full FLOPs.
Bad input raises `ValueError` saying what the sweep lacks, instead of fitting noise.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.optimize

from gptjax.cost.chinchilla import CHINCHILLA_PARAMS, ChinchillaFit
from gptjax.scaling import huber
from gptjax.scaling.records import column

Records = Sequence[Mapping[str, Any]] | np.ndarray


def _checked(**named: Any) -> list[np.ndarray]:
  """The inputs as float64 vectors, refusing NaN, inf, non-positive values and unequal lengths."""
  arrays = []
  for name, values in named.items():
    x = np.asarray(values, dtype=np.float64).ravel()
    bad = np.flatnonzero(~np.isfinite(x) | (x <= 0))
    if len(bad):
      raise ValueError(f'{name} has {len(bad)} NaN, infinite or non-positive values (rows '
                       f'{bad[:5].tolist()}); drop diverged or unfinished runs first.')
    arrays.append(x)
  lengths = {name: len(x) for name, x in zip(named, arrays)}
  if len(set(lengths.values())) != 1:
    raise ValueError(f'Inputs differ in length: {lengths}; pass one value per record.')
  return arrays


def positive_columns(records: Records, *keys: str) -> list[np.ndarray]:
  """The records' `keys` columns as float64 vectors; NaN, inf or non-positive values raise."""
  return _checked(**{key: column(records, key) for key in keys})


def central_interval(samples_SxP: np.ndarray, level: float) -> np.ndarray:
  """[P, 2] lower and upper ends of the central `level` interval of each column (NaN if none)."""
  if len(samples_SxP) == 0:
    return np.full((samples_SxP.shape[1], 2), np.nan)
  tail = 50 * (1 - level)
  return np.percentile(samples_SxP, [tail, 100 - tail], axis=0).T


# ---------------------------------------------------------------- L(C): frontier and power law


@dataclasses.dataclass(frozen=True)
class Frontier:
  """Lower envelope: the points no cheaper point beats, by compute; `index` into the input."""

  compute: np.ndarray
  loss: np.ndarray
  index: np.ndarray


def compute_frontier(compute: Any, loss: Any) -> Frontier:
  c, l = _checked(compute=compute, loss=loss)
  order = np.lexsort((l, c))  # by compute, ties by loss
  best = np.minimum.accumulate(l[order])
  keep = np.concatenate([[True], best[1:] < best[:-1]])  # strictly better than anything cheaper
  index = order[keep]
  return Frontier(c[index], l[index], index)


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
  """L(C) = E + A·C^-alpha; A is kept as log A because C^-alpha spans many orders of magnitude."""

  E: float
  log_A: float
  alpha: float

  @property
  def A(self) -> float:
    return float(np.exp(self.log_A))

  def predict(self, compute: Any) -> np.ndarray:
    return self.E + np.exp(self.log_A - self.alpha * np.log(np.asarray(compute, np.float64)))


def fit_power_law_with_floor(compute: Any, loss: Any, grid_size: int = 64) -> PowerLawFit:
  """Least squares in log L, started from the best of a grid of floors E in [0, min L).

  For a fixed E the law is a straight line in log-log (log(L - E) vs log C), solved exactly; the
  best grid point then seeds a joint bounded refinement of (E, log A, alpha). The grid keeps the
  non-convex fit away from the local minima a single start falls into.
  """
  c, l = _checked(compute=compute, loss=loss)
  if len(c) < 4 or len(np.unique(c)) < 3:
    raise ValueError(f'L(C) = E + A*C^-alpha has 3 parameters; got {len(c)} points at '
                     f'{len(np.unique(c))} distinct computes. Add runs at 4 or more compute '
                     'budgets.')
  log_c, log_l = np.log(c), np.log(l)
  e_max = l.min() * (1 - 1e-3)

  def residuals(theta: np.ndarray) -> np.ndarray:
    e, log_a, alpha = theta
    return np.log(e + np.exp(log_a - alpha * log_c)) - log_l

  starts = []
  for e in np.linspace(0.0, e_max, grid_size):
    slope, intercept = np.polyfit(log_c, np.log(l - e), 1)
    starts.append(np.array([e, intercept, max(-slope, 0.0)]))
  start = min(starts, key=lambda theta: np.sum(residuals(theta)**2))
  solution = scipy.optimize.least_squares(
      residuals, start, bounds=([0.0, -np.inf, 0.0], [e_max, np.inf, np.inf]),
      xtol=1e-12, ftol=1e-12, gtol=1e-12)
  e, log_a, alpha = solution.x
  return PowerLawFit(float(e), float(log_a), float(alpha))


# ---------------------------------------------------------------- approach 3: L(N, D)

OPTIMIZERS = ('BFGS', 'L-BFGS-B')


def _minimise(points: huber.Points, delta: float, starts_Kx5: np.ndarray,
              method: str) -> tuple[float, np.ndarray]:
  """scipy's `method` from each start; the lowest objective and its theta = (a, b, e, alpha, beta)
  with a = log A, b = log B, e = log E."""
  weights_1xP = np.ones((1, len(points)))

  def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
    value_1, grad_1x5 = huber.objective(theta[None], weights_1xP, points, delta)
    return float(value_1[0]), grad_1x5[0]

  best = (np.inf, starts_Kx5[0])
  for start in starts_Kx5:
    result = scipy.optimize.minimize(objective, start, jac=True, method=method,
                                     options=dict(maxiter=2000))
    if result.fun < best[0]:
      best = (float(result.fun), result.x)
  return best


def _grid_starts(points: huber.Points, delta: float, n_starts: int | None) -> np.ndarray:
  """The paper runs L-BFGS from all 4500 grid points; ranking them by objective and starting
  from the best `n_starts` finds the same optimum at a fraction of the cost (None: all of them)."""
  grid_Gx5 = huber.GRID_Gx5
  if n_starts is None:
    return grid_Gx5
  values_G = huber.huber_per_point(grid_Gx5, points, delta).sum(1)
  return grid_Gx5[np.argsort(values_G)[:n_starts]]


def _bootstrap(theta: np.ndarray, points: huber.Points, delta: float, n_bootstrap: int,
               seed: int) -> np.ndarray:
  """[S, 5] (E, A, B, alpha, beta) refitted on S resamples of the points, drawn with replacement.

  Each resample is refitted from the full fit's optimum and from the resample's 2 best grid
  points, and keeps the lowest of the 3 optima: the optimum rarely moves far, but on a few points
  a resample can have its minimum in another basin (E near 0, say). A resample is the data
  weighted by how often each point was drawn, so the grid is ranked for all resamples by one
  product, and the 3·S fits run side by side in `huber.minimise`.
  """
  n_points = len(points)
  drawn_SxP = np.random.default_rng(seed).integers(0, n_points, (n_bootstrap, n_points))
  offsets_Sx1 = n_points * np.arange(n_bootstrap)[:, None]
  counts_SxP = np.bincount((drawn_SxP + offsets_Sx1).ravel(), minlength=n_bootstrap * n_points)
  counts_SxP = counts_SxP.reshape(n_bootstrap, n_points).astype(np.float64)
  grid_Gx5 = huber.GRID_Gx5
  objective_GxS = huber.huber_per_point(grid_Gx5, points, delta) @ counts_SxP.T
  best_2xS = np.argsort(objective_GxS, axis=0, kind='stable')[:2]
  starts_3Sx5 = np.concatenate([np.tile(theta, (n_bootstrap, 1)), grid_Gx5[best_2xS.ravel()]])
  values_3S, thetas_3Sx5 = huber.minimise(starts_3Sx5, np.tile(counts_SxP, (3, 1)),
                                          points, delta)
  best_S = np.argmin(values_3S.reshape(3, n_bootstrap), axis=0)  # the first of equals
  thetas_Sx5 = thetas_3Sx5.reshape(3, n_bootstrap, 5)[best_S, np.arange(n_bootstrap)]
  return np.stack([_as_params(theta_i) for theta_i in thetas_Sx5])


def _as_params(theta: np.ndarray) -> np.ndarray:
  a, b, e, alpha, beta = theta
  return np.array([np.exp(e), np.exp(a), np.exp(b), alpha, beta])


def fit_chinchilla(params: Any, tokens: Any, loss: Any, *, delta: float = 1e-3,
                   n_starts: int | None = 16, n_bootstrap: int = 0, level: float = 0.95,
                   seed: int = 0, method: str = 'BFGS') -> ChinchillaFit:
  """Approach 3 as in the paper: Huber(delta=1e-3) on log L, quasi-Newton from a grid, best kept.

  The paper names L-BFGS, whose limited memory only pays off with many parameters; with 5, full
  BFGS is the same quasi-Newton idea and reaches the same optimum (a test checks). It is the
  default because scipy's L-BFGS-B spends most of each iteration on threaded-BLAS overhead, which
  a busy CPU multiplies. `method='L-BFGS-B'` is the paper's choice.

  With `n_bootstrap` > 0 the points are resampled with replacement and refitted (see
  `_bootstrap`; the refits run BFGS whatever `method` is) to give `level` percentile intervals
  for E, A, B, alpha, beta and the compute-optimal exponents a and b, and the refits themselves.
  """
  if method not in OPTIMIZERS:
    raise ValueError(f'method={method!r}; choose one of {OPTIMIZERS}.')
  n, d, l = _checked(params=params, tokens=tokens, loss=loss)
  for name, values in (('model sizes (params)', n), ('token counts', d)):
    if len(np.unique(values)) < 3:
      raise ValueError(f'L(N, D) needs at least 3 distinct {name}, got {len(np.unique(values))}: '
                       'with fewer, A/N^alpha (or B/D^beta) cannot be told apart from E. Add '
                       'model sizes and token budgets to the sweep.')
  if len(l) < 6:
    raise ValueError(f'L(N, D) has 5 parameters; {len(l)} points cannot pin them. Add runs.')
  points = huber.Points(n, d, l)
  objective, theta = _minimise(points, delta, _grid_starts(points, delta, n_starts), method)
  fit = ChinchillaFit(*_as_params(theta), objective=objective)
  if n_bootstrap <= 0:
    return fit
  samples_Sx5 = _bootstrap(theta, points, delta, n_bootstrap, seed)
  e, a, b, alpha, beta = samples_Sx5.T
  exponents_Sx2 = np.stack([beta / (alpha + beta), alpha / (alpha + beta)], axis=1)
  bounds = central_interval(np.concatenate([samples_Sx5, exponents_Sx2], axis=1), level)
  names = CHINCHILLA_PARAMS + ('n_exponent', 'd_exponent')
  intervals = {name: (float(lo), float(hi)) for name, (lo, hi) in zip(names, bounds)}
  return dataclasses.replace(fit, intervals=intervals, bootstrap=samples_Sx5)
