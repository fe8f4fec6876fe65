"""A study cell over several seeds, and the intervals a study's tables report.

One run is one draw: its loss or accuracy moves with the initialisation and the data order, so a
difference between two cells means something only against that noise. `over_seeds` runs a cell at
S seeds (3 by default) and summarises it as mean ± standard error with a Student-t 95% interval;
rates counted over examples (exact match, wins against a gold reward) get a Wilson score interval
(`binomial_interval`), and any other statistic of per-example values a percentile bootstrap
(`bootstrap_interval`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
import scipy.stats

DEFAULT_SEEDS = 3
LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class SeedSummary:
  """A cell's values over its seeds: mean, standard error of the mean, and the t interval."""

  values: tuple[float, ...]
  seeds: tuple[int, ...]
  level: float = LEVEL

  @property
  def mean(self) -> float:
    return float(np.mean(self.values))

  @property
  def sem(self) -> float:
    """Standard error of the mean (sample sd with ddof 1, over sqrt(S)); NaN for one seed."""
    if len(self.values) < 2:
      return float('nan')
    return float(np.std(self.values, ddof=1) / math.sqrt(len(self.values)))

  @property
  def interval(self) -> tuple[float, float]:
    """The `level` interval of the mean, Student's t at S - 1 degrees of freedom."""
    if len(self.values) < 2:
      return float('nan'), float('nan')
    half = scipy.stats.t.ppf(0.5 + self.level / 2, len(self.values) - 1) * self.sem
    return self.mean - half, self.mean + half

  def format(self, digits: int = 4) -> str:
    """'2.3410 ± 0.0123 (3 seeds)': the form every study table uses."""
    return f'{self.mean:.{digits}f} ± {self.sem:.{digits}f} ({len(self.values)} seeds)'


def over_seeds(cell: Callable[[int], float], seeds: int = DEFAULT_SEEDS,
               first_seed: int = 0) -> SeedSummary:
  """Runs `cell(seed)` for seeds first_seed .. first_seed + seeds - 1 and summarises them."""
  if seeds < 1:
    raise ValueError(f'seeds={seeds} must be at least 1 (3 or more for an interval worth '
                     'reporting).')
  chosen = tuple(range(first_seed, first_seed + seeds))
  return SeedSummary(tuple(float(cell(seed)) for seed in chosen), chosen)


def binomial_interval(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float]:
  """The Wilson score interval of a rate of `successes` in `trials`: unlike the normal
  approximation it stays inside [0, 1] and keeps its coverage at rates near 0 or 1."""
  if trials < 1 or not 0 <= successes <= trials:
    raise ValueError(f'successes={successes}, trials={trials}: need 0 <= successes <= trials, '
                     'trials >= 1.')
  z = scipy.stats.norm.ppf(0.5 + level / 2)
  p = successes / trials
  centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
  half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials**2))
  return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean,
                       level: float = LEVEL, n_resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
  """The percentile bootstrap `level` interval of `statistic` over per-example `values`."""
  x = np.asarray(values, np.float64)
  if len(x) < 2:
    raise ValueError(f'A bootstrap needs 2 or more values, got {len(x)}.')
  rng = np.random.default_rng(seed)
  draws = np.array([statistic(x[rng.integers(0, len(x), len(x))]) for _ in range(n_resamples)])
  tail = 50 * (1 - level)
  lo, hi = np.percentile(draws, [tail, 100 - tail])
  return float(lo), float(hi)
