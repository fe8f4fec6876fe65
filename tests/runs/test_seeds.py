"""Seeds and intervals for study tables, against scipy and float64 NumPy."""

import numpy as np
import pytest
import scipy.stats

from gptjax.runs import seeds


def test_over_seeds_runs_each_seed_once_and_matches_numpy():
  calls = []

  def cell(seed):
    calls.append(seed)
    return [2.31, 2.35, 2.28, 2.40][seed]

  summary = seeds.over_seeds(cell, seeds=4)
  assert calls == [0, 1, 2, 3] and summary.seeds == (0, 1, 2, 3)
  values = np.array([2.31, 2.35, 2.28, 2.40])
  assert summary.mean == pytest.approx(values.mean(), rel=1e-12)
  assert summary.sem == pytest.approx(values.std(ddof=1) / 2, rel=1e-12)
  lo, hi = scipy.stats.t.interval(0.95, 3, loc=values.mean(), scale=values.std(ddof=1) / 2)
  assert summary.interval == pytest.approx((lo, hi), rel=1e-9)
  assert summary.format() == f'{values.mean():.4f} ± {values.std(ddof=1) / 2:.4f} (4 seeds)'
  assert np.isnan(seeds.over_seeds(lambda s: 1.0, seeds=1).sem)  # one seed: no spread to report
  with pytest.raises(ValueError, match='seeds=0 must be at least 1'):
    seeds.over_seeds(cell, seeds=0)


@pytest.mark.parametrize('successes, trials', [(4, 256), (0, 50), (50, 50), (37, 64)])
def test_binomial_interval_is_scipys_wilson_interval(successes, trials):
  expected = scipy.stats.binomtest(successes, trials).proportion_ci(0.95, method='wilson')
  assert seeds.binomial_interval(successes, trials) == pytest.approx(
      (expected.low, expected.high), abs=1e-9)
  with pytest.raises(ValueError, match='need 0 <= successes <= trials'):
    seeds.binomial_interval(trials + 1, trials)


def test_bootstrap_interval_covers_the_mean_at_its_level():
  """Normal samples of 40: the 95% percentile interval of the mean holds the true mean in about
  95% of 300 draws (a percentile bootstrap runs a little narrow at this size)."""
  rng = np.random.default_rng(0)
  covered = [lo <= 0.0 <= hi for lo, hi in
             (seeds.bootstrap_interval(rng.normal(0, 1, 40), n_resamples=400, seed=i)
              for i in range(300))]
  assert 0.89 <= np.mean(covered) <= 0.98
  with pytest.raises(ValueError, match='2 or more values'):
    seeds.bootstrap_interval([1.0])
