"""Stopping early: the non-finite guard reads the state's norms, not only the loss; signals stop a
run at a step boundary, a second Ctrl-C at once, and the handlers are put back afterwards."""

import math
import os
import signal

import pytest

from gptjax.runs import cli
from gptjax.train import stopping

FINITE = {'train_loss': 2.0, 'grad_norm': 1.0, 'param_norm': 30.0}


def test_finite_metrics_pass():
  stopping.check_finite(FINITE, step=7, last_checkpoint=5)


@pytest.mark.parametrize('key', stopping.FINITE_KEYS)
@pytest.mark.parametrize('value', [math.nan, math.inf])
def test_any_non_finite_norm_stops_even_with_a_finite_loss(key, value):
  with pytest.raises(stopping.NonFiniteLossError) as error:
    stopping.check_finite({**FINITE, key: value}, step=7, last_checkpoint=5)
  message = str(error.value)
  assert 'non-finite at step 7' in message and f'{key}={value}' in message
  assert 'the last checkpoint, step 5, is finite' in message
  assert '--allow_config_change' in message and 'train.learning_rate' in message


def test_without_a_checkpoint_the_error_says_so():
  with pytest.raises(stopping.NonFiniteLossError, match='no checkpoint was saved'):
    stopping.check_finite({**FINITE, 'param_norm': math.nan}, step=1, last_checkpoint=None)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_a_signal_requests_a_stop_and_the_handlers_are_restored(signum):
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  signals = stopping.StopSignals()
  signals.install()
  try:
    assert not signals.reached(3)
    os.kill(os.getpid(), signum)
    assert signals.reached(4)
    if signum == signal.SIGINT:  # the second Ctrl-C does not wait for a checkpoint
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
  finally:
    signals.uninstall()
  assert {s: signal.getsignal(s) for s in before} == before


def test_a_stopped_run_raises_a_run_error_naming_its_step_only_once_stopped():
  signals = stopping.StopSignals()
  signals.raise_if_stopped()  # not stopped: nothing to say
  signals.stop(40)
  with pytest.raises(cli.Stopped, match='Stopped at step 40 after saving a checkpoint; rerun'):
    signals.raise_if_stopped()
