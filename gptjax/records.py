"""Reading run records back: each workdir's `metrics.jsonl` and `config.json`, one sweep as a table.

A table is a list of dicts (one row per record) so plots and fits need nothing beyond the standard
library and numpy; `column` turns one field into a float array.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from gptjax.metrics import METRICS_FILE  # the writer's file name: one definition

CONFIG_FILE = 'config.json'
EVAL_KEY = 'eval_loss'
_NON_FINITE = {'nan': math.nan, 'inf': math.inf, '-inf': -math.inf, 'infinity': math.inf,
               '-infinity': -math.inf}


def _number(value: Any) -> Any:
  """The metrics writer stores NaN/inf as strings (JSON has no literal for them); undo that."""
  if isinstance(value, str) and value.lower() in _NON_FINITE:
    return _NON_FINITE[value.lower()]
  return value


def load_run(workdir: str) -> list[dict[str, Any]]:
  """Every record of one run, in file order.

  A line that does not parse (the half-written last line of a crashed run, or a line a restart
  appended to it) is skipped with a warning rather than failing the whole sweep.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist; is {workdir!r} a run workdir?')
  records = []
  with open(path) as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        record = None
      if not isinstance(record, dict):
        warnings.warn(f'{path}:{line_number}: skipping a malformed record ({line[:60]!r}...).')
        continue
      records.append({key: _number(value) for key, value in record.items()})
  return records


def load_config(workdir: str) -> dict[str, Any]:
  """The run's `config.json` as nested dicts, or {} if the run wrote none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def eval_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Records carrying an eval loss, sorted by step; a step logged twice keeps its later record."""
  by_step: dict[Any, dict[str, Any]] = {}
  for record in records:
    if EVAL_KEY in record:
      by_step[record.get('step')] = dict(record)
  return sorted(by_step.values(), key=lambda r: (r.get('step') is None, r.get('step') or 0))


def run_dirs(sweep_dir: str) -> list[str]:
  """Sub-directories of `sweep_dir` holding a metrics file, sorted by name."""
  if not os.path.isdir(sweep_dir):
    raise FileNotFoundError(f'sweep_dir={sweep_dir!r} is not a directory.')
  names = sorted(os.listdir(sweep_dir))
  return [os.path.join(sweep_dir, n) for n in names
          if os.path.exists(os.path.join(sweep_dir, n, METRICS_FILE))]


def load_sweep(sweep_dir: str) -> list[dict[str, Any]]:
  """One row per eval record of every run under `sweep_dir`; 'run' holds the run's directory."""
  rows = []
  for workdir in run_dirs(sweep_dir):
    name = os.path.basename(workdir)
    rows += [{'run': name, **record} for record in eval_records(load_run(workdir))]
  if not rows:
    raise ValueError(f'No eval records under {sweep_dir!r}: expected <run>/{METRICS_FILE} files '
                     f'with {EVAL_KEY!r} lines; run the sweep (or let it reach its first eval).')
  return rows


def final_records(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The last eval (highest step) of each run, in first-seen run order."""
  last: dict[str, dict[str, Any]] = {}
  for row in rows:
    run = row['run']
    if run not in last or row.get('step', 0) >= last[run].get('step', 0):
      last[run] = dict(row)
  return list(last.values())


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
                     f'{missing[0]}, which has {have}); log it in metrics.jsonl or pick another '
                     'key.')
  return np.array([float(row[key]) for row in rows], dtype=np.float64)
