"""The sweep report's holdout check: approach 3 fitted without the largest budget passes on a sweep
its law generated, and fails when that budget's optimum moves in loss or in size."""

import dataclasses

import numpy as np
import pytest
from test_laws import TRUE, isoflop_sweep

from gptjax.scaling import isoflop as scaling_isoflop, laws, report


def check(records, n_bootstrap=50):
  holdout = laws.holdout_extrapolation(records, n_bootstrap=n_bootstrap)
  return report.holdout_check(holdout, scaling_isoflop.isoflop_minima(records, n_bootstrap=0))


def largest_budget_changed(factor) -> list[dict]:
  """The IsoFLOP sweep with each 1e20 run's loss multiplied by factor(N / true N_opt)."""
  records = isoflop_sweep()
  n_opt, _ = TRUE.compute_optimal(1e20)
  for record in records:
    if record['flops_kaplan'] > 5e19:
      record['eval_loss'] *= factor(record['params_non_embedding'] / n_opt)
  return records


@pytest.fixture(scope='module')
def holdout():
  return laws.holdout_extrapolation(isoflop_sweep(), n_bootstrap=50)


def test_passes_on_a_sweep_its_law_generated(holdout, capsys):
  result = report.holdout_check(holdout, scaling_isoflop.isoflop_minima(isoflop_sweep(),
                                                                        n_bootstrap=0))
  assert result['passed'] and result['n_opt_overlap']
  assert result['budget'] == pytest.approx(1e20, rel=0.02)
  assert abs(result['loss_error']) < 0.005
  assert result['measured_by'] == 'IsoFLOP minimum'
  lo, hi = result['n_opt_interval']
  assert lo < TRUE.compute_optimal(result['budget'])[0] < hi
  report._print_holdout_check(result)  # pylint: disable=protected-access
  line = capsys.readouterr().out.strip()
  assert line.startswith('Holdout check (approach 3 fitted on all but the largest budget, '
                         f"C={result['budget']:.3g}): compute-optimal loss predicted")
  assert '(target within 2%)' in line and ': intervals overlap. PASS' in line


def test_fails_when_the_largest_budget_beats_the_predicted_loss():
  """5% lower losses at 1e20 leave its N_opt in place and the predicted loss 5% too high."""
  result = check(largest_budget_changed(lambda ratio: 0.95))
  assert result['loss_error'] == pytest.approx(1 / 0.95 - 1, abs=0.005)
  assert result['n_opt_overlap'] and not result['passed']


def test_fails_when_the_largest_budget_optimum_moves_to_other_sizes(capsys):
  """A tilt of 2% per e-fold of N moves the 1e20 parabola's minimum from 0.66B to about 0.36B
  parameters while its loss stays within 1% of the prediction: N_opt outside its interval fails."""
  result = check(largest_budget_changed(lambda ratio: ratio**0.02))
  lo, _ = result['n_opt_interval']
  assert result['measured_n_opt'] < lo and abs(result['loss_error']) < 0.01
  assert not result['passed']
  report._print_holdout_check(result)  # pylint: disable=protected-access
  assert ': DISJOINT. FAIL' in capsys.readouterr().out


def test_without_refits_the_loss_alone_decides(holdout, capsys):
  law = dataclasses.replace(holdout.law, bootstrap=np.zeros((0, 5)))
  result = report.holdout_check(dataclasses.replace(holdout, law=law))
  assert result['n_opt_overlap'] is None and result['passed']
  assert np.isnan(result['n_opt_interval']).all()
  report._print_holdout_check(result)  # pylint: disable=protected-access
  assert 'not checked (no bootstrap refits). PASS' in capsys.readouterr().out


def test_without_an_isoflop_minimum_the_best_run_is_the_measured_optimum(holdout):
  result = report.holdout_check(holdout, isoflop=None)
  best = int(np.argmin(holdout.run_loss))
  assert result['measured_by'] == 'best run'
  assert result['measured_n_opt'] == holdout.run_params[best]
  assert result['measured_loss'] == holdout.run_loss[best]


@pytest.mark.parametrize('a3, interval3, agree, precise', [
    (0.62, (0.55, 0.70), True, True),     # each inside the other's interval, both narrow
    (0.30, (0.18, 0.70), False, False),   # approach 2's a is inside 3's interval, not the reverse
    (0.62, (0.30, 0.95), True, False),    # they agree, but approach 3 is too vague to act on
])
def test_exponent_check_wants_mutual_agreement_and_narrow_intervals(a3, interval3, agree, precise):
  fits = {'isoflop': {'n_exponent': 0.64, 'n_exponent_ci': [0.59, 0.72]},
          'chinchilla': {'n_exponent': a3, 'intervals': {'n_exponent': interval3}}}
  check = report.exponent_check(fits)
  assert (check['agree'], check['precise']) == (agree, precise)
  assert check['half_widths'] == pytest.approx([0.065, (interval3[1] - interval3[0]) / 2])
  assert report.exponent_check({'isoflop': fits['isoflop']}) is None


def test_exponent_check_takes_degenerate_intervals_that_differ_in_the_last_bits():
  """Exact synthetic data gives zero-width intervals; another CPU's rounding must not split them."""
  a = 6 / 13
  fits = {'isoflop': {'n_exponent': a + 1e-13, 'n_exponent_ci': [a + 1e-13, a + 1e-13]},
          'chinchilla': {'n_exponent': a, 'intervals': {'n_exponent': (a, a)}}}
  assert report.exponent_check(fits)['agree']
  fits['isoflop'] = {'n_exponent': a + 1e-3, 'n_exponent_ci': [a + 1e-3, a + 1e-3]}
  assert not report.exponent_check(fits)['agree']  # a real difference still disagrees
