"""The C(N, D) relation read from records, and compute-optimal allocations under it, against an
independent scalar minimiser."""

import numpy as np
import pytest
import scipy.optimize
from synthetic import TRUE, flops_per_token

from gptjax.cost.chinchilla import ChinchillaFit
from gptjax.scaling import accounting

SIZES = np.geomspace(1e6, 1e11, 41)


def relation():
  tokens = np.full(len(SIZES), 1e9)
  return accounting.ComputeRelation.from_columns(flops_per_token(SIZES) * tokens, SIZES, tokens,
                                                 'synthetic')


def test_relation_is_exact_at_trained_sizes_and_close_between_them():
  rel = relation()
  np.testing.assert_allclose(rel.flops_per_token(SIZES), flops_per_token(SIZES), rtol=1e-12)
  between = np.sqrt(SIZES[1:] * SIZES[:-1])
  np.testing.assert_allclose(rel.flops_per_token(between), flops_per_token(between), rtol=1e-3)
  six = accounting.ComputeRelation.six_nd()
  np.testing.assert_allclose(six.tokens(6e20, [1e3, 1e9, 1e14]), [1e17, 1e11, 1e6], rtol=1e-12)


@pytest.mark.parametrize('budget', [1e17, 1e19, 1e21])
def test_compute_optimal_matches_a_scalar_minimiser_under_a_non_6nd_relation(budget):
  rel = relation()
  along_budget = lambda log_n: float(TRUE.predict(np.exp(log_n),
                                                  budget / rel.flops_per_token(np.exp(log_n))))
  found = scipy.optimize.minimize_scalar(along_budget, bounds=(np.log(1e6), np.log(1e11)),
                                         method='bounded', options=dict(xatol=1e-10))
  n_opt, d_opt = accounting.compute_optimal(TRUE, budget, rel)
  assert n_opt == pytest.approx(np.exp(found.x), rel=1e-4)
  assert d_opt * flops_per_token(n_opt) == pytest.approx(budget, rel=1e-3)


def test_compute_optimal_under_6nd_is_the_closed_form_and_broadcasts_over_refits():
  budgets = np.array([1e18, 1e21, 5.76e23])
  n_opt, d_opt = accounting.compute_optimal(TRUE, budgets, accounting.ComputeRelation.six_nd())
  closed_n, closed_d = TRUE.compute_optimal(budgets)
  np.testing.assert_allclose(n_opt, closed_n, rtol=1e-5)
  np.testing.assert_allclose(d_opt, closed_d, rtol=1e-5)
  refits = ChinchillaFit(*np.array([[1.69, 406.4, 410.7, 0.34, 0.28],
                                    [1.8, 300.0, 500.0, 0.30, 0.30]]).T)
  n_S, _ = accounting.compute_optimal(refits, budgets, accounting.ComputeRelation.six_nd())
  assert n_S.shape == (2, 3)
  second = ChinchillaFit(1.8, 300.0, 500.0, 0.30, 0.30)
  np.testing.assert_allclose(n_S[1], second.compute_optimal(budgets)[0], rtol=1e-5)


def test_accountings_are_named_by_their_keys():
  assert accounting.accounting_of('flops_full', 'params_total') == 'full'
  assert accounting.accounting_of('flops_kaplan', 'params_non_embedding') == 'kaplan'
  assert accounting.accounting_of('flops_full', 'params_non_embedding') is None
  with pytest.raises(ValueError, match='2 or more model sizes'):
    accounting.ComputeRelation.from_columns([6e9], [1e3], [1e6], 'one size')


def test_a_refit_without_an_optimum_comes_back_nan_and_is_left_out_of_the_interval():
  """A negative exponent leaves L falling forever along the budget, and a NaN parameter leaves
  no L at all: both refits give NaN, and the interval is the other refits'."""
  six = accounting.ComputeRelation.six_nd()
  good = [1.69, 406.4, 410.7, 0.34, 0.28]
  refits = ChinchillaFit(*np.array([good, [1.69, 406.4, 410.7, -0.1, 0.28],
                                    [np.nan, 406.4, 410.7, 0.34, 0.28]]).T)
  n_S, d_S = accounting.compute_optimal(refits, 1e21, six)
  assert np.isfinite(n_S[0]) and np.isnan(n_S[1:]).all() and np.isnan(d_S[1:]).all()
  law = ChinchillaFit(*good, bootstrap=np.array([good, good, [1.69, 406.4, 410.7, -0.1, 0.28]]))
  a, lo, hi = accounting.exponent_interval(law, 1e18, 1e20, six)
  assert a == pytest.approx(0.28 / 0.62, abs=1e-6) and lo == pytest.approx(a) == hi
  nothing = ChinchillaFit(*good, bootstrap=np.array([[1.69, 406.4, 410.7, -0.1, 0.28]]))
  assert np.isnan(accounting.exponent_interval(nothing, 1e18, 1e20, six)[1:]).all()
