"""Run records as they are written: `metrics.jsonl` (the file plots and fits read), TensorBoard, and
Weights & Biases where a project is set (`gptjax/train/tracking.py`).

Only process 0 writes, so a multi-host run leaves one record, not one per host.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from absl import logging

from gptjax.runs import run_dir


class MetricsWriter:
  """Appends one JSON object per logged step and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str, *, enabled: bool = True, tracker: Any = None):
    self.enabled = enabled
    self._tensorboard = None
    self._tracker = tracker  # anything with log(record) and close(), e.g. a WandbTracker
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._file = open(os.path.join(workdir, run_dir.METRICS_FILE), 'a')
      try:
        self._tensorboard = _summary_writer()(os.path.join(workdir, run_dir.TENSORBOARD_DIR))
      except ImportError:
        logging.warning('tensorboardX is not installed: no TensorBoard events will be written.')

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {key: run_dir.plain_number(value) for key, value in record.items()}
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    if self._tensorboard is not None:
      for key, value in record.items():
        if key != 'step' and isinstance(value, (int, float)):
          self._tensorboard.add_scalar(key, value, record['step'])
      self._tensorboard.flush()
    if self._tracker is not None:
      self._tracker.log(record)

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      if self._tensorboard is not None:
        self._tensorboard.close()
      if self._tracker is not None:
        self._tracker.close()


def _summary_writer():
  """tensorboardX's SummaryWriter class, imported without torch.

  tensorboardX imports torch whenever it is installed (2-3 s per process on a CPU) only so that it
  can accept torch tensors; a run writes Python floats. Each member of a sweep is its own process,
  so the import would be paid once per member. torch stays importable afterwards.
  """
  blocked = 'torch' not in sys.modules
  if blocked:
    sys.modules['torch'] = None  # makes `import torch` raise ImportError, which tensorboardX catches
  try:
    from tensorboardX import SummaryWriter
  finally:
    if blocked:
      del sys.modules['torch']
  return SummaryWriter
