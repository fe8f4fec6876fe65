"""The progress line of a long job: step, loss, throughput and ETA."""

from __future__ import annotations

import time
from typing import Any

from gptjax.runs.cli import format_duration


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
    if 'eval_exact_match' in record:
      parts.append(f'exact match {100 * record["eval_exact_match"]:.1f}%')
    parts += [f'{record["tokens_per_s"]:,.0f} tok/s', f'{record["step_time"] * 1e3:.0f} ms/step']
    if 'mfu' in record:
      parts.append(f'MFU {100 * record["mfu"]:.1f}%')
    parts.append(f'ETA {format_duration((self.total_steps - step) * record["step_time"])}')
    return ' | '.join(parts)
