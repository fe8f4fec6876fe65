"""Hugging Face datasets as a text source (`data.source='hf'`), through the `datasets` library.

Two ways to name the data:
- local files: `data.paths` globs of `.parquet`, `.jsonl`/`.json`, `.csv` or `.arrow` files (one
  format per source), each loaded on its own so an error can name its file and row;
- a dataset: `data.hf_name` (a hub name such as 'HuggingFaceFW/fineweb-edu', or a local dataset
  directory), with `data.hf_config` and `data.hf_split`; `data.hf_streaming` reads it as a stream,
  for corpora larger than the disk cache should hold.
Each row's `data.text_field` (default 'text') is one document. A missing field, or a row whose
value is not a string, is an error naming the field, the file and the row.

Validation: `data.val_paths` files, or a named dataset's own 'validation' split when it has one;
otherwise a row goes to validation when a stable hash of (file or dataset, row index) falls below
`data.val_fraction`, as ArrayRecord records are split. The source's identity (each file's size and
modification time, or the dataset builder's hash of its files and config) is part of the token
cache's key, so a changed file or dataset revision is tokenised again, never read stale.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any, Callable, Iterator

import ml_collections
import numpy as np

from gptjax.data import split_hash

FORMATS = {'.parquet': 'parquet', '.jsonl': 'json', '.json': 'json', '.csv': 'csv',
           '.arrow': 'arrow'}
_BATCH = 1000  # rows read per Arrow batch


def check_installed() -> None:
  if importlib.util.find_spec('datasets') is None:
    raise ValueError("data.source='hf' reads through the datasets library, which is not "
                     "installed; pip install -e '.[data]'.")


def _builder(paths: list[str], field: str) -> str:
  kinds = {FORMATS.get(os.path.splitext(p)[1].lower()) for p in paths}
  if None in kinds:
    bad = next(p for p in paths if os.path.splitext(p)[1].lower() not in FORMATS)
    raise ValueError(f'data.{field} matches {bad}, which is none of {sorted(FORMATS)}; '
                     'narrow the glob to the data files.')
  if len(kinds) > 1:
    raise ValueError(f'data.{field} mixes formats ({sorted(kinds)}); give files of one format.')
  return kinds.pop()


@dataclasses.dataclass(frozen=True)
class Table:
  """One loaded file or dataset split: its name in messages, its rows, and the key its rows'
  validation hash uses (a file's name relative to its glob root, so moving the corpus or reading
  it on another machine keeps every row's split)."""

  name: str
  rows: Any  # a datasets.Dataset, or an IterableDataset when streaming
  text_field: str
  key: str

  def check_field(self) -> None:
    columns = self.rows.column_names
    if columns is not None and self.text_field not in columns:
      raise ValueError(f'{self.name} has no column data.text_field={self.text_field!r} '
                       f'(columns: {columns}); set data.text_field to the text column.')

  def texts(self, row_ids: np.ndarray | None) -> Iterator[tuple[str, str]]:
    """(name, text) of the rows `row_ids` (every row when None), in order."""
    rows = self.rows if row_ids is None else self.rows.select(row_ids)
    ids = iter(range(10**18)) if row_ids is None else iter(row_ids.tolist())
    for batch in rows.select_columns([self.text_field]).iter(batch_size=_BATCH):
      for value in batch[self.text_field]:
        row = next(ids)
        if not isinstance(value, str):
          raise ValueError(f'{self.name} row {row}: data.text_field={self.text_field!r} holds '
                           f'{type(value).__name__}, not a string; point data.text_field at a '
                           'text column or clean the row.')
        yield f'{self.name} row {row}', value


def load_tables(d: ml_collections.ConfigDict, files: list[Any], field: str) -> list[Table]:
  """The local files `files` (corpus.FilePart) as tables, one per file."""
  check_installed()
  import datasets
  builder = _builder([f.path for f in files], field)
  tables = []
  for f in files:
    if os.path.getsize(f.path) == 0:
      raise ValueError(f'{f.path} is empty; remove it from data.{field} or fill it.')
    try:
      rows = datasets.load_dataset(builder, data_files=[f.path], split='train')
    except Exception as e:  # the library's own parse errors name no row; keep its first line
      first = (str(e).splitlines() or [type(e).__name__])[0]
      raise ValueError(f'{f.path} cannot be read as {builder}: {first}') from None
    table = Table(f.path, rows, d.text_field, key=f.name)
    table.check_field()
    tables.append(table)
  return tables


def load_named(d: ml_collections.ConfigDict, split: str) -> Table:
  check_installed()
  import datasets
  rows = datasets.load_dataset(d.hf_name, d.hf_config or None, split=split,
                               streaming=d.hf_streaming)
  name = f'{d.hf_name}[{split}]'
  table = Table(name, rows, d.text_field, key=name)
  table.check_field()
  return table


def named_splits(d: ml_collections.ConfigDict) -> list[str]:
  check_installed()
  import datasets
  return list(datasets.get_dataset_split_names(d.hf_name, d.hf_config or None))


def identity(d: ml_collections.ConfigDict, files: list[Any]) -> list:
  """What the token cache's key adds for this source: each local file's size and modification
  time, or the dataset builder's hash (it changes with the dataset's files and revision)."""
  if d.hf_name:
    check_installed()
    import datasets
    return ['builder', datasets.load_dataset_builder(d.hf_name, d.hf_config or None).hash,
            d.hf_name, d.hf_config, d.hf_split, d.text_field]
  return ['files', d.text_field, *[(f.path, os.path.getsize(f.path), os.stat(f.path).st_mtime_ns)
                                   for f in files]]


@dataclasses.dataclass(frozen=True)
class HFPart:
  """Rows of one table in a split: `row_ids`, or every row; or, for a stream, whose length is
  unknown until read, the rows on `side` of the hash split at `val_fraction`."""

  table: Table
  row_ids: np.ndarray | None = None
  side: str = ''  # 'train' | 'validation' for a stream split by hash; '' otherwise
  val_fraction: float = 0.0

  @property
  def known_rows(self) -> int | None:
    """The rows this part yields; None for a stream, whose length is unknown until read."""
    if self.row_ids is not None:
      return len(self.row_ids)
    return None if self.side or not hasattr(self.table.rows, '__len__') else len(self.table.rows)

  def documents(self) -> Iterator[tuple[str, str]]:
    if not self.side:
      yield from self.table.texts(self.row_ids)
      return
    for row, (name, text) in enumerate(self.table.texts(None)):
      if (split_hash.row_units(self.table.key, [row])[0] < self.val_fraction) == (
          self.side == 'validation'):
        yield name, text


Parts = tuple[HFPart, ...]


def splits(d: ml_collections.ConfigDict, glob_files: Callable[[str, str], list]
           ) -> tuple[Parts, Parts]:
  """(train, validation) parts of the source `d` describes; `glob_files` finds `data.paths`."""
  whole = lambda tables: tuple(HFPart(t) for t in tables)
  if d.hf_name:
    train = load_named(d, d.hf_split)
    if d.hf_split != 'validation' and 'validation' in named_splits(d):
      return whole([train]), whole([load_named(d, 'validation')])
    if d.hf_streaming:
      return tuple((HFPart(train, side=side, val_fraction=d.val_fraction),)
                   for side in ('train', 'validation'))
    tables = [train]
  else:
    files = glob_files(d.paths, 'paths')
    if d.val_paths:
      val_files = glob_files(d.val_paths, 'val_paths')
      val_set = {f.path for f in val_files}
      return (whole(load_tables(d, [f for f in files if f.path not in val_set], 'paths')),
              whole(load_tables(d, val_files, 'val_paths')))
    tables = load_tables(d, files, 'paths')
  counts = [len(t.rows) for t in tables]
  if sum(counts) < 2:
    raise ValueError(f'The Hugging Face source holds {sum(counts)} row(s); a train and a '
                     'validation split need at least 2, or set data.val_paths.')
  units = np.concatenate([split_hash.row_units(t.key, np.arange(n))
                          for t, n in zip(tables, counts)])
  is_val = np.split(split_hash.validation_mask(units, d.val_fraction), np.cumsum(counts)[:-1])
  ids = [np.arange(n) for n in counts]
  return (tuple(HFPart(t, i[~v]) for t, i, v in zip(tables, ids, is_val)),
          tuple(HFPart(t, i[v]) for t, i, v in zip(tables, ids, is_val)))
