"""Chinchilla approach 3 on any table of (N, D or C, L) points, from the command line.

  python -m gptjax.scaling fit --csv=points.csv [--compute=5.76e23,1e25] [--json=fit.json]

Fits L(N, D) = E + A/N^alpha + B/D^beta exactly as `laws.fit_chinchilla` fits a sweep (Huber
loss on log L, quasi-Newton from the paper's grid) to the points of a CSV table: a sweep exported
by hand, or points read off a paper. Prints the constants with bootstrap intervals, the
compute-optimal exponents a = beta/(alpha+beta) and b = alpha/(alpha+beta), and at each
`--compute` budget the compute-optimal N, D, D/N and loss. `--json` writes the same numbers, in a
file that `python -m gptjax.cost --fit=FILE` also reads. docs/scaling.md has an example.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
from absl import flags

from gptjax.cost.chinchilla import CHINCHILLA_PARAMS, ChinchillaFit
from gptjax.runs import cli
from gptjax.scaling import huber, laws, table as scaling_table

GRID_SIZE = len(huber.GRID_Gx5)
_ALLOCATION = ('params', 'tokens', 'tokens_per_param', 'loss')


def _allocation(fit: ChinchillaFit, budgets: Sequence[float],
                level: float) -> list[dict[str, Any]]:
  """Per budget C: N_opt, D_opt, D/N and the predicted loss there, with `level` intervals over the
  bootstrap refits (each refit's own optimum; one whose exponents leave no optimum is skipped)."""
  rows = []
  refits = fit.refits()
  for c in budgets:
    n, d = (float(x) for x in fit.compute_optimal(c))
    row = dict(compute=c, params=n, tokens=d, tokens_per_param=d / n,
               loss=float(fit.predict(n, d)))
    if len(fit.bootstrap):
      with np.errstate(all='ignore'):
        n_S, d_S = refits.compute_optimal(c)
        samples_SxQ = np.stack([n_S, d_S, d_S / n_S, refits.predict(n_S, d_S)], axis=1)
      finite = np.all(np.isfinite(samples_SxQ), axis=1)
      bounds = laws.central_interval(samples_SxQ[finite], level)
      row['intervals'] = {name: [float(lo), float(hi)] for name, (lo, hi) in zip(_ALLOCATION,
                                                                                   bounds)}
      row['refits_without_optimum'] = int(np.sum(~finite))
    rows.append(row)
  return rows


def fit_table(csv_path: str, *, params_column: str = 'params', tokens_column: str = 'tokens',
              loss_column: str = 'loss', compute_column: str = '', min_params: float | None = None,
              max_params: float | None = None, drop_highest_loss: int = 0, delta: float = 1e-3,
              starts: int | None = 16, n_bootstrap: int = 1000, level: float = 0.95,
              seed: int = 0, optimizer: str = 'BFGS',
              compute: Sequence[float] = ()) -> dict[str, Any]:
  """Reads, selects and fits the table; returns everything the command prints, JSON-ready."""
  if not 0 < level < 1:
    raise ValueError(f'level={level} must lie strictly between 0 and 1, e.g. 0.95.')
  if not delta > 0:
    raise ValueError(f'delta={delta} must be > 0; the paper uses 1e-3.')
  if n_bootstrap < 0:
    raise ValueError(f'bootstrap={n_bootstrap} must be >= 0 (0: no intervals).')
  for c in compute:
    if not (np.isfinite(c) and c > 0):
      raise ValueError(f'compute={c} must be a positive FLOP count, e.g. 5.76e23.')
  table = scaling_table.read_csv(csv_path, params_column=params_column,
                                 tokens_column=tokens_column, loss_column=loss_column,
                                 compute_column=compute_column)
  selection = scaling_table.select(table, min_params=min_params, max_params=max_params,
                                   drop_highest_loss=drop_highest_loss)
  points = selection.table
  d_column = {'compute': compute_column} if compute_column else {'tokens': tokens_column}
  fit = laws.fit_chinchilla(points.params, points.tokens, points.loss, delta=delta,
                            n_starts=starts, n_bootstrap=n_bootstrap, level=level, seed=seed,
                            method=optimizer)
  return dict(
      csv=csv_path, points=len(points), dropped=[dict(line=line, reason=reason)
                                                 for line, reason in selection.dropped],
      columns=dict(params=params_column, **d_column, loss=loss_column),
      delta=delta, starts=starts or GRID_SIZE, optimizer=optimizer, bootstrap=n_bootstrap,
      level=level, seed=seed, objective=fit.objective,
      **{name: float(getattr(fit, name)) for name in CHINCHILLA_PARAMS},
      n_exponent=fit.n_exponent, d_exponent=fit.d_exponent,
      intervals={name: list(bounds) for name, bounds in fit.intervals.items()},
      compute_optimal=_allocation(fit, compute, level))


def _with_interval(value: float, intervals: dict[str, list[float]], name: str,
                   width: int = 0) -> str:
  lo_hi = intervals.get(name)
  return f'{value:<{width}.4g}' + (f' [{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]' if lo_hi else '')


def report_lines(report: dict[str, Any]) -> list[str]:
  """The fit as the command prints it."""
  columns = report['columns']
  d_from = (f"D = C / (6 N) from column {columns['compute']!r}" if 'compute' in columns
            else f"D: {columns['tokens']}")
  lines = [f"{report['csv']}: {report['points']} points fitted (N: {columns['params']}, {d_from}, "
           f"L: {columns['loss']}); {len(report['dropped'])} dropped"
           + (':' if report['dropped'] else '.')]
  lines += [f"  line {row['line']}: {row['reason']}" for row in report['dropped']]
  starts = report['starts']
  where = ('all' if starts >= GRID_SIZE else f'the {starts} best') + f' of {GRID_SIZE} grid points'
  uncertainty = (f"; {100 * report['level']:g}% intervals from {report['bootstrap']} bootstrap "
                 'refits' if report['bootstrap'] else '')
  lines.append(f"L(N, D) = E + A/N^alpha + B/D^beta: Huber (delta {report['delta']:g}) on log L, "
               f"{report['optimizer']} from {where}{uncertainty}.")
  labels = dict(zip(CHINCHILLA_PARAMS, CHINCHILLA_PARAMS),
                n_exponent='a = beta/(alpha+beta)', d_exponent='b = alpha/(alpha+beta)')
  meaning = dict(n_exponent='  N_opt ∝ C^a', d_exponent='  D_opt ∝ C^b')
  for name, label in labels.items():
    value = _with_interval(report[name], report['intervals'], name, width=10)
    lines.append(f'  {label:<23s} {value}{meaning.get(name, "")}')
  if report['compute_optimal']:
    lines.append('Compute-optimal allocation, C = 6 N D:')
  for row in report['compute_optimal']:
    intervals = row.get('intervals', {})
    parts = [f'{label}={_with_interval(row[name], intervals, name)}'
             for label, name in zip(('N', 'D', 'D/N', 'L'), _ALLOCATION)]
    skipped = row.get('refits_without_optimum', 0)
    note = f'  ({skipped} refits without an optimum left out)' if skipped else ''
    lines.append(f"  C={row['compute']:.3g}: " + '  '.join(parts) + note)
  return [line.rstrip() for line in lines]


def starts_from_flag(spec: str) -> int | None:
  if spec == 'all':
    return None
  if not spec.isdigit() or int(spec) < 1:
    raise ValueError(f"--starts={spec}: pass a count of grid points >= 1, or 'all' for the "
                     f'paper\'s {GRID_SIZE}.')
  return int(spec)


def budgets_from_flag(specs: Sequence[str]) -> list[float]:
  try:
    return [float(spec) for spec in specs]
  except ValueError:
    raise ValueError(f'--compute={",".join(specs)}: pass FLOP counts separated by commas, '
                     'e.g. 5.76e23,1e25.') from None


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f'Unexpected arguments {list(argv[1:])}: python -m gptjax.scaling fit '
                     '--csv=FILE takes flags only.')
  f = flags.FLAGS
  report = fit_table(
      f.csv, params_column=f.params_column, tokens_column=f.tokens_column,
      loss_column=f.loss_column, compute_column=f.compute_column, min_params=f.min_params,
      max_params=f.max_params, drop_highest_loss=f.drop_highest_loss, delta=f.delta,
      starts=starts_from_flag(f.starts), n_bootstrap=f.bootstrap, level=f.level, seed=f.seed,
      optimizer=f.optimizer, compute=budgets_from_flag(f.compute))
  print('\n'.join(report_lines(report)))
  if f.json:
    with open(f.json, 'w') as out:
      json.dump(report, out, indent=1)
    print(f'Numbers in {f.json}.')


def define_flags() -> None:
  """Flags exist only when run as a script: importing the module must not claim global names."""
  flags.DEFINE_string('csv', None, 'The table: a header line naming the columns, then one point '
                      "per line; lines starting with '#' are skipped.", required=True)
  flags.DEFINE_string('params_column', 'params', 'Column of N, the parameter count.')
  flags.DEFINE_string('tokens_column', 'tokens', 'Column of D, the training tokens.')
  flags.DEFINE_string('loss_column', 'loss', 'Column of L, the final loss.')
  flags.DEFINE_string('compute_column', '', 'Column of C, the training FLOPs, if the table has '
                      'no tokens column: D = C / (6 N).')
  flags.DEFINE_float('min_params', None, 'Fit only points with N >= this.')
  flags.DEFINE_float('max_params', None, 'Fit only points with N <= this.')
  flags.DEFINE_integer('drop_highest_loss', 0, 'Leave out this many points of highest loss.')
  flags.DEFINE_float('delta', 1e-3, "Huber's delta on log L; the paper's is 1e-3.")
  flags.DEFINE_string('starts', '16', "Grid points the optimiser starts from, the best by "
                      f"objective; 'all' runs from the paper's full grid of {GRID_SIZE}.")
  flags.DEFINE_integer('bootstrap', 1000, 'Bootstrap refits for the intervals; 0 for none.')
  flags.DEFINE_float('level', 0.95, 'Level of the central bootstrap intervals.')
  flags.DEFINE_integer('seed', 0, 'Seed of the bootstrap resamples.')
  flags.DEFINE_list('compute', [], 'FLOP budgets at which to print the compute-optimal N, D, D/N '
                    'and loss, e.g. 5.76e23,1e25.')
  flags.DEFINE_enum('optimizer', 'BFGS', list(laws.OPTIMIZERS), 'Quasi-Newton method of the '
                    'point estimate (the bootstrap refits run BFGS).')
  flags.DEFINE_string('json', '', 'Also write the numbers to this JSON file.')
