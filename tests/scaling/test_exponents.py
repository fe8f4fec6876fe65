"""The exponent check across Chinchilla's approaches, and both accountings' exponents side by side."""

import numpy as np
import pytest
from synthetic import BUDGETS, isoflop_sweep, non_embedding, true_optimum

from gptjax.scaling import exponents


@pytest.mark.parametrize('a3, interval3, agree, precise', [
    (0.62, (0.55, 0.70), True, True),     # each inside the other's interval, both narrow
    (0.30, (0.18, 0.70), False, False),   # approach 2's a is inside 3's interval, not the reverse
    (0.62, (0.40, 0.85), True, False),    # they agree, but approach 3 is too vague to act on
])
def test_exponent_check_wants_mutual_agreement_and_narrow_intervals(a3, interval3, agree, precise):
  fits = {'isoflop': {'n_exponent': 0.64, 'n_exponent_ci': [0.59, 0.72]},
          'chinchilla': {'n_exponent': a3, 'n_exponent_ci': interval3}}
  found = exponents.estimates(fits)
  check = exponents.exponent_check(found)
  assert (check['agree'], check['precise']) == (agree, precise)
  assert check['passed'] == (agree and precise)
  assert list(check['half_widths'].values()) == pytest.approx(
      [0.065, (interval3[1] - interval3[0]) / 2])
  assert exponents.exponent_check(exponents.estimates({'isoflop': fits['isoflop']})) is None


def test_every_pair_of_approaches_must_agree():
  """Approaches 1 and 2 agree with 3 but not with each other: the check names the pair."""
  found = {'envelope': (0.52, 0.47, 0.57), 'isoflop': (0.59, 0.55, 0.63),
           'chinchilla': (0.56, 0.50, 0.62)}
  check = exponents.exponent_check(found)
  assert check['pairs'] == {'1-2': False, '1-3': True, '2-3': True}
  assert not check['agree'] and check['precise']


def test_exponent_check_takes_degenerate_intervals_that_differ_in_the_last_bits():
  """Exact synthetic data gives zero-width intervals; another CPU's rounding must not split them."""
  a = 6 / 13
  found = {'isoflop': (a + 1e-13, a + 1e-13, a + 1e-13), 'chinchilla': (a, a, a)}
  assert exponents.exponent_check(found)['agree']
  found['isoflop'] = (a + 1e-3,) * 3
  assert not exponents.exponent_check(found)['agree']  # a real difference still disagrees


def test_a_zero_width_interval_leaves_the_verdict_to_the_other_one():
  """Approach 3 on exact data has a zero-width interval; approach 2's parabola carries a small
  bias and a real interval. They agree when the exact value lies inside approach 2's interval."""
  found = {'isoflop': (0.437, 0.436, 0.451), 'chinchilla': (0.439, 0.439, 0.439)}
  assert exponents.exponent_check(found)['agree']
  found['chinchilla'] = (0.46, 0.46, 0.46)
  assert not exponents.exponent_check(found)['agree']


def test_the_kaplan_view_of_the_same_runs_is_steeper(capsys):
  """Kaplan's N leaves out an embedding that is a larger share of small models, so the same
  optima grow faster in it. Each view's approach 2 matches the slope of the true optima (from the
  generating law, not from a fit) counted in that view's N and C: a budget's Kaplan C being the
  geometric mean of its members' Kaplan C, as the fit groups them."""
  rows = isoflop_sweep()
  full = exponents.accounting_view(rows, 'full', n_bootstrap=20)
  kaplan = exponents.accounting_view(rows, 'kaplan', n_bootstrap=20)
  n_true = np.array([true_optimum(c)[0] for c in BUDGETS])
  kaplan_c = [np.exp(np.mean([np.log(r['flops_kaplan']) for r in rows if r['budget'] == c]))
              for c in BUDGETS]
  assert full['isoflop'][0] == pytest.approx(np.polyfit(np.log(BUDGETS), np.log(n_true), 1)[0],
                                             abs=0.02)
  assert kaplan['isoflop'][0] == pytest.approx(
      np.polyfit(np.log(kaplan_c), np.log(non_embedding(n_true)), 1)[0], abs=0.03)
  assert kaplan['isoflop'][0] > full['isoflop'][0] + 0.03
  assert {'isoflop', 'chinchilla'} <= set(full) and {'isoflop', 'chinchilla'} <= set(kaplan)
  exponents.print_accountings({'full': full, 'kaplan': kaplan})
  out = capsys.readouterr().out
  assert '  total parameters, FLOPs spent: approach 2 ' in out
  assert "  non-embedding parameters, Kaplan's C: approach 2 " in out
  assert 'Pearce & Song 2024' in out
