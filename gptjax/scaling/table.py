"""A table of (N, D or C, L) points for a scaling-law fit: read from a CSV file, checked, selected.

The table may come from anywhere: a sweep exported by hand, or points read off a paper's figure.
Every way a table can be unusable is a `ValueError` naming the line and column to fix, because
a fit run on a silently mangled table looks just as confident as a good one.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Sequence

import numpy as np

MIN_POINTS = 6  # L(N, D) has 5 parameters


@dataclasses.dataclass(frozen=True)
class Table:
  """Points as [P] float64 vectors; `line` is each point's line in the file (the header is 1).

  `tokens_from_compute` is True when D was derived as C / (6 N) from a compute column.
  """

  params: np.ndarray
  tokens: np.ndarray
  loss: np.ndarray
  line: np.ndarray
  tokens_from_compute: bool = False

  def __len__(self) -> int:
    return len(self.loss)

  def subset(self, keep: np.ndarray) -> Table:
    return dataclasses.replace(self, params=self.params[keep], tokens=self.tokens[keep],
                               loss=self.loss[keep], line=self.line[keep])


def _rows(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
  """The header's column names and (line, cells) of each data row; blank lines and lines that
  start with '#' (a note on where the points come from, say) are skipped."""
  if not os.path.isfile(path):
    raise ValueError(f'{path}: no such file; name a CSV table with a header line.')
  try:
    with open(path, newline='', encoding='utf-8') as f:
      text_lines = f.read().splitlines()
  except UnicodeDecodeError as error:
    raise ValueError(f'{path} is not UTF-8 text ({error.reason} at byte {error.start}); name a '
                     'CSV table with a header line.') from None
  numbered = [(i, text) for i, text in enumerate(text_lines, start=1)
              if text.strip() and not text.lstrip().startswith('#')]
  if not numbered:
    raise ValueError(f'{path} has no header line; the first line names the columns, e.g. '
                     'params,tokens,loss.')
  parsed = list(csv.reader(text for _, text in numbered))
  header = [name.strip() for name in parsed[0]]
  return header, [(line, cells) for (line, _), cells in zip(numbered[1:], parsed[1:])]


def _number(path: str, line: int, name: str, cell: str) -> float:
  if not cell.strip():
    raise ValueError(f'{path} line {line}, column {name!r} is empty.')
  try:
    value = float(cell)
  except ValueError:
    raise ValueError(f'{path} line {line}, column {name!r}: {cell.strip()!r} is not a number.') \
        from None
  if not (math.isfinite(value) and value > 0):
    raise ValueError(f'{path} line {line}, column {name!r}: {cell.strip()} is not a positive '
                     'finite number; fix the value or delete the line.')
  return value


def read_csv(path: str, *, params_column: str = 'params', tokens_column: str = 'tokens',
             loss_column: str = 'loss', compute_column: str = '') -> Table:
  """The table in `path`: a header naming the columns, then one point per line.

  With `compute_column`, D = C / (6 N) (the C = 6 N D of the fits' compute-optimal allocation)
  and `tokens_column` is not read. Other columns are ignored.
  """
  header, rows = _rows(path)
  wanted = [params_column, compute_column or tokens_column, loss_column]
  twice = sorted({name for name in header if header.count(name) > 1 and name in wanted})
  if twice:
    raise ValueError(f'{path} names the column {twice[0]!r} {header.count(twice[0])} times; '
                     'rename the copies so each column the fit reads has one name.')
  missing = [name for name in wanted if name not in header]
  if missing:
    hint = '' if compute_column else ' (or pass --compute_column to derive D = C / (6 N))'
    raise ValueError(f'{path} has no column {missing[0]!r}{hint}; its columns are {header}.')
  index = [header.index(name) for name in wanted]
  values = []
  for line, cells in rows:
    if len(cells) != len(header):
      raise ValueError(f'{path} line {line} has {len(cells)} cells, the header {len(header)}.')
    values.append([_number(path, line, name, cells[i]) for name, i in zip(wanted, index)])
  n, d_or_c, loss = np.array(values, dtype=np.float64).reshape(-1, 3).T
  tokens = d_or_c / (6 * n) if compute_column else d_or_c
  return Table(n, tokens, loss, np.array([line for line, _ in rows], dtype=np.int64),
               tokens_from_compute=bool(compute_column))


@dataclasses.dataclass(frozen=True)
class Selection:
  """The points a fit uses, and the lines left out with why."""

  table: Table
  dropped: Sequence[tuple[int, str]]  # (line, reason)


def select(table: Table, *, min_params: float | None = None, max_params: float | None = None,
           drop_highest_loss: int = 0) -> Selection:
  """Keeps points with min_params <= N <= max_params, then drops the `drop_highest_loss` points of
  highest loss among them (re-analyses of published fits drop a few outliers, often the smallest
  models' high losses, so the law is not bent to fit them). Fewer than 6 points left raises."""
  if drop_highest_loss < 0:
    raise ValueError(f'drop_highest_loss={drop_highest_loss} must be >= 0.')
  dropped = []
  in_range = np.ones(len(table), bool)
  if min_params is not None:
    in_range &= table.params >= min_params
  if max_params is not None:
    in_range &= table.params <= max_params
  for line, n in zip(table.line[~in_range], table.params[~in_range]):
    dropped.append((int(line), f'N={n:.4g} outside [{min_params or 0:.4g}, '
                                f'{max_params or math.inf:.4g}]'))
  kept = table.subset(in_range)
  if drop_highest_loss:
    highest = np.argsort(-kept.loss, kind='stable')[:drop_highest_loss]
    for i in highest:
      dropped.append((int(kept.line[i]), f'one of the {drop_highest_loss} highest losses '
                                         f'(L={kept.loss[i]:.4g})'))
    kept = kept.subset(np.setdiff1d(np.arange(len(kept)), highest))
  if len(kept) < MIN_POINTS:
    raise ValueError(f'{len(kept)} points left of {len(table)} ({len(dropped)} dropped); '
                     f'L(N, D) has 5 parameters and needs at least {MIN_POINTS}. Keep more '
                     '(min_params, max_params, drop_highest_loss) or add points.')
  return Selection(kept, sorted(dropped))
