"""Where the training data comes from, and its deterministic train/validation split.

Sources (`config.data.source`):
  'stdlib'      every .py file of this Python's standard library (~1800 files, ~31 MB on CPython
                3.11), in sorted order. site-packages/dist-packages are excluded: installed packages
                differ between machines, the standard library of one Python version does not.
  'text'        files matching `data.paths` (comma-separated globs, `~` expanded, `**` recursive).
  'arrayrecord' ArrayRecord files matching `data.paths`; each record is one UTF-8 document.
  'tokens'      pre-tokenised shards: ids, not documents, so `gptjax.data.tokens` reads them; it
                finds them with `glob_files` and checks `config.data` with `check_config`, as here.
  'hf'          Hugging Face datasets: parquet, JSONL, CSV or Arrow files matching `data.paths`, or
                a dataset named by `data.hf_name`; each row's `data.text_field` is one document
                (`gptjax/data/hf_source.py`).

Split: `data.val_paths` names the validation files explicitly (they are removed from the train
files). Otherwise a file goes to validation when a stable hash (sha256, not Python's salted `hash`)
of its path relative to the glob root falls below `data.val_fraction`, so a file keeps its split
across machines, runs and added files; ArrayRecord records are split the same way by (file, index).
Both splits are made non-empty; a single text file is cut at a line boundary instead, its tail
becoming validation. Rows of a Hugging Face source are split like records, by (file or dataset,
row), unless `data.val_paths` or a named dataset's own 'validation' split gives the validation
rows.

Undecodable bytes (`data.decode_errors`). The default is 'replace' because one stray Latin-1 byte
should not cost a whole file (4 stdlib test files are deliberately not UTF-8):
  'replace'  each bad byte becomes U+FFFD; one warning per pass says how many files had any.
  'skip'     the file (record) is dropped, with a warning naming it.
  'strict'   ValueError naming the file and the byte offset.

`data.max_corpus_bytes > 0` caps the bytes read, for quick runs: the first files (records) of each
split in sorted order, shared between the splits as (1 - val_fraction) : val_fraction.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sysconfig
from typing import Iterator

import grain
import ml_collections
import numpy as np
from absl import logging
from array_record.python import array_record_module

from gptjax.data import hf_source, split_hash

SOURCES = ('stdlib', 'text', 'arrayrecord', 'tokens', 'hf')
DECODE_ERRORS = ('replace', 'skip', 'strict')
_EXCLUDED_DIRS = frozenset({'site-packages', 'dist-packages', '__pycache__'})


@dataclasses.dataclass(frozen=True)
class FilePart:
  """A file, or its byte range [start, stop) when a single file is cut into train and validation."""

  path: str
  name: str  # relative to its root: the split key, and the name used in messages
  start: int = 0
  stop: int | None = None


@dataclasses.dataclass
class ReadStats:
  documents: int = 0
  bytes: int = 0  # raw bytes of the documents kept
  replaced: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TextSplit:
  """One split of a text source: files, ArrayRecord records or Hugging Face rows, read lazily by
  `texts`."""

  name: str  # 'train' | 'validation'
  files: tuple[FilePart, ...] = ()
  record_files: tuple[tuple[str, int], ...] = ()  # (path, number of records) of ArrayRecord files
  record_ids: np.ndarray | None = None  # indices into the concatenated records of record_files
  hf_parts: tuple[hf_source.HFPart, ...] = ()  # rows of Hugging Face tables
  max_bytes: int = 0  # 0: read everything

  @property
  def num_documents(self) -> int:
    """The documents the split holds; a stream, whose length is unknown until read, counts 1."""
    if self.hf_parts:
      return sum(1 if p.known_rows is None else p.known_rows for p in self.hf_parts)
    return len(self.files) if self.record_ids is None else len(self.record_ids)

  def texts(self, decode_errors: str, stats: ReadStats | None = None) -> Iterator[str]:
    """Yields each document's text, applying the decode policy and the byte cap."""
    stats = ReadStats() if stats is None else stats
    budget = self.max_bytes or None
    for name, raw in self._raw_documents():
      if budget is not None:
        if budget <= 0:
          break
        if len(raw) > budget:  # the last document read: cut at the cap, on a character boundary
          raw = _trim_partial_utf8(raw[:budget])
          if not raw:
            break
      text = _decode(raw, name, decode_errors, stats)
      if text is None:
        continue
      if budget is not None:
        budget = budget - len(raw) if len(raw) < budget else 0
      stats.documents += 1
      stats.bytes += len(raw)
      yield text
    if stats.replaced:
      logging.warning('%d %s documents had undecodable bytes, replaced by U+FFFD (first: %s); '
                      "set data.decode_errors='skip' or 'strict' to change that.",
                      len(stats.replaced), self.name, stats.replaced[0])

  def _raw_documents(self) -> Iterator[tuple[str, bytes]]:
    for part in self.hf_parts:
      for name, text in part.documents():
        yield name, text.encode('utf-8')
    for part in self.files:
      with open(part.path, 'rb') as f:
        f.seek(part.start)
        yield part.name, f.read(-1 if part.stop is None else part.stop - part.start)
    if self.record_ids is None or not len(self.record_ids):
      return
    source = grain.sources.ArrayRecordDataSource([path for path, _ in self.record_files])
    first_ids = np.cumsum([0] + [n for _, n in self.record_files])
    for chunk in np.array_split(self.record_ids, -(-len(self.record_ids) // 1024)):
      for i, raw in zip(chunk.tolist(), source.__getitems__(chunk.tolist())):
        file = int(np.searchsorted(first_ids, i, side='right')) - 1
        yield f'record {i - first_ids[file]} of {self.record_files[file][0]}', raw


def text_splits(d: ml_collections.ConfigDict) -> tuple[TextSplit, TextSplit]:
  """(train, validation) of a text source described by `config.data`."""
  check_config(d)
  if d.source == 'tokens':
    raise ValueError("data.source='tokens' holds token ids, not text; read it with token_splits().")
  if d.source == 'arrayrecord':
    train, val = _arrayrecord_splits(d)
  elif d.source == 'hf':
    train, val = (TextSplit(name, hf_parts=parts)
                  for name, parts in zip(('train', 'validation'), hf_source.splits(d, glob_files)))
  else:
    if d.source == 'stdlib':
      files = _stdlib_files()
      val_files = []
    else:
      files = glob_files(d.paths, 'paths')
      val_files = glob_files(d.val_paths, 'val_paths') if d.val_paths else []
    if val_files:
      val_set = {f.path for f in val_files}
      files = [f for f in files if f.path not in val_set]
      train, val = TextSplit('train', tuple(files)), TextSplit('validation', tuple(val_files))
    else:
      train, val = _split_files(files, d.val_fraction)
  if d.max_corpus_bytes > 0:
    val.max_bytes = max(1, round(d.max_corpus_bytes * d.val_fraction))
    train.max_bytes = max(1, d.max_corpus_bytes - val.max_bytes)
  for split in (train, val):
    if not split.num_documents:
      raise ValueError(f'The {split.name} split of data.source={d.source!r} has no documents; '
                       'add files (records) or change data.paths / data.val_paths.')
  return train, val


def check_config(d: ml_collections.ConfigDict):
  """Raises early, naming the field and the fix, on an unknown source, decode policy or split."""
  if d.source not in SOURCES:
    raise ValueError(f'Unknown data.source={d.source!r}; choose one of {SOURCES}.')
  if d.decode_errors not in DECODE_ERRORS:
    raise ValueError(f'data.decode_errors={d.decode_errors!r}; choose one of {DECODE_ERRORS}.')
  if d.source == 'hf' and bool(d.paths) == bool(d.hf_name):
    raise ValueError("data.source='hf' reads data.paths (local parquet, JSONL, CSV or Arrow "
                     'files) or data.hf_name (a dataset); set exactly one of them.')
  if not d.val_paths and not 0.0 < d.val_fraction < 1.0:
    raise ValueError(f'data.val_fraction={d.val_fraction} must be in (0, 1) when data.val_paths '
                     'is empty; or name the validation files in data.val_paths.')


def check_inputs(d: ml_collections.ConfigDict) -> None:
  """Raises, naming the field and the fix, when `data.paths` or `data.val_paths` match no file: a
  fresh run checks this before it locks or writes anything in its workdir."""
  if d.source == 'hf':
    hf_source.check_installed()
    if d.hf_name:
      return
  if d.source in ('text', 'arrayrecord', 'tokens', 'hf'):
    glob_files(d.paths, 'paths')
    if d.val_paths:
      glob_files(d.val_paths, 'val_paths')


def _stdlib_files() -> list[FilePart]:
  root = sysconfig.get_paths()['stdlib']
  files = []
  for directory, subdirs, names in os.walk(root):
    subdirs[:] = sorted(s for s in subdirs if s not in _EXCLUDED_DIRS)
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        files.append(FilePart(path, os.path.relpath(path, root).replace(os.sep, '/')))
  if not files:
    raise ValueError(f'No .py files under the standard library directory {root!r}; this Python '
                     "install has no sources, so use data.source='text' with data.paths.")
  return sorted(files, key=lambda f: f.name)


def glob_files(spec: str, field: str) -> list[FilePart]:
  """Files matched by comma-separated globs, in glob order then sorted; names relative to roots."""
  patterns = [p.strip() for p in spec.split(',') if p.strip()]
  if not patterns:
    raise ValueError(f'data.{field} is empty; name the input files as comma-separated globs, '
                     "e.g. data.paths='~/corpus/**/*.txt'.")
  files, seen = [], set()
  for pattern in patterns:
    expanded = os.path.expanduser(pattern)
    matches = sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
    if not matches:
      raise ValueError(f'data.{field} glob {pattern!r} (expanded to {expanded!r}) matched no '
                       'files; fix the path or the pattern (use ** to reach subdirectories).')
    root = _glob_root(expanded)
    for name, path in sorted((os.path.relpath(p, root).replace(os.sep, '/'), os.path.abspath(p))
                             for p in matches):
      if path not in seen:
        seen.add(path)
        files.append(FilePart(path, name))
  return files


def _glob_root(pattern: str) -> str:
  """The directory part of `pattern` before its first wildcard."""
  parts = pattern.split(os.sep)
  fixed = []
  for part in parts[:-1]:
    if any(c in part for c in '*?['):
      break
    fixed.append(part)
  return os.sep.join(fixed) or ('.' if not pattern.startswith(os.sep) else os.sep)


def _split_files(files: list[FilePart], val_fraction: float) -> tuple[TextSplit, TextSplit]:
  if len(files) == 1:
    return _cut_file(files[0], val_fraction)
  is_val = split_hash.validation_mask(np.array([split_hash.hash_unit(f.name) for f in files]),
                                      val_fraction)
  return (TextSplit('train', tuple(f for f, v in zip(files, is_val) if not v)),
          TextSplit('validation', tuple(f for f, v in zip(files, is_val) if v)))


def _cut_file(file: FilePart, val_fraction: float) -> tuple[TextSplit, TextSplit]:
  """Splits one file at the line boundary nearest below (1 - val_fraction) of its bytes."""
  size = os.path.getsize(file.path)
  target = int(size * (1.0 - val_fraction))
  lo = max(0, target - (1 << 20))
  with open(file.path, 'rb') as f:
    f.seek(lo)
    window = f.read(min(size, target + (1 << 20)) - lo)
  newline = window.rfind(b'\n', 0, target - lo)
  if newline < 0:
    newline = window.find(b'\n', target - lo)
  cut = lo + newline + 1 if newline >= 0 else target
  while 0 < cut < size and lo <= cut < lo + len(window) and (window[cut - lo] & 0xC0) == 0x80:
    cut -= 1  # never inside a multi-byte UTF-8 character
  if not 0 < cut < size:
    raise ValueError(f'{file.path} ({size} bytes) is the only input file and is too small to cut '
                     'into train and validation parts; add files or set data.val_paths.')
  logging.info('One input file: bytes [0, %d) of %s train, [%d, %d) validate.', cut, file.name, cut,
               size)
  val_part = FilePart(file.path, file.name + ' (validation part)', cut, size)
  return (TextSplit('train', (FilePart(file.path, file.name, 0, cut),)),
          TextSplit('validation', (val_part,)))


def _arrayrecord_splits(d: ml_collections.ConfigDict) -> tuple[TextSplit, TextSplit]:
  def counted(parts: list[FilePart]) -> tuple[tuple[str, int], ...]:
    return tuple((f.path, array_record_module.ArrayRecordReader(f.path).num_records())
                 for f in parts)

  def whole(name: str, record_files: tuple[tuple[str, int], ...]) -> TextSplit:
    return TextSplit(name, record_files=record_files,
                     record_ids=np.arange(sum(n for _, n in record_files)))

  files = glob_files(d.paths, 'paths')
  if d.val_paths:
    val_files = glob_files(d.val_paths, 'val_paths')
    val_set = {f.path for f in val_files}
    train_rf, val_rf = counted([f for f in files if f.path not in val_set]), counted(val_files)
    return whole('train', train_rf), whole('validation', val_rf)
  record_files = counted(files)
  total = sum(n for _, n in record_files)
  if total < 2:
    raise ValueError(f'data.paths={d.paths!r} holds {total} ArrayRecord record(s); a train and a '
                     'validation split need at least 2, or set data.val_paths.')
  units = np.concatenate([
      split_hash.row_units(f.name, np.arange(n)) for f, (_, n) in zip(files, record_files)])
  is_val = split_hash.validation_mask(units, d.val_fraction)
  ids = np.arange(total)
  return (TextSplit('train', record_files=record_files, record_ids=ids[~is_val]),
          TextSplit('validation', record_files=record_files, record_ids=ids[is_val]))


def source_identity(d: ml_collections.ConfigDict) -> list | None:
  """What the token cache's key adds for a source whose files can change under the same config
  (None for the others, whose key is their config alone)."""
  if d.source != 'hf':
    return None
  files = [] if d.hf_name else glob_files(d.paths, 'paths') + (
      glob_files(d.val_paths, 'val_paths') if d.val_paths else [])
  return hf_source.identity(d, files)


def _trim_partial_utf8(raw: bytes) -> bytes:
  """Drops a multi-byte character that the byte cap cut off at the end of `raw`."""
  for back in range(1, min(4, len(raw)) + 1):
    lead = raw[-back]
    if lead & 0xC0 != 0x80:  # not a continuation byte: the first byte of the last character
      length = (2 if lead & 0xE0 == 0xC0 else 3 if lead & 0xF0 == 0xE0 else
                4 if lead & 0xF8 == 0xF0 else 1)
      return raw[:-back] if length > back else raw
  return raw


def _decode(raw: bytes, name: str, policy: str, stats: ReadStats) -> str | None:
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    if policy == 'strict':
      raise ValueError(f'{name} is not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}); '
                       "set data.decode_errors='replace' (U+FFFD) or 'skip' (drop the file), or "
                       're-encode the file as UTF-8.') from None
    if policy == 'skip':
      logging.warning('Skipping %s: not valid UTF-8 (offset %d).', name, e.start)
      stats.skipped.append(name)
      return None
    stats.replaced.append(name)
    return raw.decode('utf-8', errors='replace')
