"""The files of a run directory: their names, and the one reader and writer of each.

A run directory (`--workdir`) holds
  config.json          the resolved config (`write_config` / `read_config` / `read_config_dict`)
  metrics.jsonl        one JSON record per logged step (`read_metrics`, `truncate_metrics_after`;
                       appended by `gptjax.metrics.MetricsWriter`)
  tensorboard/         the same scalars as TensorBoard events
  tokenizer.json       the run's tokenizer (`gptjax.tokenizer`)
  data/<fingerprint>/  the tokenised corpus cache (`gptjax.tokens`)
  checkpoints/<step>/  orbax checkpoints of the train state and data iterator (`gptjax.checkpointing`)
Sweeps, fits and plots read runs only through this module and `gptjax.records`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from typing import Any

import ml_collections

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'
TOKENIZER_FILE = 'tokenizer.json'
DATA_DIR = 'data'
CHECKPOINT_DIR = 'checkpoints'
UNREADABLE_DIR = 'checkpoints.unreadable'

_NON_FINITE = {'nan': math.nan, 'inf': math.inf, '-inf': -math.inf, 'infinity': math.inf,
               '-infinity': -math.inf}


def write_atomic(path: str, payload: bytes | str) -> str:
  """Writes `path` so that a reader (or a crash) never sees half a file; returns `path`.

  The payload goes to a temporary file beside `path`, which is then renamed over it. The file is
  made readable by everyone (mkstemp's 0o600 would hide a shared workdir's files from its users).
  """
  directory = os.path.dirname(path) or '.'
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + '.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(payload.encode() if isinstance(payload, str) else payload)
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
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


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


def read_metrics(workdir: str) -> list[dict[str, Any]]:
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


def truncate_metrics_after(workdir: str, step: int) -> int:
  """On resume, drops records past the restored step: the resumed run writes them again.

  Returns how many records were dropped. The rewrite is atomic, so a crash here loses nothing.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        dropped += 1  # a line cut short by a crash
        continue
      if record.get('step', 0) > step:
        dropped += 1
      else:
        kept.append(line if line.endswith('\n') else line + '\n')
  write_atomic(path, ''.join(kept))
  return dropped
