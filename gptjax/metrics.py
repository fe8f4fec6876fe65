"""Run records: `metrics.jsonl` (the file plots and fits read), TensorBoard events, a progress line.

Only process 0 writes, so a multi-host run leaves one record, not one per host.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from absl import logging

METRICS_FILE = 'metrics.jsonl'


def _plain(value: Any) -> Any:
  """JSON-safe Python scalars (NaN/inf become strings, as JSON has no literal for them)."""
  if hasattr(value, 'item'):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def truncate_after(workdir: str, step: int) -> int:
  """On resume, drop records past the restored step: the resumed run writes them again.

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
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(kept)
  os.replace(tmp, path)
  return dropped


class MetricsWriter:
  """Appends one JSON object per logged step and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self._tensorboard = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._file = open(os.path.join(workdir, METRICS_FILE), 'a')
      try:
        from tensorboardX import SummaryWriter
        self._tensorboard = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      except ImportError:
        logging.warning('tensorboardX is not installed: no TensorBoard events will be written.')

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {key: _plain(value) for key, value in record.items()}
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    if self._tensorboard is not None:
      for key, value in record.items():
        if key != 'step' and isinstance(value, (int, float)):
          self._tensorboard.add_scalar(key, value, record['step'])
      self._tensorboard.flush()

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      if self._tensorboard is not None:
        self._tensorboard.close()


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'


class Progress:
  """Throughput over the last logging interval and a progress line with ETA."""

  def __init__(self, total_steps: int, start_step: int, tokens_per_step: int):
    self.total_steps = total_steps
    self.tokens_per_step = tokens_per_step
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def interval(self, step: int) -> dict[str, float]:
    """Step time and tokens/s since the previous call (the first interval includes compilation)."""
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    step_time = (now - self._last_time) / steps
    self._last_step, self._last_time = step, now
    return {'step_time': step_time, 'tokens_per_s': self.tokens_per_step / step_time}

  def line(self, record: dict[str, Any]) -> str:
    step = record['step']
    parts = [f'step {step}/{self.total_steps}', f'loss {record["train_loss"]:.4f}']
    if 'eval_loss' in record:
      parts.append(f'eval {record["eval_loss"]:.4f}')
    parts += [f'{record["tokens_per_s"]:,.0f} tok/s', f'{record["step_time"] * 1e3:.0f} ms/step']
    if 'mfu' in record:
      parts.append(f'MFU {100 * record["mfu"]:.1f}%')
    parts.append(f'ETA {_duration((self.total_steps - step) * record["step_time"])}')
    return ' | '.join(parts)
