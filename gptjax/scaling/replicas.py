"""Seed replicas in a sweep: runs of one (budget, size) cell that differ only in their seed.

A single run's final loss carries noise from its initialisation and data order. Where a cell has
several seeds, their spread measures that noise; the fits then use each cell's mean (less noisy
by sqrt(seeds)) and carry the measured noise into their bootstrap intervals, so an interval says
how far the answer could move if the sweep were run again with other seeds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gptjax.scaling.laws import ChinchillaFit, Records, fit_chinchilla, positive_columns
from gptjax.scaling.records import design_budgets


def group_budgets(compute: np.ndarray, rtol: float = 0.1,
                  design: np.ndarray | None = None) -> list[np.ndarray]:
  """Indices of runs per compute budget, in ascending budget.

  With `design` (each run's design budget, `records.design_budgets`) runs are grouped by it: a
  budget is what the sweep designed, and an accounting other than the design's spreads one
  budget's members over a range of C. Without it, computes within `rtol` of a group's smallest
  share it: runs of one budget land near, not exactly on, it (whole steps), and distinct budgets
  are usually factors of 2 or more apart.
  """
  if design is not None:
    labels = np.asarray(design, np.float64)
    return [np.flatnonzero(labels == label) for label in np.unique(labels)]
  order = np.argsort(compute)
  groups, start = [[order[0]]], compute[order[0]]
  for i in order[1:]:
    if compute[i] > start * (1 + rtol):
      groups.append([])
      start = compute[i]
    groups[-1].append(i)
  return [np.array(g) for g in groups]


@dataclasses.dataclass(frozen=True)
class Cells:
  """The runs of a sweep grouped into cells of one budget and one size, as [K] vectors.

  `loss` is the mean over a cell's seeds, `count` their number; `compute` is their mean (replicas
  do not differ in it). `budget[k]` is the index of the cell's budget among
  `group_budgets`' groups (ascending compute); `runs[k]` indexes the cell's runs in the input.
  """

  compute: np.ndarray
  params: np.ndarray
  loss: np.ndarray
  count: np.ndarray
  budget: np.ndarray
  runs: list[np.ndarray]

  def __len__(self) -> int:
    return len(self.loss)

  def with_loss(self, loss_K: np.ndarray) -> Cells:
    return dataclasses.replace(self, loss=np.asarray(loss_K, np.float64))


def replica_cells(compute: np.ndarray, params: np.ndarray, loss: np.ndarray,
                  budget_rtol: float = 0.1, design: np.ndarray | None = None) -> Cells:
  """Groups runs by budget (`group_budgets`, by `design` budget where given) and, within a
  budget, by equal parameter count."""
  compute, params, loss = (np.asarray(x, np.float64) for x in (compute, params, loss))
  columns: dict[str, list] = {key: [] for key in ('compute', 'params', 'loss', 'count', 'budget',
                                                  'runs')}
  for b, in_budget in enumerate(group_budgets(compute, budget_rtol, design)):
    for n in np.unique(params[in_budget]):
      runs = in_budget[params[in_budget] == n]
      for key, value in (('compute', compute[runs].mean()), ('params', n),
                         ('loss', loss[runs].mean()),
                         ('count', len(runs)), ('budget', b), ('runs', runs)):
        columns[key].append(value)
  runs = columns.pop('runs')
  return Cells(**{key: np.array(value) for key, value in columns.items()}, runs=runs)


def seed_means(records: Records, compute_key: str, params_key: str, tokens_key: str,
               loss_key: str, budget_rtol: float = 0.1) -> tuple[Cells, np.ndarray]:
  """The records' cells (`replica_cells`, by design budget where the records name one) and [K]
  each cell's mean tokens: the (N, D, L) points a fit uses so that no size counts once per seed."""
  c, n, d, l = positive_columns(records, compute_key, params_key, tokens_key, loss_key)
  cells = replica_cells(c, n, l, budget_rtol, design_budgets(records))
  return cells, np.array([d[runs].mean() for runs in cells.runs])


def best_per_budget(records: Records, compute_key: str, loss_key: str = 'eval_loss',
                    budget_rtol: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
  """([G] compute, [G] loss) of each budget's best finished run, in ascending budget: the frontier
  of finished runs, one point per budget (by design budget where the records name one)."""
  c, l = positive_columns(records, compute_key, loss_key)
  best = [index[np.argmin(l[index])]
          for index in group_budgets(c, budget_rtol, design_budgets(records))]
  return c[best], l[best]


def fit_seed_means(records: Records, *, compute_key: str, params_key: str,
                   tokens_key: str = 'tokens_seen', loss_key: str = 'eval_loss',
                   budget_rtol: float = 0.1, n_bootstrap: int = 0) -> tuple[ChinchillaFit, Cells]:
  """Approach 3 (`fit_chinchilla`) on the seed means, and the cells it fitted."""
  cells, tokens = seed_means(records, compute_key, params_key, tokens_key, loss_key, budget_rtol)
  return fit_chinchilla(cells.params, tokens, cells.loss, n_bootstrap=n_bootstrap), cells


def budget_groups(cells: Cells) -> list[np.ndarray]:
  """Indices of the cells of each budget, in ascending compute."""
  return [np.flatnonzero(cells.budget == b) for b in range(int(cells.budget.max()) + 1)]


@dataclasses.dataclass(frozen=True)
class SeedNoise:
  """The spread of final losses between seeds of the same cell.

  `sd` pools the within-cell variances (ddof 1) over every cell with 2+ seeds, weighted by their
  degrees of freedom: one noise level for the sweep, which per-cell estimates from 2 seeds are
  too rough to replace. `largest_gap` is the widest max-min range of one cell, at `largest_at`
  (compute, params).
  """

  sd: float
  cells: int
  runs: int
  largest_gap: float
  largest_at: tuple[float, float]

  def mean_sd(self, count: np.ndarray) -> np.ndarray:
    """The noise of a mean over `count` seeds."""
    return self.sd / np.sqrt(np.asarray(count, np.float64))


def seed_noise(cells: Cells, loss: np.ndarray) -> SeedNoise | None:
  """The pooled seed noise of the runs' `loss` (the vector `cells` was built from), or None when
  no cell has two seeds."""
  loss = np.asarray(loss, np.float64)
  replicated = [k for k in range(len(cells)) if cells.count[k] >= 2]
  if not replicated:
    return None
  squares = sum(float(np.sum((loss[cells.runs[k]] - cells.loss[k]) ** 2)) for k in replicated)
  dof = sum(int(cells.count[k]) - 1 for k in replicated)
  gaps = [float(np.ptp(loss[cells.runs[k]])) for k in replicated]
  widest = replicated[int(np.argmax(gaps))]
  return SeedNoise(sd=float(np.sqrt(squares / dof)), cells=len(replicated),
                   runs=int(sum(cells.count[k] for k in replicated)), largest_gap=max(gaps),
                   largest_at=(float(cells.compute[widest]), float(cells.params[widest])))


def perturbed_losses(cells: Cells, noise: SeedNoise, n_samples: int,
                     rng: np.random.Generator) -> np.ndarray:
  """[S, K] cell losses redrawn with the measured seed noise: what other seeds could have given.

  Each cell's mean moves by a normal draw of the noise of a mean over its seeds. This is the
  bootstrap of the fits that use cell means: refitting on each row gives the spread of the answer
  under seed noise.
  """
  sd_K = noise.mean_sd(cells.count)
  return cells.loss[None, :] + rng.standard_normal((n_samples, len(cells))) * sd_K[None, :]
