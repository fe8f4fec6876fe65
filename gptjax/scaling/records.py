"""A sweep as a table: one row per eval record of every run, read through `gptjax.runs.run_dir`.

A table is a list of dicts (one row per record) so plots and fits need nothing beyond the standard
library and numpy; `column` turns one field into a float array.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from gptjax.runs import run_dir
from gptjax.runs.run_dir import EVAL_KEY


_BUDGET_PREFIX = re.compile(r'^c(\d+(?:\.\d+)?e-?\d+)_')


def budget_tag(budget: float) -> str:
  """'1e11', '3e11', '2.15e11': short, and distinct for budgets that differ in 3 digits. An IsoFLOP
  member's name starts with `c<tag>_`, so its records say which budget it was designed for."""
  mantissa, exponent = f'{budget:.2e}'.split('e')
  return f'{float(mantissa):g}e{int(exponent)}'


def design_budget(run: str) -> float | None:
  """The compute budget an IsoFLOP member's name carries (`c6e10_d24l2` -> 6e10), else None."""
  match = _BUDGET_PREFIX.match(run)
  return float(match.group(1)) if match else None


def eval_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Records carrying an eval loss, sorted by step; a step logged twice keeps its later record."""
  by_step: dict[Any, dict[str, Any]] = {}
  for record in records:
    if EVAL_KEY in record:
      by_step[record.get('step')] = dict(record)
  return sorted(by_step.values(), key=lambda r: (r.get('step') is None, r.get('step') or 0))


def run_dirs(sweep_dir: str) -> list[str]:
  """Sub-directories of `sweep_dir` holding a metrics file, sorted by name (`gs://` too)."""
  if not run_dir.isdir(sweep_dir):
    raise FileNotFoundError(f'sweep_dir={sweep_dir!r} is not a directory.')
  names = sorted(run_dir.listdir(sweep_dir))
  return [os.path.join(sweep_dir, n) for n in names
          if run_dir.exists(os.path.join(sweep_dir, n, run_dir.METRICS_FILE))]


def load_sweep(sweep_dir: str) -> list[dict[str, Any]]:
  """One row per eval record of every run under `sweep_dir`; 'run' holds the run's directory and
  'budget' the budget its name was designed for (`design_budget`), where it names one."""
  rows = []
  for workdir in run_dirs(sweep_dir):
    name = os.path.basename(workdir)
    budget = design_budget(name)
    tag = {} if budget is None else {'budget': budget}
    rows += [{'run': name, **tag, **record}
             for record in eval_records(run_dir.read_metrics(workdir))]
  if not rows:
    raise ValueError(f'No eval records under {sweep_dir!r}: expected <run>/{run_dir.METRICS_FILE} '
                     f'files with {EVAL_KEY!r} lines; run the sweep (or let it reach its first '
                     'eval).')
  return rows


def final_records(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The last eval (highest step) of each run, in first-seen run order."""
  last: dict[str, dict[str, Any]] = {}
  for row in rows:
    run = row['run']
    if run not in last or row.get('step', 0) >= last[run].get('step', 0):
      last[run] = dict(row)
  return list(last.values())


def design_budgets(rows: Sequence[Mapping[str, Any]] | np.ndarray) -> np.ndarray | None:
  """Every row's design budget, or None unless every row has one: the budgets the fits group runs
  by, whatever accounting measures their compute."""
  names = rows.dtype.names if isinstance(rows, np.ndarray) else None
  if (names is not None and 'budget' not in names) or (
      names is None and not all('budget' in row for row in rows)):
    return None
  return column(rows, 'budget')


def column(rows: Sequence[Mapping[str, Any]] | np.ndarray, key: str) -> np.ndarray:
  """One field of every row as float64; a missing field raises, naming the fields there are."""
  if isinstance(rows, np.ndarray) and rows.dtype.names is not None:  # a structured array
    if key not in rows.dtype.names:
      raise ValueError(f'Records have no field {key!r}; they have {list(rows.dtype.names)}.')
    return np.asarray(rows[key], dtype=np.float64)
  missing = [i for i, row in enumerate(rows) if key not in row]
  if missing:
    have = sorted(rows[missing[0]])
    raise ValueError(f'{len(missing)} of {len(rows)} records have no field {key!r} (first: row '
                     f'{missing[0]}, which has {have}); log it in {run_dir.METRICS_FILE} or pick '
                     'another key.')
  return np.array([float(row[key]) for row in rows], dtype=np.float64)
