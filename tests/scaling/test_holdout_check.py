"""The sweep report's holdout check: approach 3 fitted without the largest budget passes on a sweep
its law generated, and fails when that budget's optimum moves in loss or in size."""

import dataclasses

import numpy as np
import pytest
from synthetic import TRUE, isoflop_sweep, true_optimum

from gptjax.scaling import holdout as holdout_lib, isoflop as scaling_isoflop, report


def check(records, n_bootstrap=50):
  holdout = holdout_lib.holdout_extrapolation(records, n_bootstrap=n_bootstrap)
  return holdout_lib.holdout_check(holdout,
                                   scaling_isoflop.isoflop_minima(records, n_bootstrap=0))


def largest_budget_changed(factor) -> list[dict]:
  """The IsoFLOP sweep with each 1e20 run's loss multiplied by factor(N / true N_opt)."""
  records = isoflop_sweep()
  n_opt, _ = true_optimum(1e20)
  for record in records:
    if record['budget'] == 1e20:
      record['eval_loss'] *= factor(record['params_total'] / n_opt)
  return records


@pytest.fixture(scope='module')
def holdout():
  return holdout_lib.holdout_extrapolation(isoflop_sweep(), n_bootstrap=50)


def test_passes_on_a_sweep_its_law_generated(holdout, capsys):
  """The sweep spends compute that is not 6ND: the predicted optimum solves that C(N, D), so it
  lands on the true one (under 6ND it would miss the loss by more than the data's noise)."""
  result = holdout_lib.holdout_check(holdout, scaling_isoflop.isoflop_minima(isoflop_sweep(),
                                                                             n_bootstrap=0))
  assert result['passed'] and result['n_opt_overlap']
  assert result['budget'] == pytest.approx(1e20, rel=0.02)
  assert abs(result['loss_error']) < 0.005
  assert result['measured_by'] == 'IsoFLOP minimum'
  n_true, d_true = true_optimum(result['budget'])
  lo, hi = result['n_opt_interval']
  assert lo < n_true < hi
  assert result['predicted_n_opt'] == pytest.approx(n_true, rel=0.05)
  assert result['predicted_d_opt'] == pytest.approx(d_true, rel=0.05)
  assert float(TRUE.predict(result['predicted_n_opt'], result['predicted_d_opt'])) == (
      pytest.approx(float(TRUE.predict(n_true, d_true)), rel=1e-3))
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
  result = holdout_lib.holdout_check(dataclasses.replace(holdout, law=law))
  assert result['n_opt_overlap'] is None and result['passed']
  assert np.isnan(result['n_opt_interval']).all()
  report._print_holdout_check(result)  # pylint: disable=protected-access
  assert 'not checked (no bootstrap refits). PASS' in capsys.readouterr().out


def test_without_an_isoflop_minimum_the_best_run_is_the_measured_optimum(holdout):
  result = holdout_lib.holdout_check(holdout, isoflop=None)
  best = int(np.argmin(holdout.run_loss))
  assert result['measured_by'] == 'best run'
  assert result['measured_n_opt'] == holdout.run_params[best]
  assert result['measured_loss'] == holdout.run_loss[best]
