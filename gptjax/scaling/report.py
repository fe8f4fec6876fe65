"""Fits a finished sweep's scaling laws, prints them, and writes `fit/fit.json` and the figures.

`launch.sweep` calls `fit_and_report` after its members finish (or alone with `--fit_only`); a
notebook calls it on any directory of runs. The fits run on a snapshot of the finished members'
metrics, so the figures show exactly what was fitted. They are measured in one accounting (by
default FLOPs spent and total N, `gptjax.scaling.accounting`), every derived number solves that
accounting's C(N, D), and the exponents are refitted in the other accounting and printed beside.
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
from gptjax.scaling import (accounting, envelope as scaling_envelope, exponents, holdout,
                            isoflop as scaling_isoflop, laws, plots, records, replicas)

FIT_DIR, PLOTS_DIR = 'fit', 'plots'
FIT_FILE = 'fit.json'
_SCALE_UPS = (1, 10, 100)
E_SPAN = 10.0  # E counts as identified when its interval's ends are less than this factor apart


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
  del rows, n_bootstrap
  compute, loss = replicas.best_per_budget(final, keys['compute_key'])
  law = laws.fit_power_law_with_floor(compute, loss)
  print(f'L(C) on the frontier of finished runs (the best final eval of each of {len(loss)} '
        f'budgets): L = {law.E:.4f} + {law.A:.4g}·C^-{law.alpha:.4f}')
  if law.E < 1e-6 * loss.min():
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
  print(f'D_opt solves C = (FLOPs per token of N) x D, read from the records ({keys["compute_key"]}'
        ' / tokens_seen of each size).')
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
  cells = replicas.replica_cells(c, n, l, design=records.design_budgets(final))
  result = scaling_envelope.envelope_optima(cells, replicas.seed_noise(cells, l),
                                            n_bootstrap=n_bootstrap)
  lo, hi = result.n_exponent_ci
  read = np.isfinite(result.n_opt)
  print(f'Envelope of finished runs (Chinchilla approach 1; each size\'s final losses '
        f'interpolated in log C between its budgets, read at {read.sum()} computes from '
        f'C={result.compute[read].min():.3g} to {result.compute[read].max():.3g}): '
        f'N_opt ∝ C^{result.n_exponent:.3f} [{lo:.3f}, {hi:.3f}]')
  return {'result': result, 'n_exponent': result.n_exponent, 'n_exponent_ci': [lo, hi]}


def e_identified(law: laws.ChinchillaFit) -> bool | None:
  """Whether the floor E is pinned: its interval spans less than E_SPAN (a ratio of its ends);
  None without bootstrap intervals."""
  if 'E' not in law.intervals:
    return None
  lo, hi = law.intervals['E']
  return bool(lo > 0 and hi / lo < E_SPAN)


def _fit_chinchilla(rows, final, keys, n_bootstrap) -> dict[str, Any]:
  del rows
  law, cells = replicas.fit_seed_means(final, n_bootstrap=n_bootstrap, **keys)
  print(f'L(N, D) (approach 3, on {len(cells)} seed means of {len(final)} finished runs): '
        f'L = {law.E:.4f} + {law.A:.4g}/N^{law.alpha:.4f} + {law.B:.4g}/D^{law.beta:.4f}')
  if law.intervals:
    print('  95% bootstrap: ' + ', '.join(f'{name} {_interval(law, name)}'
                                         for name in CHINCHILLA_PARAMS))
  identified = e_identified(law)
  if identified is False:
    lo, hi = law.intervals['E']
    span = np.log10(hi / lo) if lo > 0 else float('inf')
    print(f'  E is not identified: its interval spans {span:.1f} orders of magnitude, and A, alpha '
          'and B, beta trade off against it. The exponents below are less certain than a fit '
          'with a pinned E; more distinct (N, D) points would pin it.')
  relation = accounting.relation_of(final, keys['compute_key'], keys['params_key'])
  a, lo, hi = accounting.exponent_interval(law, cells.compute.min(), cells.compute.max(),
                                           relation)
  print(f'  N_opt ∝ C^{a:.3f} [{lo:.3f}, {hi:.3f}] over the budgets trained, solving the records\' '
        f'C(N, D) (β/(α+β) = {law.n_exponent:.3f} {_interval(law, "n_exponent")} would hold '
        'under C = 6ND)')
  return {'law': law, **{name: getattr(law, name) for name in CHINCHILLA_PARAMS},
          'n_exponent': a, 'n_exponent_ci': [lo, hi], 'n_exponent_6nd': law.n_exponent,
          'intervals': dict(law.intervals), 'e_identified': identified, 'cells': len(cells)}


def _fit_holdout(rows, final, keys, n_bootstrap) -> dict[str, Any]:
  del final
  h = holdout.holdout_extrapolation(rows, n_bootstrap=n_bootstrap, **keys)
  power_law = (f'L(C) predicted {h.power_law_prediction:.4f} '
               f'({100 * h.power_law_relative_error:+.2f}%)' if not h.power_law_missing else
               f'no L(C) prediction ({h.power_law_missing})')
  print(f'Holdout (fitted without the {len(h.run_loss)} members at C={h.budget:.3g}, then '
        f'predicted): best loss there {h.measured_best_loss:.4f}, {power_law}; L(N, D) worst '
        f'member error {100 * h.max_run_relative_error:.2f}%')
  return {'result': h, 'budget': h.budget, 'measured_best_loss': h.measured_best_loss,
          'power_law_prediction': h.power_law_prediction,
          'power_law_relative_error': h.power_law_relative_error,
          'max_run_relative_error': h.max_run_relative_error}


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


def _allocation(fits: dict[str, Any], final, keys) -> list[dict[str, float]]:
  """N_opt and D_opt at the largest budget trained and 10x, 100x it, from each law available, all
  solving the records' C(N, D)."""
  relation = accounting.relation_of(final, keys['compute_key'], keys['params_key'])
  largest = (float(fits['isoflop']['result'].budgets.max()) if 'isoflop' in fits else
             float(records.column(final, keys['compute_key']).max()))
  table = []
  print('Compute-optimal allocation (D = C / FLOPs per token of N, from the records):')
  for scale in _SCALE_UPS:
    c = largest * scale
    row, parts = {'compute': c}, []
    if 'isoflop' in fits:
      result = fits['isoflop']['result']
      n, d = float(result.predict_n_opt(c)), float(result.predict_d_opt(c))
      row.update(isoflop_n_opt=n, isoflop_d_opt=d)
      parts.append(f'approach 2: N={_count(n)} D={_count(d)} D/N={d / n:.3g}')
    if 'chinchilla' in fits:
      law = fits['chinchilla']['law']
      n, d = (float(x) for x in accounting.compute_optimal(law, c, relation))
      row.update(chinchilla_n_opt=n, chinchilla_d_opt=d, chinchilla_loss=float(law.predict(n, d)))
      parts.append(f'approach 3: N={_count(n)} D={_count(d)} D/N={d / n:.3g} '
                   f'L={row["chinchilla_loss"]:.4f}')
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


def _accountings(final, keys, found, n_bootstrap) -> dict[str, dict[str, Any]]:
  """Both named accountings' exponents (this report's own and the other one's refit), printed;
  empty when the report's keys mix accountings."""
  name = accounting.accounting_of(keys['compute_key'], keys['params_key'])
  if name is None or not found:
    return {}
  views = {other: found if other == name else exponents.accounting_view(final, other, n_bootstrap)
           for other in accounting.ACCOUNTINGS}
  exponents.print_accountings(views)
  return {other: {'description': accounting.ACCOUNTINGS[other].description,
                  **{approach: list(estimate) for approach, estimate in view.items()}}
          for other, view in views.items()}


def fit_and_report(workdir: str, finished: Sequence[str], *, compute_key: str = 'flops_full',
                   params_key: str = 'params_total', n_bootstrap: int = 100
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
  named = accounting.accounting_of(compute_key, params_key)
  description = f' = {accounting.ACCOUNTINGS[named].description}' if named else ''
  print(f'\nFits on {len(finished)} finished members (C: {compute_key}, N: {params_key}'
        f'{description}; D: tokens_seen, L: {records.EVAL_KEY}):')
  fits: dict[str, Any] = {}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    for name, stage in _STAGES:
      try:
        fits[name] = stage(rows, final, keys, n_bootstrap)
      except ValueError as e:
        print(f'No {name} fit: {e}')
    if 'holdout' in fits:
      fits['holdout']['check'] = holdout.holdout_check(fits['holdout']['result'],
                                                       fits.get('isoflop', {}).get('result'))
      _print_holdout_check(fits['holdout']['check'])
    found = exponents.estimates(fits)
    check = exponents.exponent_check(found)
    if check is not None:
      exponents.print_check(found, check)
    views = _accountings(final, keys, found, n_bootstrap)
    allocation = _allocation(fits, final, keys) if 'isoflop' in fits or 'chinchilla' in fits else []
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
  summary.update(members=list(finished), allocation=allocation, exponent_check=check,
                 accountings=views, **keys)
  path = run_dir.write_atomic(os.path.join(workdir, FIT_DIR, FIT_FILE),
                              json.dumps(summary, indent=1, default=float))
  print(f'Numbers in {path}.')
  return summary
