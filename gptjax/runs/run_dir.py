"""The files of a run directory: their names, and the one reader and writer of each.

A run directory (`--workdir`) holds
  config.json          the resolved config (`write_config` / `read_config` / `read_config_dict`)
  metrics.jsonl        one JSON record per logged step (`read_metrics`, `truncate_metrics_after`;
                       appended by `gptjax.train.metrics.MetricsWriter`)
  tensorboard/         the same scalars as TensorBoard events
  tokenizer.json       the run's tokenizer (`gptjax.data.tokenizer`)
  data/<fingerprint>/  the tokenised corpus cache (`gptjax.data.tokens`)
  checkpoints/<step>/  orbax checkpoints of the train state and data iterator
                       (`gptjax.train.checkpointing`)
  run.lock             held by the run training in it (`gptjax.runs.workdir_lock`)
Sweeps, fits and plots read runs only through this module and `gptjax.scaling.records`.

A path with a scheme (`gs://BUCKET/PATH`) is read and written through `etils.epath`, which orbax
uses for the same storage, so a sweep's records can be surveyed straight from a bucket; a plain
path is read and written with the standard library exactly as before.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from typing import Any, Callable, Sequence

import ml_collections

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'
TOKENIZER_FILE = 'tokenizer.json'
DATA_DIR = 'data'
CHECKPOINT_DIR = 'checkpoints'
UNREADABLE_DIR = 'checkpoints.unreadable'
LOCK_FILE = 'run.lock'
# The metrics.jsonl field of an evaluation's loss, and what marks a record as an evaluation's.
EVAL_KEY = 'eval_loss'

# Fields that change how a run reports or which hardware runs it, not what it trains. A difference
# anywhere else means another experiment: a workdir made with one config does not resume another.
REPORTING_AND_HARDWARE = ('train.log_every', 'train.eval_every', 'train.checkpoint_every',
                          'train.keep_checkpoints', 'train.async_checkpoints',
                          'train.tokens_per_pass', 'model.attention_impl', 'data.worker_count')
HARDWARE_SECTIONS = ('mesh.', 'distributed.')

_NON_FINITE = {'nan': math.nan, 'inf': math.inf, '-inf': -math.inf, 'infinity': math.inf,
               '-infinity': -math.inf}


def is_local(path: str) -> bool:
  """Whether `path` is a plain filesystem path rather than a URI such as gs://BUCKET/PATH."""
  return '://' not in os.fspath(path)


def _remote(path: str, operation: Callable[[Any], Any]) -> Any:
  """`operation(epath.Path(path))`; a scheme this machine has no filesystem package for is an
  OSError that names the package, not an ImportError from deep inside fsspec."""
  from etils import epath  # only for URIs: a local run never imports it
  try:
    return operation(epath.Path(path))
  except ImportError as error:
    raise OSError(f'{path}: this machine cannot reach that storage ({error}); install its '
                  'filesystem package, e.g. `pip install gcsfs` for gs://.') from None


def exists(path: str) -> bool:
  return os.path.exists(path) if is_local(path) else _remote(path, lambda p: p.exists())


def isdir(path: str) -> bool:
  return os.path.isdir(path) if is_local(path) else _remote(path, lambda p: p.is_dir())


def listdir(path: str) -> list[str]:
  if is_local(path):
    return os.listdir(path)
  return _remote(path, lambda p: [child.name for child in p.iterdir()])


def read_bytes(path: str) -> bytes:
  if is_local(path):
    with open(path, 'rb') as f:
      return f.read()
  return _remote(path, lambda p: p.read_bytes())


def read_json_lines(path: str, expected: str) -> list[tuple[int, Any]]:
  """(line number, value) of every non-blank line of a JSONL file the user gives (a task or pairs
  file); a ValueError names the file, the line and `expected`, the object each line should be.

  Lines end at '\n' (a '\r' before it is dropped) and nowhere else: `str.splitlines` would also
  split at U+0085, U+2028 and other separators that JSON strings may hold unescaped, and that text
  sampled from a model does hold.
  """
  try:
    lines = [line.removesuffix('\r') for line in read_bytes(path).decode('utf-8').split('\n')]
  except UnicodeDecodeError as error:
    raise ValueError(f'{path} is not UTF-8 text ({error.reason} at byte {error.start}); give a '
                     f'JSONL file of {expected} lines.') from None
  rows = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      rows.append((number, json.loads(line)))
    except json.JSONDecodeError as error:
      raise ValueError(f'{path}:{number}: not valid JSON ({error.msg}); each line must be one '
                       f'object like {expected}.') from None
  return rows


def write_atomic(path: str, payload: bytes | str) -> str:
  """Writes `path` so that a reader (or a crash) never sees half a file; returns `path`.

  The payload goes to a temporary file beside `path`, which is then renamed over it. The file is
  made readable by everyone (mkstemp's 0o600 would hide a shared workdir's files from its users).
  An object store's upload is all-or-nothing by itself, so a URI is written in one piece.
  """
  data = payload.encode() if isinstance(payload, str) else payload
  if not is_local(path):
    def write(target):
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(data)
    _remote(path, write)
    return path
  directory = os.path.dirname(path) or '.'
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + '.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the resolved config as JSON, the record of how a run was made."""
  write_atomic(os.path.join(workdir, CONFIG_FILE),
               config.to_json_best_effort(indent=2, sort_keys=True))


def read_config_dict(workdir: str) -> dict[str, Any]:
  """The run's config as nested dicts, or {} if the run wrote none (a member not started yet)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not exists(path):
    return {}
  try:
    values = json.loads(read_bytes(path).decode())
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ValueError(f'{path} is not a readable config ({error}); restore it from a copy, or '
                     'delete the run directory to start the run afresh.') from None
  if not isinstance(values, dict):
    raise ValueError(f'{path} holds no config object; restore it from a copy, or delete the run '
                     'directory to start the run afresh.')
  return values


def _flat(values: Any, prefix: str = '') -> dict[str, Any]:
  if not isinstance(values, dict) or not values:
    return {prefix: values}
  flat = {}
  for name, child in values.items():
    flat.update(_flat(child, f'{prefix}.{name}' if prefix else name))
  return flat


def config_differences(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """'key: saved -> intended' for every field that changes training where the configs differ.

  `model.vocab_size` is compared only for token shards: otherwise the run fills it in from its
  tokenizer, whose own fields (`data.tokenizer`, `data.bpe_vocab_size`...) are compared instead.
  """
  intended = _flat(json.loads(config.to_json_best_effort()))  # tuples become lists, as saved
  saved = _flat(saved)
  ignored = set(REPORTING_AND_HARDWARE)
  if intended.get('data.source') != 'tokens':
    ignored.add('model.vocab_size')
  return [f'{key}: {saved.get(key)!r} -> {intended.get(key)!r}'
          for key in sorted(set(intended) | set(saved))
          if key not in ignored and not key.startswith(HARDWARE_SECTIONS)
          and saved.get(key) != intended.get(key)]


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config as a ConfigDict that `gptjax.train` accepts; an error if there is none."""
  values = read_config_dict(workdir)
  if not values:
    raise FileNotFoundError(f'{os.path.join(workdir, CONFIG_FILE)} does not exist: {workdir} is '
                            'not a gptjax run directory. Pass the --workdir of a run made by '
                            '`python -m gptjax.main`.')
  # JSON has no tuples: the mesh rules come back as lists.
  values['mesh']['rules'] = tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                                  for name, axes in values['mesh']['rules'])
  return ml_collections.ConfigDict(values)


def _number(value: Any) -> Any:
  """The metrics writer stores NaN/inf as strings (JSON has no literal for them); undo that."""
  if isinstance(value, str) and value.lower() in _NON_FINITE:
    return _NON_FINITE[value.lower()]
  return value


def plain_number(value: Any) -> Any:
  """A JSON-safe Python scalar for a metrics record (NaN/inf become strings)."""
  if hasattr(value, 'item'):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def _text_lines(path: str) -> list[tuple[int, str]]:
  """(line number, text) of each line of a JSONL file this project wrote, split at '\n' only.

  The last line may be cut short by a crash mid-write, so its undecodable bytes are replaced; any
  other line that is not UTF-8 (or a NUL anywhere) means the file is damaged: a ValueError names it.
  """
  lines = read_bytes(path).split(b'\n')
  numbered = []
  for line_number, raw in enumerate(lines, start=1):
    try:
      line = raw.decode()
    except UnicodeDecodeError:
      if line_number < len(lines) - 1 or b'\0' in raw:  # a crash cuts only the last line short
        raise ValueError(f'{path}:{line_number} is not text: the file is damaged. Restore it, '
                         'or delete the run directory to train the run afresh.') from None
      line = raw.decode(errors='replace')
    numbered.append((line_number, line))
  return numbered


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Every record of one run, in file order.

  A line that does not parse (the half-written last line of a crashed run, or a line a restart
  appended to it) is skipped with a warning rather than failing the whole sweep. A file that is
  not text at all is not a metrics file: a ValueError names it.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not exists(path):
    raise FileNotFoundError(f'{path} does not exist; is {workdir!r} a run workdir?')
  records = []
  for line_number, line in _text_lines(path):
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


def set_aside_records(workdir: str) -> str | None:
  """Before a run starts afresh in a workdir that holds records (its checkpoints were all damaged
  and set aside): moves metrics.jsonl, the TensorBoard events and config.json into
  `set-aside-<unix time>/`, so the fresh run's records are never mixed with the earlier attempt's
  and none is lost. Returns that folder, or None when there was nothing to move."""
  metrics = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(metrics) or not os.path.getsize(metrics):
    return None
  names = [name for name in (METRICS_FILE, TENSORBOARD_DIR, CONFIG_FILE)
           if os.path.exists(os.path.join(workdir, name))]
  target = os.path.join(workdir, f'set-aside-{int(time.time())}')
  os.makedirs(target)
  for name in names:
    os.replace(os.path.join(workdir, name), os.path.join(target, name))
  return target


def truncate_metrics_after(workdir: str, step: int) -> int:
  """On resume, drops records past the restored step: the resumed run writes them again.

  Returns how many records were dropped. The rewrite is atomic, so a crash here loses nothing.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  for _, line in _text_lines(path):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      dropped += 1  # a line cut short by a crash
      continue
    if not isinstance(record, dict) or record.get('step', 0) > step:
      dropped += 1
    else:
      kept.append(line + '\n')
  write_atomic(path, ''.join(kept))
  return dropped


def final_record(workdir: str, keys: Sequence[str] = (EVAL_KEY,)) -> dict[str, Any] | None:
  """The last evaluation of a finished run: its latest record carrying one of `keys` at the run's
  last step (`train.num_steps`); None while the run has not finished (or never started)."""
  if not (exists(os.path.join(workdir, CONFIG_FILE))
          and exists(os.path.join(workdir, METRICS_FILE))):
    return None
  evals = [r for r in read_metrics(workdir) if any(key in r for key in keys)]
  if evals and evals[-1].get('step') == read_config(workdir).train.num_steps:
    return evals[-1]
  return None


def append_json_line(path: str, record: dict[str, Any]) -> None:
  """Appends `record` as one JSON line, flushed and synced, so a kill leaves whole records behind;
  a last line an earlier kill cut short is ended first, so the new record never joins it."""
  with open(path, 'a+b') as f:
    cut_short = False
    if f.seek(0, os.SEEK_END) > 0:
      f.seek(-1, os.SEEK_END)
      cut_short = f.read(1) != b'\n'
    f.write((('\n' if cut_short else '') + json.dumps(record) + '\n').encode())
    f.flush()
    os.fsync(f.fileno())
