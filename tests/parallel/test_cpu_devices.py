"""Splitting a CPU host into several XLA devices (`mesh.cpu_devices`), which must precede JAX."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from gptjax.parallel import distributed

_ROOT = str(pathlib.Path(__file__).resolve().parents[2])


def test_a_negative_count_is_refused():
  with pytest.raises(ValueError, match='mesh.cpu_devices=-1 must be 0'):
    distributed.configure_cpu_devices(-1)


def test_a_count_set_after_jax_started_names_the_fix():
  jax.devices()  # this process's backends are running
  distributed.configure_cpu_devices(0)  # 0 leaves JAX alone, so it is always allowed
  with pytest.raises(RuntimeError, match='came too late.*before any JAX computation'):
    distributed.configure_cpu_devices(2)


def _start_main(workdir, cpu_devices):
  overrides = {
      'mesh.cpu_devices': cpu_devices, 'model.d_model': 32, 'model.num_layers': 1,
      'model.num_heads': 2, 'model.max_seq_len': 32, 'data.seq_len': 32, 'data.batch_size': 4,
      'data.max_corpus_bytes': 100_000, 'train.num_steps': 3, 'train.warmup_steps': 1,
      'train.log_every': 1, 'train.eval_every': 3, 'train.eval_batches': 1,
      'train.checkpoint_every': 3, 'train.async_checkpoints': False,
  }
  # Without the option this environment gives one CPU device.
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  return subprocess.Popen(
      [sys.executable, '-m', 'gptjax.main', '--config=experiments/configs/base.py',
       f'--workdir={workdir}', *(f'--config.{k}={v}' for k, v in overrides.items())],
      cwd=_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_main_splits_the_host_and_trains_on_every_device(tmp_path):
  """Two devices train like one: the same losses and gradient norms, each device its half batch."""
  runs = {count: _start_main(tmp_path / f'devices{count}', count) for count in (2, 0)}
  logs = {}
  for count, process in runs.items():
    _, logs[count] = process.communicate(timeout=600)
    assert process.returncode == 0, logs[count][-3000:]
  assert '2 device(s)' in logs[2], logs[2][-3000:]
  assert '1 device(s)' in logs[0], logs[0][-3000:]
  split, whole = (
      [json.loads(line) for line in (tmp_path / f'devices{count}' / 'metrics.jsonl').read_text()
       .splitlines()] for count in (2, 0))
  assert [r['step'] for r in split if 'train_loss' in r] == [1, 2, 3]
  assert [r['step'] for r in whole if 'train_loss' in r] == [1, 2, 3]
  for key in ('train_loss', 'grad_norm', 'eval_loss'):
    values = [[r[key] for r in records if key in r] for records in (split, whole)]
    assert values[0], key
    np.testing.assert_allclose(values[0], values[1], rtol=1e-5, err_msg=key)
