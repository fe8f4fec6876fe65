"""Which N and which C a sweep is measured in, and the C(N, D) relation every derived number solves.

Two accountings of the same runs (each record carries both):
- 'full' (Chinchilla's, the default): N is every parameter, C the FLOPs the run spends
  (`gptjax.cost.flops`, 'full': every matmul, attention and the readout).
- 'kaplan': N without embeddings, C = (6N + attention) per token (Kaplan et al. 2020).
At small scale they disagree: the embedding and the readout over the vocabulary are a large share
of a small model, so N_opt ∝ C^a comes out steeper in Kaplan's N (Pearce & Song 2024).

A compute-optimal allocation solves min L(N, D) subject to C(N, D) = C. Under C = 6ND this has
Hoffmann et al.'s closed form; under any other accounting it does not, and D for a given N and C is
C / (FLOPs per token of that N). `ComputeRelation` reads that per-token cost off the sweep's own
records, so the fits need no architecture and stay exact for whatever the records count.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from gptjax.cost.chinchilla import ChinchillaFit
from gptjax.scaling import laws, records as records_lib


@dataclasses.dataclass(frozen=True)
class Accounting:
  compute_key: str
  params_key: str
  description: str


ACCOUNTINGS = {
    'full': Accounting('flops_full', 'params_total', 'total parameters, FLOPs spent'),
    'kaplan': Accounting('flops_kaplan', 'params_non_embedding',
                         "non-embedding parameters, Kaplan's C"),
}
WHY_THEY_DIFFER = ("Kaplan's N leaves out the embedding and readout, a larger share of a smaller "
                   'model, so N_opt grows faster with C in it (Pearce & Song 2024).')


def accounting_of(compute_key: str, params_key: str) -> str | None:
  """The name of the accounting these keys make up, or None for a mixed pair."""
  for name, accounting in ACCOUNTINGS.items():
    if (accounting.compute_key, accounting.params_key) == (compute_key, params_key):
      return name
  return None


@dataclasses.dataclass(frozen=True)
class ComputeRelation:
  """C = flops_per_token(N) · D, with flops_per_token piecewise linear in log-log through the
  sweep's sizes (and extended along the end segments' slopes).

  For C = 6ND the line is exact everywhere (`six_nd`); for the sweep's own accounting it is exact
  at every trained size, which is where the fits read it.
  """

  log_params: np.ndarray  # [K] ascending, distinct
  log_flops_per_token: np.ndarray  # [K]
  description: str

  @classmethod
  def six_nd(cls) -> ComputeRelation:
    return cls(np.log([1.0, 1e12]), np.log([6.0, 6e12]), 'C = 6ND')

  @classmethod
  def from_columns(cls, compute: Any, params: Any, tokens: Any, description: str
                   ) -> ComputeRelation:
    """Per-token FLOPs C/D of each run, their median per distinct N."""
    c, n, d = (np.asarray(x, np.float64) for x in (compute, params, tokens))
    sizes = np.unique(n)
    if len(sizes) < 2:
      raise ValueError(f'The C(N, D) relation needs 2 or more model sizes; got {len(sizes)}.')
    per_token = np.array([np.median(c[n == size] / d[n == size]) for size in sizes])
    return cls(np.log(sizes), np.log(per_token), description)

  def flops_per_token(self, params: Any) -> np.ndarray:
    log_n = np.log(np.asarray(params, np.float64))
    x, y = self.log_params, self.log_flops_per_token
    inside = np.interp(log_n, x, y)
    low = y[0] + (log_n - x[0]) * (y[1] - y[0]) / (x[1] - x[0])
    high = y[-1] + (log_n - x[-1]) * (y[-1] - y[-2]) / (x[-1] - x[-2])
    return np.exp(np.where(log_n < x[0], low, np.where(log_n > x[-1], high, inside)))

  def tokens(self, compute: Any, params: Any) -> np.ndarray:
    """D such that C(N, D) = compute."""
    return np.asarray(compute, np.float64) / self.flops_per_token(params)


_GRID_HALF_WIDTH = 8.0  # natural-log units of N searched either side of the 6ND optimum
_GRID_POINTS = 1601


def compute_optimal(law: ChinchillaFit, compute: Any, relation: ComputeRelation
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(N_opt, D_opt) minimising the law's L(N, D) subject to C(N, D) = compute.

  Broadcasts over the law's fields (a `refits()` law of [S] arrays gives [S, ...]) and `compute`.
  A grid in log N around the closed-form 6ND optimum (±e^8) finds the minimum; a parabola through
  it and its neighbours refines it. L along the constraint is smooth and, for positive exponents,
  has one minimum. Where there is none inside the grid (a bootstrap refit whose exponents leave no
  optimum, or non-finite parameters) N_opt and D_opt are NaN, for the caller to leave out.
  """
  c = np.asarray(compute, np.float64)
  fields = [np.asarray(getattr(law, k), np.float64) for k in ('E', 'A', 'B', 'alpha', 'beta')]
  e, a, b, alpha, beta = (f[(...,) + (None,) * c.ndim] for f in fields)  # [S?, 1...]
  with np.errstate(all='ignore'):  # the closed form under 6ND: Hoffmann et al. eq. 4
    centre = ((np.log(alpha * a) - np.log(beta * b)) / (alpha + beta)
              + beta / (alpha + beta) * np.log(c / 6))  # [S?, C...]
  e, a, b, alpha, beta = (x[..., None] for x in (e, a, b, alpha, beta))  # [S?, 1..., 1]
  offsets_G = np.linspace(-_GRID_HALF_WIDTH, _GRID_HALF_WIDTH, _GRID_POINTS)
  log_n = np.nan_to_num(centre, nan=0.0, posinf=0.0, neginf=0.0)[..., None] + offsets_G
  d = c[..., None] / relation.flops_per_token(np.exp(log_n))  # [S?, C..., G]
  with np.errstate(all='ignore'):  # a refit without an optimum overflows; it comes back NaN
    loss = e + a * np.exp(-alpha * log_n) + b / d**beta
  finite = np.isfinite(loss)
  at = np.argmin(np.where(finite, loss, np.inf), axis=-1)
  found = finite.any(axis=-1) & (at > 0) & (at < _GRID_POINTS - 1) & np.isfinite(centre)
  i = np.clip(at, 1, _GRID_POINTS - 2)[..., None]
  l0, l1, l2 = (np.take_along_axis(loss, i + k, axis=-1)[..., 0] for k in (-1, 0, 1))
  step = offsets_G[1] - offsets_G[0]
  curvature = l0 - 2 * l1 + l2
  shift = np.where(curvature > 0, 0.5 * (l0 - l2) / np.where(curvature > 0, curvature, 1), 0.0)
  best = np.take_along_axis(log_n, i, axis=-1)[..., 0] + np.clip(shift, -1, 1) * step
  n_opt = np.where(found, np.exp(best), np.nan)
  return n_opt, relation.tokens(c, n_opt)


def local_exponent(law: ChinchillaFit, low: float, high: float, relation: ComputeRelation,
                   points: int = 9) -> np.ndarray:
  """a of N_opt ∝ C^a over budgets [low, high] under `relation`: the slope of log N_opt against
  log C through `points` budgets spaced evenly in log C ([S] for a `refits()` law).

  Under C = 6ND this is the law's β/(α+β) at every C; under another accounting N_opt(C) is no
  power law, and this is the exponent over the budgets a sweep measured, the one its IsoFLOP
  minima estimate.
  """
  log_c_G = np.linspace(np.log(low), np.log(high), points)
  n_opt = compute_optimal(law, np.exp(log_c_G), relation)[0]  # [S?, G]
  log_n = np.log(n_opt)
  centred_G = log_c_G - log_c_G.mean()
  return (log_n - log_n.mean(axis=-1, keepdims=True)) @ centred_G / (centred_G @ centred_G)


def exponent_interval(law: ChinchillaFit, low: float, high: float, relation: ComputeRelation,
                      level: float = 0.95) -> tuple[float, float, float]:
  """(a, lo, hi): `local_exponent` of the law and the central `level` interval of its bootstrap
  refits' (NaN ends without refits)."""
  a = float(local_exponent(law, low, high, relation))
  if not len(law.bootstrap):
    return a, float('nan'), float('nan')
  with np.errstate(all='ignore'):
    a_S = local_exponent(law.refits(), low, high, relation)
  lo, hi = laws.central_interval(a_S[np.isfinite(a_S), None], level)[0]  # NaN if none is finite
  return a, float(lo), float(hi)


def relation_of(records, compute_key: str, params_key: str,
                tokens_key: str = 'tokens_seen') -> ComputeRelation:
  """The records' own C(N, D): C/D of each run, per distinct N."""
  columns = [records_lib.column(records, key) for key in (compute_key, params_key, tokens_key)]
  return ComputeRelation.from_columns(*columns, f'{compute_key} / {tokens_key} per size')
