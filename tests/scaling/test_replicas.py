"""Seed replicas (noise measured, averaged, carried into intervals) and Chinchilla approach 1.

Synthetic sweeps from the Chinchilla paper's law (E=1.69, A=406.4, B=410.7, alpha=0.34,
beta=0.28, so N_opt ∝ C^0.4516) with Gaussian seed noise of known size.
"""

import numpy as np
import pytest

from gptjax.cost import chinchilla
from gptjax.scaling import envelope as scaling_envelope, isoflop, laws, replicas as scaling_replicas

TRUE = chinchilla.ChinchillaFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
BUDGETS = np.geomspace(1e18, 1e20, 5)


def seeded_sweep(noise_sd: float, seeds: int = 2, rng_seed: int = 0) -> list[dict]:
  """Final records: sizes on one geometric ladder (each size at several budgets, as in an IsoFLOP
  sweep whose budgets share sizes), 7 per budget around N_opt, `seeds` runs of each."""
  rng = np.random.default_rng(rng_seed)
  ladder = np.geomspace(1e7, 1e11, 25)
  records = []
  for budget in BUDGETS:
    n_opt, _ = TRUE.compute_optimal(budget)
    nearest = int(np.argmin(np.abs(np.log(ladder / n_opt))))
    for n in ladder[nearest - 3:nearest + 4]:
      d = budget / (6 * n)
      for s in range(seeds):
        loss = float(TRUE.predict(n, d)) + rng.normal(0, noise_sd)
        records.append(dict(run=f'c{budget:.0e}_n{n:.3g}_s{s}', flops_kaplan=budget * (1 + 1e-3 * s),
                            params_non_embedding=n, tokens_seen=d, eval_loss=loss))
  return records


def _columns(records):
  return [np.array([r[k] for r in records]) for k in ('flops_kaplan', 'params_non_embedding',
                                                       'eval_loss')]


def test_cells_average_seeds_and_pooled_noise_matches_numpy():
  records = seeded_sweep(0.01, seeds=3)
  c, n, l = _columns(records)
  cells = scaling_replicas.replica_cells(c, n, l)
  assert len(cells) == len(records) // 3 and np.all(cells.count == 3)
  for k in range(len(cells)):
    runs = cells.runs[k]
    assert len(np.unique(n[runs])) == 1 and cells.loss[k] == pytest.approx(l[runs].mean())
  noise = scaling_replicas.seed_noise(cells, l)
  # Independent reference: the pooled variance is the mean of the per-cell unbiased variances
  # when every cell has the same number of seeds.
  by_cell = {}
  for record in records:
    by_cell.setdefault((round(np.log10(record['flops_kaplan']), 1), record['params_non_embedding']),
                       []).append(record['eval_loss'])
  pooled = np.sqrt(np.mean([np.var(v, ddof=1) for v in by_cell.values()]))
  assert noise.sd == pytest.approx(pooled, rel=1e-12)
  assert noise.cells == len(by_cell) and noise.runs == len(records)
  assert noise.sd == pytest.approx(0.01, rel=0.2)  # 70 degrees of freedom
  assert noise.largest_gap == pytest.approx(max(np.ptp(v) for v in by_cell.values()))


def test_no_replicas_means_no_noise_estimate():
  c, n, l = _columns(seeded_sweep(0.01, seeds=1))
  cells = scaling_replicas.replica_cells(c, n, l)
  assert np.all(cells.count == 1) and scaling_replicas.seed_noise(cells, l) is None


def test_perturbed_losses_have_the_noise_of_a_mean():
  c, n, l = _columns(seeded_sweep(0.02, seeds=4))
  cells = scaling_replicas.replica_cells(c, n, l)
  noise = scaling_replicas.seed_noise(cells, l)
  draws_SxK = scaling_replicas.perturbed_losses(cells, noise, 4000, np.random.default_rng(1))
  np.testing.assert_allclose(draws_SxK.mean(0), cells.loss, atol=5 * noise.sd / 2 / np.sqrt(4000))
  np.testing.assert_allclose(draws_SxK.std(0), noise.sd / 2, rtol=0.08)


def test_isoflop_bootstrap_carries_seed_noise():
  """With seeds, approach 2 fits seed means and its interval comes from the measured noise: it
  contains the true exponent, and it widens when the noise grows."""
  widths = []
  for sd in (0.002, 0.02):
    result = isoflop.isoflop_minima(seeded_sweep(sd), compute_key='flops_kaplan',
                                    params_key='params_non_embedding', n_bootstrap=200)
    assert result.noise is not None and result.noise.sd == pytest.approx(sd, rel=0.35)
    assert len(result.cells) == len(result.cells.count) == 35
    lo, hi = result.n_exponent_ci
    assert lo < TRUE.n_exponent < hi
    widths.append(hi - lo)
  assert widths[1] > 3 * widths[0]


def test_envelope_recovers_the_exponent_from_finished_runs():
  """Approach 1 over sizes trained at several budgets finds N_opt ∝ C^0.4516 (the sizes are a
  ladder of factor 1.47, so N_opt(C) is a staircase: within 0.05), and its interval holds it."""
  records = seeded_sweep(0.003)
  c, n, l = _columns(records)
  cells = scaling_replicas.replica_cells(c, n, l)
  result = scaling_envelope.envelope_optima(cells, scaling_replicas.seed_noise(cells, l),
                                            n_bootstrap=200)
  assert result.n_exponent == pytest.approx(TRUE.n_exponent, abs=0.05)
  lo, hi = result.n_exponent_ci
  assert lo <= TRUE.n_exponent + 0.02 and hi >= TRUE.n_exponent - 0.02
  ok = np.isfinite(result.n_opt)
  assert ok.sum() >= 30
  true_n = TRUE.compute_optimal(result.compute[ok])[0]
  assert np.all(np.abs(np.log(result.n_opt[ok] / true_n)) < np.log(1.47) * 1.1)
  # The envelope is the lowest interpolated loss: never above any finished run at its compute.
  for k in range(len(cells)):
    at = np.isclose(result.compute, cells.compute[k], rtol=1e-9)
    assert not np.any(result.loss_opt[at] > cells.loss[k] + 1e-12)


def test_envelope_without_shared_sizes_explains_what_is_missing():
  records = [dict(flops_kaplan=c, params_non_embedding=n, eval_loss=2.0)
             for c, n in ((1e10, 1e3), (1e10, 2e3), (1e11, 4e3), (1e11, 8e3))]
  cells = scaling_replicas.replica_cells(*_columns(records))
  with pytest.raises(ValueError, match='at 2\\+ budgets'):
    scaling_envelope.envelope_optima(cells)
