"""Fits a finished sweep's scaling laws, prints them, and writes `fit/fit.json` and the figures.

`launch.sweep` calls `fit_and_report` after its members finish (or alone with `--fit_only`); a
notebook calls it on any directory of runs. The
fits run on a snapshot of the finished members' metrics, so the figures show exactly what was
fitted.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from typing import Any, Sequence

import numpy as np
from absl import logging

from gptjax.cost.chinchilla import CHINCHILLA_PARAMS
from gptjax.runs import run_dir
from gptjax.scaling import (envelope as scaling_envelope, isoflop as scaling_isoflop, laws, plots,
                            records, replicas)

FIT_DIR, PLOTS_DIR = 'fit', 'plots'
FIT_FILE = 'fit.json'
_SCALE_UPS = (1, 10, 100)
HOLDOUT_TARGET = 0.02  # the largest error the held-out budget's predicted optimal loss may have
EXPONENT_TARGET = 0.15  # the largest half-width of an interval on a that a sweep should reach
# How far outside an interval an exponent may lie and still count as inside it. Exact data gives
# zero-width bootstrap intervals whose last bits differ between CPUs (AVX2 against AVX-512), so a
# bare float comparison would make agreement a matter of rounding.
EXPONENT_TOLERANCE = 1e-6
INTERVAL_RTOL = 1e-6  # the same for the ends of two N_opt intervals, relative to their size


def _snapshot(workdir: str, finished: Sequence[str]) -> str:
  """Copies the finished members' metrics files to `workdir/fit/records/<member>/`.

  The fits and `plots.make_plots` both read this directory, so the figures show exactly what
  was fitted, and a half-trained member's last eval never poses as a final IsoFLOP point.
  """
  target = os.path.join(workdir, FIT_DIR, 'records')
  shutil.rmtree(target, ignore_errors=True)
  for name in finished:
    os.makedirs(os.path.join(target, name))
    shutil.copy(os.path.join(workdir, name, run_dir.METRICS_FILE),
                os.path.join(target, name, run_dir.METRICS_FILE))
  return target


def _count(x: float) -> str:
  return f'{x:,.0f}' if x < 1e12 else f'{x:.3g}'


def _interval(fit: Any, name: str) -> str:
  lo, hi = fit.intervals.get(name, (float('nan'),) * 2)
  return f'[{lo:.4g}, {hi:.4g}]'


def _fit_power_law(rows, final, keys, n_bootstrap) -> dict[str, Any]:
  del final, n_bootstrap
  frontier = laws.compute_frontier(records.column(rows, keys['compute_key']),
                                   records.column(rows, records.EVAL_KEY))
  law = laws.fit_power_law_with_floor(frontier.compute, frontier.loss)
  print(f'L(C) on the frontier ({len(frontier.loss)} of {len(rows)} eval points): '
        f'L = {law.E:.4f} + {law.A:.4g}·C^-{law.alpha:.4f}')
  if law.E < 1e-6 * frontier.loss.min():
    print('  The floor E sits at its bound 0: over this range the loss falls at least as fast as '
          'a pure power law, so E is not measured; larger budgets would pin it.')
  return {'law': law, 'E': law.E, 'A': law.A, 'alpha': law.alpha}


def _print_seed_noise(noise: replicas.SeedNoise | None) -> None:
  if noise is None:
    print('Seed noise: not measured (one seed per size and budget); the intervals of approach 2 '
          'resample runs, approach 1 has none. Give sizes near the minima seeds=2 to measure it.')
    return
  c, n = noise.largest_at
  print(f'Seed noise: {noise.cells} sizes trained with 2+ seeds ({noise.runs} runs): final loss '
        f'sd {noise.sd:.4f} nats between seeds (pooled), widest gap {noise.largest_gap:.4f} at '
        f'C={c:.3g}, N={_count(n)}. The fits use seed means; approaches 1 and 2 redraw them with '
        'this noise for their intervals.')


def _fit_isoflop(rows, final, keys, n_bootstrap) -> dict[str, Any]:
  del rows
  result = scaling_isoflop.isoflop_minima(final, n_bootstrap=n_bootstrap, **keys)
  _print_seed_noise(result.noise)
  print('IsoFLOP minima (Chinchilla approach 2; parabola in log N per budget):')
  sizes = result.cells.params
  outside = []
  for c, n, d, l, index in zip(result.budgets, result.n_opt, result.d_opt, result.loss_min,
                               result.groups):
    lo, hi = sizes[index].min(), sizes[index].max()
    where = '' if lo <= n <= hi else f'  <- outside the sizes trained, N in [{lo:,.0f}, {hi:,.0f}]'
    print(f'  C={c:.3g}: N_opt={_count(n)}  D_opt={_count(d)}  D/N={d / n:.3g}  L_min={l:.4f}'
          f'{where}')
    outside += [f'{c:.3g}'] if where else []
  if outside:
    print(f'  The minima at C={", ".join(outside)} are extrapolated, not measured: add model sizes '
          'on the side of the minimum so each IsoFLOP curve turns up on both ends.')
  lo, hi = result.n_exponent_ci
  over = 'seed noise' if result.noise else 'runs'
  print(f'  N_opt ∝ C^{result.n_exponent:.3f} [{lo:.3f}, {hi:.3f}], D_opt ∝ C^'
        f'{result.d_exponent:.3f} ({100 * result.level:.0f}% bootstrap over {over})')
  noise = result.noise
  return {'result': result, 'budgets': result.budgets.tolist(), 'n_opt': result.n_opt.tolist(),
          'd_opt': result.d_opt.tolist(), 'loss_min': result.loss_min.tolist(),
          'n_exponent': result.n_exponent, 'n_exponent_ci': [lo, hi],
          'seed_noise': None if noise is None else {
              'sd': noise.sd, 'sizes': noise.cells, 'runs': noise.runs,
              'largest_gap': noise.largest_gap}}


def _fit_envelope(rows, final, keys, n_bootstrap) -> dict[str, Any]:
  del rows
  c, n, l = laws.positive_columns(final, keys['compute_key'], keys['params_key'],
                                  records.EVAL_KEY)
  cells = replicas.replica_cells(c, n, l)
  result = scaling_envelope.envelope_optima(cells, replicas.seed_noise(cells, l),
                                            n_bootstrap=n_bootstrap)
  lo, hi = result.n_exponent_ci
  read = np.isfinite(result.n_opt)
  print(f'Envelope of finished runs (Chinchilla approach 1; each size\'s final losses '
        f'interpolated in log C between its budgets, read at {read.sum()} computes from '
        f'C={result.compute[read].min():.3g} to {result.compute[read].max():.3g}): '
        f'N_opt ∝ C^{result.n_exponent:.3f} [{lo:.3f}, {hi:.3f}]')
  return {'result': result, 'n_exponent': result.n_exponent, 'n_exponent_ci': [lo, hi]}


def _fit_chinchilla(rows, final, keys, n_bootstrap) -> dict[str, Any]:
  del rows
  law = laws.fit_chinchilla(records.column(final, keys['params_key']),
                            records.column(final, 'tokens_seen'),
                            records.column(final, records.EVAL_KEY), n_bootstrap=n_bootstrap)
  print(f'L(N, D) (approach 3, final evals): L = {law.E:.4f} + {law.A:.4g}/N^{law.alpha:.4f} + '
        f'{law.B:.4g}/D^{law.beta:.4f}')
  if law.intervals:
    print('  95% bootstrap: ' + ', '.join(f'{name} {_interval(law, name)}'
                                         for name in CHINCHILLA_PARAMS))
  print(f'  N_opt ∝ C^{law.n_exponent:.3f} {_interval(law, "n_exponent")}, D_opt ∝ C^'
        f'{law.d_exponent:.3f} {_interval(law, "d_exponent")}')
  return {'law': law, **{name: getattr(law, name) for name in CHINCHILLA_PARAMS},
          'n_exponent': law.n_exponent, 'intervals': dict(law.intervals)}


def _fit_holdout(rows, final, keys, n_bootstrap) -> dict[str, Any]:
  del final
  h = laws.holdout_extrapolation(rows, n_bootstrap=n_bootstrap, **keys)
  print(f'Holdout (fitted without the {len(h.run_loss)} members at C={h.budget:.3g}, then '
        f'predicted): best loss there {h.measured_best_loss:.4f}, L(C) predicted '
        f'{h.power_law_prediction:.4f} ({100 * h.power_law_relative_error:+.2f}%); L(N, D) '
        f'worst member error {100 * h.max_run_relative_error:.2f}%')
  return {'result': h, 'budget': h.budget, 'measured_best_loss': h.measured_best_loss,
          'power_law_prediction': h.power_law_prediction,
          'power_law_relative_error': h.power_law_relative_error,
          'max_run_relative_error': h.max_run_relative_error}


def _measured_optimum(holdout: laws.HoldoutResult, isoflop: scaling_isoflop.IsoFLOPResult | None
                      ) -> tuple[float, float, str, tuple[float, float]]:
  """(N_opt, loss there, how it was measured, N_opt's interval) of the held-out budget: approach 2's
  parabola minimum where it found one for that budget (from that budget's runs alone) with its
  measured interval (`IsoFLOPResult.n_opt_interval`), else the best run, exactly."""
  if isoflop is not None:
    same = np.flatnonzero(np.isclose(isoflop.budgets, holdout.budget, rtol=0.01))
    if len(same):
      n_opt = float(isoflop.n_opt[same[0]])
      interval = isoflop.n_opt_interval(same[0])
      interval = interval if np.isfinite(interval).all() else (n_opt, n_opt)
      return n_opt, float(isoflop.loss_min[same[0]]), 'IsoFLOP minimum', interval
  best = int(np.argmin(holdout.run_loss))
  n_best = float(holdout.run_params[best])
  return n_best, float(holdout.run_loss[best]), 'best run', (n_best, n_best)


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
  """Whether two intervals share a point, either widened by INTERVAL_RTOL of its ends."""
  (lo_a, hi_a), (lo_b, hi_b) = a, b
  return bool(lo_a * (1 - INTERVAL_RTOL) <= hi_b * (1 + INTERVAL_RTOL)
              and lo_b * (1 - INTERVAL_RTOL) <= hi_a * (1 + INTERVAL_RTOL))


def holdout_check(holdout: laws.HoldoutResult,
                  isoflop: scaling_isoflop.IsoFLOPResult | None = None, level: float = 0.95,
                  target: float = HOLDOUT_TARGET) -> dict[str, Any]:
  """Approach 3 fitted without the largest budget, asked for that budget's optimum: it passes when
  its compute-optimal loss is within `target` of the measured one and the `level` interval of its
  N_opt over the bootstrap refits overlaps the measured N_opt's own interval (without refits, the
  loss alone decides).

  The measured optimum carries its own error (a parabola's minimum, from noisy losses, on a curve
  that is not a parabola), so a point compared with an interval would fail data drawn from the law
  itself; two intervals are compared instead.
  """
  law = holdout.law
  n_opt, d_opt = (float(x) for x in law.compute_optimal(holdout.budget))
  loss = float(law.predict(n_opt, d_opt))
  measured_n, measured_loss, measured_by, measured_interval = _measured_optimum(holdout, isoflop)
  error = (loss - measured_loss) / measured_loss
  lo = hi = float('nan')
  if len(law.bootstrap):
    with np.errstate(all='ignore'):  # a refit whose exponents leave no optimum is left out
      n_opt_S = law.refits().compute_optimal(holdout.budget)[0]
    finite_Sx1 = n_opt_S[np.isfinite(n_opt_S), None]
    lo, hi = (float(x) for x in laws.central_interval(finite_Sx1, level)[0])
  overlap = _overlap((lo, hi), measured_interval) if len(law.bootstrap) else None
  return dict(budget=holdout.budget, predicted_loss=loss, measured_loss=measured_loss,
              loss_error=error, target=target, predicted_n_opt=n_opt, n_opt_interval=[lo, hi],
              level=level, measured_n_opt=measured_n, measured_by=measured_by,
              measured_n_opt_interval=list(measured_interval), n_opt_overlap=overlap,
              passed=abs(error) <= target and overlap is not False)


def _print_holdout_check(check: dict[str, Any]) -> None:
  lo, hi = check['n_opt_interval']
  m_lo, m_hi = check['measured_n_opt_interval']
  measured = _count(check['measured_n_opt']) + (f' [{_count(m_lo)}, {_count(m_hi)}]'
                                                 if m_lo < m_hi else '')
  where = ('not checked (no bootstrap refits)' if check['n_opt_overlap'] is None else
           f"predicted {_count(check['predicted_n_opt'])} [{_count(lo)}, {_count(hi)}] "
           f"({100 * check['level']:.0f}% bootstrap): "
           + ('intervals overlap' if check['n_opt_overlap'] else 'DISJOINT'))
  loss = (f"compute-optimal loss predicted {check['predicted_loss']:.4f}, measured "
          f"{check['measured_loss']:.4f} ({check['measured_by']}), "
          f"{100 * check['loss_error']:+.2f}% (target within {100 * check['target']:g}%)")
  print(f"Holdout check (approach 3 fitted on all but the largest budget, "
        f"C={check['budget']:.3g}): {loss}; N_opt measured {measured}, "
        f"{where}. {'PASS' if check['passed'] else 'FAIL'}")


def _allocation(fits: dict[str, Any], largest: float) -> list[dict[str, float]]:
  """N_opt and D_opt at the largest budget trained and 10x, 100x it, from each law available."""
  table = []
  print('Compute-optimal allocation (D = C / (6 N)):')
  for scale in _SCALE_UPS:
    c = largest * scale
    row, parts = {'compute': c}, []
    if 'isoflop' in fits:
      n = float(fits['isoflop']['result'].predict_n_opt(c))
      row.update(isoflop_n_opt=n, isoflop_d_opt=c / (6 * n))
      parts.append(f'approach 2: N={_count(n)} D={_count(c / (6 * n))}')
    if 'chinchilla' in fits:
      law = fits['chinchilla']['law']
      n, d = (float(x) for x in law.compute_optimal(c))
      row.update(chinchilla_n_opt=n, chinchilla_d_opt=d, chinchilla_loss=float(law.predict(n, d)))
      parts.append(f'approach 3: N={_count(n)} D={_count(d)} L={row["chinchilla_loss"]:.4f}')
    if 'power_law' in fits:
      row['power_law_loss'] = float(fits['power_law']['law'].predict(c))
      parts.append(f'L(C)={row["power_law_loss"]:.4f}')
    label = 'largest budget' if scale == 1 else f'{scale}x'
    print(f'  C={c:.3g} ({label}): ' + ('; '.join(parts) or 'no law fitted'))
    table.append(row)
  return table


_STAGES = (('power_law', _fit_power_law), ('isoflop', _fit_isoflop),
           ('envelope', _fit_envelope), ('chinchilla', _fit_chinchilla),
           ('holdout', _fit_holdout))


def exponent_check(fits: dict[str, Any], target: float = EXPONENT_TARGET) -> dict[str, Any] | None:
  """Approaches 2 and 3 agree when each one's a lies in the other's interval, widened by
  EXPONENT_TOLERANCE; an interval is precise enough when its half-width is under `target`. None
  without both fits."""
  if 'isoflop' not in fits or 'chinchilla' not in fits:
    return None
  a2, (lo2, hi2) = fits['isoflop']['n_exponent'], fits['isoflop']['n_exponent_ci']
  a3 = fits['chinchilla']['n_exponent']
  lo3, hi3 = fits['chinchilla']['intervals'].get('n_exponent', (float('nan'),) * 2)
  tol = EXPONENT_TOLERANCE
  agree = bool(lo2 - tol <= a3 <= hi2 + tol and lo3 - tol <= a2 <= hi3 + tol)
  half_widths = [(hi2 - lo2) / 2, (hi3 - lo3) / 2]
  return dict(agree=agree, half_widths=half_widths, target=target,
              precise=bool(all(w < target for w in half_widths)))


def _print_exponents(fits: dict[str, Any], check: dict[str, Any]) -> None:
  parts = []
  for number, name in ((1, 'envelope'), (2, 'isoflop'), (3, 'chinchilla')):
    if name in fits:
      a = fits[name]['n_exponent']
      lo, hi = (fits[name]['n_exponent_ci'] if name != 'chinchilla' else
                fits[name]['intervals'].get('n_exponent', (float('nan'),) * 2))
      parts.append(f'approach {number} {a:.3f} [{lo:.3f}, {hi:.3f}]')
  w2, w3 = check['half_widths']
  agreement = "agree (each inside the other's interval)" if check['agree'] else 'DISAGREE'
  verdict = 'PASS' if check['agree'] and check['precise'] else 'FAIL'
  print(f"Exponent a of N_opt ∝ C^a: {'; '.join(parts)}. Approaches 2 and 3 {agreement}; "
        f"interval half-widths {w2:.3f} and {w3:.3f} (target under {check['target']:g}): {verdict}")


def fit_and_report(workdir: str, finished: Sequence[str], *, compute_key: str = 'flops_kaplan',
                   params_key: str = 'params_non_embedding', n_bootstrap: int = 100
                   ) -> dict[str, Any]:
  """Every fit the finished members support, printed; a fit they cannot support is skipped with
  the scaling module's reason. Writes `fit/fit.json` and the figures; returns the numbers."""
  if not finished:
    print('\nNo finished members: nothing to fit yet. Run the sweep (without --fit_only).')
    return {}
  keys = {'compute_key': compute_key, 'params_key': params_key}
  snapshot = _snapshot(workdir, finished)
  rows = records.load_sweep(snapshot)
  final = records.final_records(rows)
  print(f'\nFits on {len(finished)} finished members (C: {compute_key}, N: {params_key}, '
        f'D: tokens_seen, L: {records.EVAL_KEY}):')
  fits: dict[str, Any] = {}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    for name, stage in _STAGES:
      try:
        fits[name] = stage(rows, final, keys, n_bootstrap)
      except ValueError as e:
        print(f'No {name} fit: {e}')
    if 'holdout' in fits:
      fits['holdout']['check'] = holdout_check(fits['holdout']['result'],
                                               fits.get('isoflop', {}).get('result'))
      _print_holdout_check(fits['holdout']['check'])
    exponents = exponent_check(fits)
    if exponents is not None:
      _print_exponents(fits, exponents)
    allocation = _allocation(fits, float(records.column(final, compute_key).max()))
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # make_plots logs its own summary of the fits above
    try:
      paths = plots.make_plots(snapshot, os.path.join(workdir, PLOTS_DIR),
                               n_bootstrap=n_bootstrap, **keys)
      print('Figures: ' + ', '.join(paths))
    except ValueError as e:
      print(f'No figures: {e}')
    finally:
      logging.set_verbosity(verbosity)
  for message in dict.fromkeys(str(w.message) for w in caught):
    print(f'  note: {message}')
  summary = {name: {k: v for k, v in fit.items() if k not in ('law', 'result')}
             for name, fit in fits.items()}
  summary.update(members=list(finished), allocation=allocation, exponent_check=exponents, **keys)
  path = run_dir.write_atomic(os.path.join(workdir, FIT_DIR, FIT_FILE),
                              json.dumps(summary, indent=1, default=float))
  print(f'Numbers in {path}.')
  return summary
