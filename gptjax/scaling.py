"""Scaling-law fits on a sweep's records (numpy and scipy only).

- `compute_frontier` + `fit_power_law_with_floor`: the best loss reached at each compute,
  L(C) = E + A·C^-alpha (Kaplan et al. 2020, with an irreducible floor E).
- `isoflop_minima`: Chinchilla approach 2 (Hoffmann et al. 2022): a parabola of loss in log N per
  compute budget, its minimum N_opt(C), then N_opt ∝ C^a and D_opt ∝ C^b.
- `fit_chinchilla`: approach 3, L(N, D) = E + A/N^alpha + B/D^beta by Huber loss on log L.
- `holdout_extrapolation`: fit without the largest budget and predict it, the honest test of a law.

Compute, parameters, tokens and losses come from the records' columns, so the same fit runs on
Kaplan's N and C (non-embedding parameters, `flops_kaplan`) or on total parameters and full FLOPs.
Bad input raises `ValueError` saying what the sweep lacks, instead of fitting noise.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.optimize
import scipy.special

from gptjax.records import column

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


def _columns(records: Records, *keys: str) -> list[np.ndarray]:
  return _checked(**{key: column(records, key) for key in keys})


def _percentiles(samples_SxP: np.ndarray, level: float) -> np.ndarray:
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


def _terms(theta_Gx5: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
  """[G, 3, P] log-terms (a - alpha log N, b - beta log D, e) for G parameter vectors."""
  a, b, e, alpha, beta = (theta_Gx5[:, i:i + 1] for i in range(5))
  e_GxP = np.broadcast_to(e, (len(theta_Gx5), len(log_n)))
  return np.stack([a - alpha * log_n, b - beta * log_d, e_GxP], axis=1)


def _huber_values(theta_Gx5: np.ndarray, log_n, log_d, log_l, delta: float) -> np.ndarray:
  """Objective at G parameter vectors at once (ranking the initialisation grid)."""
  r_GxP = scipy.special.logsumexp(_terms(theta_Gx5, log_n, log_d), axis=1) - log_l
  return np.sum(scipy.special.huber(delta, r_GxP), axis=1) / delta


def _huber_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
                     delta: float) -> tuple[float, np.ndarray]:
  """Sum of Huber(log-sum-exp(a - alpha log N, b - beta log D, e) - log L) / delta, and gradient.

  theta = (a, b, e, alpha, beta) with a = log A, b = log B, e = log E. Dividing by delta keeps the
  objective near 1 so L-BFGS's tolerances mean something; the minimiser is unchanged.
  """
  terms_3xP = _terms(theta[None], log_n, log_d)[0]
  lse_P = scipy.special.logsumexp(terms_3xP, axis=0)
  r_P = lse_P - log_l
  value = np.sum(scipy.special.huber(delta, r_P)) / delta
  psi_P = np.clip(r_P, -delta, delta) / delta  # derivative of Huber, over delta
  w_3xP = psi_P * np.exp(terms_3xP - lse_P)  # times softmax weights = d lse / d term
  grad = np.array([w_3xP[0].sum(), w_3xP[1].sum(), w_3xP[2].sum(),
                   -np.sum(w_3xP[0] * log_n), -np.sum(w_3xP[1] * log_d)])
  return float(value), grad


# The paper's initialisation grid (Hoffmann et al. appendix D.2), as (a, b, e, alpha, beta).
_GRID = np.array(list(itertools.product(
    np.arange(0, 30, 5), np.arange(0, 30, 5), np.arange(-1, 1.5, 0.5),
    np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5))), dtype=np.float64)


OPTIMIZERS = ('BFGS', 'L-BFGS-B')


def _minimise(log_n, log_d, log_l, delta: float, starts: np.ndarray,
              method: str) -> tuple[float, np.ndarray]:
  best = (np.inf, starts[0])
  for start in starts:
    result = scipy.optimize.minimize(_huber_objective, start, args=(log_n, log_d, log_l, delta),
                                     jac=True, method=method, options=dict(maxiter=2000))
    if result.fun < best[0]:
      best = (float(result.fun), result.x)
  return best


def _grid_starts(log_n, log_d, log_l, delta: float, n_starts: int | None) -> np.ndarray:
  """The paper runs L-BFGS from all 4500 grid points; ranking them by objective and starting
  from the best `n_starts` finds the same optimum at a fraction of the cost (None: all of them)."""
  if n_starts is None:
    return _GRID
  return _GRID[np.argsort(_huber_values(_GRID, log_n, log_d, log_l, delta))[:n_starts]]


def _as_params(theta: np.ndarray) -> np.ndarray:
  a, b, e, alpha, beta = theta
  return np.array([np.exp(e), np.exp(a), np.exp(b), alpha, beta])


def fit_chinchilla(params: Any, tokens: Any, loss: Any, *, delta: float = 1e-3,
                   n_starts: int | None = 16, n_bootstrap: int = 0, level: float = 0.95,
                   seed: int = 0, method: str = 'BFGS') -> ChinchillaFit:
  """Approach 3 as in the paper: Huber(delta=1e-3) on log L, quasi-Newton from a grid, best kept.

  The paper names L-BFGS, whose limited memory only pays off with many parameters; with 5, full
  BFGS is the same quasi-Newton idea and reaches the same optimum (a test checks). It is the
  default because scipy's L-BFGS-B spends ~1 ms per iteration in threaded-BLAS overhead, 10x
  slower on a busy CPU, which the bootstrap multiplies. `method='L-BFGS-B'` is the paper's choice.

  With `n_bootstrap` > 0 the points are resampled with replacement and refitted (from the full
  fit's optimum and the resample's best grid points) to give `level` percentile intervals for
  E, A, B, alpha, beta and the compute-optimal exponents a and b.
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
  log_n, log_d, log_l = np.log(n), np.log(d), np.log(l)
  objective, theta = _minimise(log_n, log_d, log_l, delta,
                               _grid_starts(log_n, log_d, log_l, delta, n_starts), method)
  fit = ChinchillaFit(*_as_params(theta), objective=objective)
  if n_bootstrap <= 0:
    return fit
  rng = np.random.default_rng(seed)
  samples = []
  for _ in range(n_bootstrap):
    i = rng.integers(0, len(l), len(l))
    starts = np.concatenate([theta[None], _grid_starts(log_n[i], log_d[i], log_l[i], delta, 2)])
    _, theta_i = _minimise(log_n[i], log_d[i], log_l[i], delta, starts, method)
    e, a, b, alpha, beta = _as_params(theta_i)
    samples.append([e, a, b, alpha, beta, beta / (alpha + beta), alpha / (alpha + beta)])
  bounds = _percentiles(np.array(samples), level)
  names = CHINCHILLA_PARAMS + ('n_exponent', 'd_exponent')
  intervals = {name: (float(lo), float(hi)) for name, (lo, hi) in zip(names, bounds)}
  return dataclasses.replace(fit, intervals=intervals)


# ---------------------------------------------------------------- approach 2: IsoFLOP minima


def group_budgets(compute: np.ndarray, rtol: float = 0.1) -> list[np.ndarray]:
  """Indices of runs per compute budget: computes within `rtol` of a group's smallest share it.

  Runs of one IsoFLOP budget land near, not exactly on, the budget (whole steps, and each size's
  attention term); distinct budgets are usually factors of 2 or more apart.
  """
  order = np.argsort(compute)
  groups, start = [[order[0]]], compute[order[0]]
  for i in order[1:]:
    if compute[i] > start * (1 + rtol):
      groups.append([])
      start = compute[i]
    groups[-1].append(i)
  return [np.array(g) for g in groups]


def _parabola_minimum(log_n: np.ndarray, loss: np.ndarray) -> tuple | None:
  """(coefficients, log N at the minimum, loss there), or None when there is no minimum."""
  if len(np.unique(log_n)) < 3:
    return None
  coef = np.polyfit(log_n, loss, 2)
  if coef[0] <= 0:
    return None
  x_min = -coef[1] / (2 * coef[0])
  return coef, float(x_min), float(np.polyval(coef, x_min))


@dataclasses.dataclass(frozen=True)
class IsoFLOPResult:
  """Per-budget parabola minima and the power laws N_opt = k_N·C^a, D_opt = k_D·C^b through them.

  `groups[i]` indexes the records of budget i; `parabolas[i]` is its (c2, c1, c0) in log N.
  `bootstrap` holds (log k_N, a) refits. D_opt = C/(6 N_opt) makes b = 1 - a exactly, so the
  interval of b is 1 minus that of a.
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

  @property
  def d_exponent(self) -> float:
    return 1.0 - self.n_exponent

  @property
  def n_exponent_ci(self) -> tuple[float, float]:
    lo, hi = _percentiles(self.bootstrap[:, 1:], self.level)[0]
    return float(lo), float(hi)

  def predict_n_opt(self, compute: Any) -> np.ndarray:
    return np.exp(self.log_n_coefficient + self.n_exponent * np.log(np.asarray(compute, float)))

  def n_opt_band(self, compute: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise `level` band of the N_opt(C) line over the bootstrap refits."""
    log_c = np.log(np.atleast_1d(np.asarray(compute, float)))
    lines_SxC = np.exp(self.bootstrap[:, :1] + self.bootstrap[:, 1:] * log_c[None])
    lo, hi = _percentiles(lines_SxC, self.level).T
    return lo, hi


def _minima(log_n, loss, groups) -> tuple[list[int], list[tuple]]:
  kept, minima = [], []
  for g, index in enumerate(groups):
    found = _parabola_minimum(log_n[index], loss[index])
    if found is not None:
      kept.append(g)
      minima.append(found)
  return kept, minima


def isoflop_minima(records: Records, *, compute_key: str = 'flops_kaplan',
                   params_key: str = 'params_non_embedding', loss_key: str = 'eval_loss',
                   budget_rtol: float = 0.1, n_bootstrap: int = 200, level: float = 0.95,
                   seed: int = 0) -> IsoFLOPResult:
  """Approach 2 on final records of an IsoFLOP sweep (several model sizes per compute budget).

  A budget whose parabola opens downwards or has fewer than 3 sizes is skipped with a warning.
  The bootstrap resamples runs within each budget and redoes the parabolas and the line fit.
  """
  c, n, l = _columns(records, compute_key, params_key, loss_key)
  log_n, groups = np.log(n), group_budgets(c, budget_rtol)
  kept, minima = _minima(log_n, l, groups)
  for g, index in enumerate(groups):
    if g not in kept:
      warnings.warn(f'Budget C~{np.median(c[index]):.3g} skipped: {len(np.unique(n[index]))} '
                    'model sizes with no loss minimum among them; add sizes on both sides.')
  if len(kept) < 2:
    raise ValueError(f'IsoFLOP fit needs at least 2 compute budgets each with 3+ model sizes '
                     f'around a loss minimum; found {len(kept)} of {len(groups)} budgets. Add '
                     'budgets (and sizes on both sides of each minimum) to the sweep.')
  groups = [groups[g] for g in kept]
  budgets = np.array([np.exp(np.mean(np.log(c[index]))) for index in groups])
  log_n_opt = np.array([m[1] for m in minima])
  a, log_k = np.polyfit(np.log(budgets), log_n_opt, 1)

  rng = np.random.default_rng(seed)
  samples = []
  for _ in range(n_bootstrap):
    resampled = [rng.choice(index, len(index)) for index in groups]
    kept_i, minima_i = _minima(log_n, l, resampled)
    if len(kept_i) >= 2:
      samples.append(np.polyfit(np.log(budgets[kept_i]), [m[1] for m in minima_i], 1)[::-1])
  n_opt = np.exp(log_n_opt)
  return IsoFLOPResult(
      budgets=budgets, n_opt=n_opt, d_opt=budgets / (6 * n_opt),
      loss_min=np.array([m[2] for m in minima]), parabolas=np.array([m[0] for m in minima]),
      groups=groups, n_exponent=float(a), log_n_coefficient=float(log_k),
      bootstrap=np.array(samples).reshape(-1, 2), level=level)


# ---------------------------------------------------------------- honest extrapolation


@dataclasses.dataclass(frozen=True)
class HoldoutResult:
  """Laws fitted without the largest budget, against what that budget measured."""

  budget: float
  measured_best_loss: float
  power_law_prediction: float  # L(C) fitted on the smaller budgets' frontier
  run_params: np.ndarray
  run_loss: np.ndarray
  run_prediction: np.ndarray  # L(N, D) fitted on the smaller budgets' runs

  @property
  def power_law_relative_error(self) -> float:
    return (self.power_law_prediction - self.measured_best_loss) / self.measured_best_loss

  @property
  def max_run_relative_error(self) -> float:
    return float(np.max(np.abs(self.run_prediction - self.run_loss) / self.run_loss))


def holdout_extrapolation(records: Records, *, compute_key: str = 'flops_kaplan',
                          params_key: str = 'params_non_embedding',
                          tokens_key: str = 'tokens_seen', loss_key: str = 'eval_loss',
                          budget_rtol: float = 0.1) -> HoldoutResult:
  """Holds out the largest compute budget, fits L(C) and L(N, D) on the rest, predicts it."""
  c, n, d, l = _columns(records, compute_key, params_key, tokens_key, loss_key)
  groups = group_budgets(c, budget_rtol)
  if len(groups) < 3:
    raise ValueError(f'Holding out one budget needs at least 3 budgets, found {len(groups)}; '
                     'add compute budgets to the sweep.')
  held, rest = groups[-1], np.concatenate(groups[:-1])
  frontier = compute_frontier(c[rest], l[rest])
  power_law = fit_power_law_with_floor(frontier.compute, frontier.loss)
  law = fit_chinchilla(n[rest], d[rest], l[rest])
  budget = float(np.exp(np.mean(np.log(c[held]))))
  return HoldoutResult(
      budget=budget, measured_best_loss=float(l[held].min()),
      power_law_prediction=float(power_law.predict(budget)), run_params=n[held],
      run_loss=l[held], run_prediction=law.predict(n[held], d[held]))
