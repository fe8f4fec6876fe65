"""The exponent a of N_opt ∝ C^a by each Chinchilla approach, their agreement, and the same runs
seen in the other accounting.

The three approaches estimate one number in three ways (the envelope of finished runs, IsoFLOP
minima, the fitted L(N, D)); `exponent_check` asks whether each lies inside the others' intervals
and whether those intervals are narrow enough to mean something. `accounting_view` refits the same
runs with the other accounting's N and C (`gptjax.scaling.accounting`), so a report can print both
exponents side by side.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Mapping

from gptjax.scaling import (accounting, envelope as scaling_envelope, isoflop as scaling_isoflop,
                            replicas)
from gptjax.scaling.laws import positive_columns
from gptjax.scaling.records import EVAL_KEY, design_budgets

APPROACHES = {'envelope': 1, 'isoflop': 2, 'chinchilla': 3}
EXPONENT_TARGET = 0.10  # the largest half-width of an interval on a that a sweep should reach
# How far outside an interval an exponent may lie and still count as inside it. Exact data gives
# zero-width bootstrap intervals whose last bits differ between CPUs (AVX2 against AVX-512), so a
# bare float comparison would make agreement a matter of rounding.
EXPONENT_TOLERANCE = 1e-6
Estimate = tuple[float, float, float]  # (a, lower end, upper end)


def estimates(fits: Mapping[str, Mapping[str, Any]]) -> dict[str, Estimate]:
  """(a, lo, hi) of every approach among a report's `fits`."""
  found = {}
  for name in APPROACHES:
    if name in fits:
      fit = fits[name]
      lo, hi = fit['n_exponent_ci']
      found[name] = (float(fit['n_exponent']), float(lo), float(hi))
  return found


def _inside(a: float, interval: tuple[float, float], other: tuple[float, float]) -> bool:
  """Whether `a` lies in `interval` (widened by EXPONENT_TOLERANCE); a zero-width interval, what
  exact data gives when every resample refits the same law, says nothing about how far another
  method may land, so it is passed over unless `other`'s interval is degenerate as well."""
  lo, hi = interval
  tol = EXPONENT_TOLERANCE
  if hi - lo <= tol and other[1] - other[0] > tol:
    return True
  return lo - tol <= a <= hi + tol


def exponent_check(found: Mapping[str, Estimate],
                   target: float = EXPONENT_TARGET) -> dict[str, Any] | None:
  """Every pair of approaches agrees when each one's a lies in the other's interval (`_inside`);
  the intervals are precise enough when each half-width is at most `target`. None with fewer than
  two approaches."""
  if len(found) < 2:
    return None
  pairs = {}
  for x, y in itertools.combinations(found, 2):
    (a_x, *ci_x), (a_y, *ci_y) = found[x], found[y]
    pairs[f'{APPROACHES[x]}-{APPROACHES[y]}'] = (_inside(a_y, ci_x, ci_y)
                                                 and _inside(a_x, ci_y, ci_x))
  half_widths = {name: (hi - lo) / 2 for name, (_, lo, hi) in found.items()}
  precise = bool(all(w <= target for w in half_widths.values()))
  agree = all(pairs.values())
  return dict(agree=agree, pairs=pairs, half_widths=half_widths, target=target, precise=precise,
              passed=agree and precise)


def format_estimates(found: Mapping[str, Estimate]) -> str:
  return '; '.join(f'approach {APPROACHES[name]} {a:.3f} [{lo:.3f}, {hi:.3f}]'
                   for name, (a, lo, hi) in found.items())


def print_check(found: Mapping[str, Estimate], check: Mapping[str, Any]) -> None:
  disagree = [pair for pair, ok in check['pairs'].items() if not ok]
  agreement = ("agree (each inside the others' intervals)" if check['agree'] else
               f"DISAGREE (approaches {', '.join(disagree)})")
  widths = ', '.join(f'{w:.3f}' for w in check['half_widths'].values())
  print(f"Exponent a of N_opt ∝ C^a: {format_estimates(found)}. The approaches {agreement}; "
        f"interval half-widths {widths} (target at most {check['target']:g}): "
        f"{'PASS' if check['passed'] else 'FAIL'}")


def accounting_view(final, name: str, n_bootstrap: int) -> dict[str, Estimate]:
  """The three approaches' (a, lo, hi) on the same finished runs under accounting `name`."""
  keys = accounting.ACCOUNTINGS[name]
  return view(final, keys.compute_key, keys.params_key, n_bootstrap)


def view(final, compute_key: str, params_key: str, n_bootstrap: int) -> dict[str, Estimate]:
  """The three approaches' (a, lo, hi) on finished runs with these C and N columns; an approach
  the runs cannot support is left out. Warnings are the main report's to give."""
  found: dict[str, Estimate] = {}
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    try:
      c, n, l = positive_columns(final, compute_key, params_key, EVAL_KEY)
      cells = replicas.replica_cells(c, n, l, design=design_budgets(final))
      result = scaling_envelope.envelope_optima(cells, replicas.seed_noise(cells, l),
                                                n_bootstrap=n_bootstrap)
      found['envelope'] = (result.n_exponent, *result.n_exponent_ci)
    except ValueError:
      pass
    try:
      result = scaling_isoflop.isoflop_minima(final, compute_key=compute_key,
                                              params_key=params_key, n_bootstrap=n_bootstrap)
      found['isoflop'] = (result.n_exponent, *result.n_exponent_ci)
    except ValueError:
      pass
    try:
      law, cells = replicas.fit_seed_means(final, compute_key=compute_key,
                                           params_key=params_key, n_bootstrap=n_bootstrap)
      relation = accounting.relation_of(final, compute_key, params_key)
      found['chinchilla'] = accounting.exponent_interval(law, cells.compute.min(),
                                                         cells.compute.max(), relation)
    except ValueError:
      pass
  return {k: tuple(float(x) for x in v) for k, v in found.items()}


def print_accountings(views: Mapping[str, Mapping[str, Estimate]]) -> None:
  """Both accountings' exponents, each on a line naming it, and why they differ."""
  print('The same runs in both accountings (a of N_opt ∝ C^a):')
  for name, found in views.items():
    description = accounting.ACCOUNTINGS[name].description
    print(f'  {description}: {format_estimates(found) or "no fit"}')
  full, kaplan = views.get('full', {}), views.get('kaplan', {})
  shared = [name for name in full if name in kaplan]
  if shared and all(kaplan[name][0] > full[name][0] for name in shared):
    print(f'  {accounting.WHY_THEY_DIFFER}')
  elif shared:
    print("  Here Kaplan's accounting does not give the steeper exponent by every approach.")
