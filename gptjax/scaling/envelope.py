"""Chinchilla approach 1 (Hoffmann et al. 2022) from finished runs only: the envelope of loss
against compute over model sizes.

Hoffmann et al. train each size to several horizons and read, at every compute, which size reaches
the lowest loss. A point read mid-run is biased: the run's cosine schedule has not finished, so its
loss is higher than a run that ends there would reach. Here every point is a finished run's
final loss: in an IsoFLOP sweep each size is trained to completion at several budgets, so each
size's loss at a compute between two of its budgets is interpolated (linearly in log C) between
two finished runs, never read off a curve whose schedule was still decaying. At each compute of a
log-spaced grid, the size with the lowest loss is N_opt(C); N_opt ∝ C^a is fitted through them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gptjax.scaling import replicas as scaling_replicas
from gptjax.scaling.laws import central_interval
from gptjax.scaling.replicas import Cells, SeedNoise

GRID_POINTS = 48


@dataclasses.dataclass(frozen=True)
class EnvelopeResult:
  """N_opt(C) read off the envelope at [G] grid computes, and N_opt = k·C^a fitted through them.

  `bootstrap` holds (log k, a) refits under the measured seed noise (empty without replicas).
  """

  compute: np.ndarray
  n_opt: np.ndarray
  loss_opt: np.ndarray
  n_exponent: float
  log_n_coefficient: float
  bootstrap: np.ndarray
  level: float

  @property
  def n_exponent_ci(self) -> tuple[float, float]:
    lo, hi = central_interval(self.bootstrap[:, 1:], self.level)[0]
    return float(lo), float(hi)


def _size_curves(cells: Cells) -> list[tuple[float, np.ndarray, np.ndarray]]:
  """(N, log C [J], index of its cells [J]) of each size with finished runs at 2+ budgets."""
  curves = []
  for n in np.unique(cells.params):
    index = np.flatnonzero(cells.params == n)
    index = index[np.argsort(cells.compute[index])]
    if len(index) >= 2:
      curves.append((float(n), np.log(cells.compute[index]), index))
  return curves


def _envelope(curves, loss_K: np.ndarray, log_c_G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(N_opt [G], loss there [G]): at each compute, the size whose interpolated loss is lowest
  among the sizes whose runs span it (NaN where fewer than two do: no choice was measured)."""
  loss_SxG = np.full((len(curves), len(log_c_G)), np.inf)
  for s, (_, log_c, index) in enumerate(curves):
    inside = (log_c_G >= log_c[0]) & (log_c_G <= log_c[-1])
    loss_SxG[s, inside] = np.interp(log_c_G[inside], log_c, loss_K[index])
  sizes = np.array([n for n, _, _ in curves])
  best_G = np.argmin(loss_SxG, axis=0)
  chosen = np.sum(np.isfinite(loss_SxG), axis=0) >= 2
  n_opt = np.where(chosen, sizes[best_G], np.nan)
  return n_opt, np.where(chosen, loss_SxG[best_G, np.arange(len(log_c_G))], np.nan)


def envelope_optima(cells: Cells, noise: SeedNoise | None = None, *, n_bootstrap: int = 200,
                    level: float = 0.95, seed: int = 0, grid_points: int = GRID_POINTS
                    ) -> EnvelopeResult:
  """Approach 1 on the (budget, size) cells of an IsoFLOP sweep (seed means, `scaling_replicas`).

  The grid spans the computes where at least two sizes have finished runs on both sides. With
  `noise`, each bootstrap refit redraws every cell's loss with it and reads the envelope again.
  """
  curves = _size_curves(cells)
  if len(curves) < 2:
    raise ValueError(f'The envelope needs at least 2 model sizes each trained at 2+ budgets; found '
                     f'{len(curves)}. Train some sizes at several budgets (neighbouring IsoFLOP '
                     'budgets sharing sizes do this).')
  starts = sorted(log_c[0] for _, log_c, _ in curves)
  ends = sorted(log_c[-1] for _, log_c, _ in curves)
  lo, hi = starts[1], ends[-2]  # where at least two sizes can be compared
  if not hi > lo:
    raise ValueError('No compute range is spanned by the runs of two model sizes; train '
                     'neighbouring sizes at overlapping budgets.')
  log_c_G = np.linspace(lo, hi, grid_points)

  def fit(loss_K: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    n_opt, loss_opt = _envelope(curves, loss_K, log_c_G)
    ok = np.isfinite(n_opt)
    if ok.sum() < 2 or np.ptp(np.log(n_opt[ok])) == 0:
      return None
    return np.polyfit(log_c_G[ok], np.log(n_opt[ok]), 1), n_opt, loss_opt

  found = fit(cells.loss)
  if found is None:
    raise ValueError('The same model size is best at every compute of the envelope: the sizes '
                     'are too far apart to locate N_opt(C); add sizes between them.')
  (a, log_k), n_opt, loss_opt = found
  samples = []
  if noise is not None:
    rng = np.random.default_rng(seed)
    for loss_K in scaling_replicas.perturbed_losses(cells, noise, n_bootstrap, rng):
      refit = fit(loss_K)
      if refit is not None:
        samples.append(refit[0][::-1])
  return EnvelopeResult(compute=np.exp(log_c_G), n_opt=n_opt, loss_opt=loss_opt,
                        n_exponent=float(a), log_n_coefficient=float(log_k),
                        bootstrap=np.array(samples).reshape(-1, 2), level=level)
