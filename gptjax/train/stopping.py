"""Why a training run stops early, and how it stops cleanly.

Two reasons: a signal (preemption's SIGTERM, or Ctrl-C), after which the run saves a checkpoint and
ends; and a state that stopped being finite, which is never saved, so that the last checkpoint is
always one to resume from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
from typing import Any, Iterator

import jax
from absl import logging
from jax.experimental import multihost_utils

from gptjax.runs import cli


class NonFiniteLossError(cli.RunError):
  pass


@dataclasses.dataclass
class StopSignals:
  """SIGTERM, or Ctrl-C, stops the run at a step boundary after saving a checkpoint.

  A single process catches both itself; a second Ctrl-C stops at once. With several processes,
  each would see the signal at a different step, save alone and leave the others blocked in the
  next step's collectives (the run hangs with no checkpoint); instead jax.distributed's preemption
  service, which catches SIGTERM on any host and tells the others, picks one step at which all of
  them save.
  """

  requested: bool = False
  stopped_at: int | None = None  # the step whose checkpoint the run saved before stopping
  _previous: dict = dataclasses.field(default_factory=dict)

  def install(self) -> None:
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)

  def uninstall(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  @contextlib.contextmanager
  def installed(self) -> Iterator[StopSignals]:
    """The handlers for the duration of a loop; the previous ones come back however it ends."""
    self.install()
    try:
      yield self
    finally:
      self.uninstall()

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step`; every process must call it after every step."""
    if (not self.requested and jax.process_count() > 1 and
        multihost_utils.reached_preemption_sync_point(step)):
      logging.warning('Preemption notice: every process saves a checkpoint at step %d.', step)
      self.requested = True
    return self.requested

  def stop(self, step: int) -> None:
    """Notes that the loop saved `step` and stops there; `raise_if_stopped` says so once the
    run's checkpoints and records are closed."""
    self.stopped_at = step

  def raise_if_stopped(self) -> None:
    """Raises `cli.Stopped` (exit status 75) if the loop stopped for a signal."""
    if self.stopped_at is not None:
      raise cli.Stopped(f'Stopped at step {self.stopped_at} after saving a checkpoint; rerun the same '
                    'command to resume.')

  def _handle(self, signum, frame) -> None:
    del frame
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
    logging.warning('%s received: saving a checkpoint and stopping at the next step.',
                    signal.Signals(signum).name)
    self.requested = True


FINITE_KEYS = ('train_loss', 'grad_norm', 'param_norm')


def check_finite(step_metrics: dict[str, Any], step: int, last_checkpoint: int | None) -> None:
  """Stops before a non-finite state is saved: the parameters can go NaN while the loss is
  finite."""
  values = jax.device_get({key: step_metrics[key] for key in FINITE_KEYS})
  if all(math.isfinite(float(v)) for v in values.values()):
    return
  found = ', '.join(f'{key}={float(v):.4g}' for key, v in values.items())
  resume = (f'the last checkpoint, step {last_checkpoint}, is finite and kept; rerun with '
            f'--allow_config_change to resume from it' if last_checkpoint is not None else
            'no checkpoint was saved; rerun')
  raise NonFiniteLossError(
      f'Training became non-finite at step {step} ({found}); nothing non-finite was saved. Lower '
      f'train.learning_rate, raise train.warmup_steps, or enable train.grad_clip; {resume}, or '
      'start afresh in a new --workdir.')
