"""Splitting a CPU host into several XLA devices (`mesh.cpu_devices`), which must precede JAX."""

import json
import os
import subprocess
import sys

import jax
import pytest

from gptjax import distributed

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_negative_count_is_refused():
  with pytest.raises(ValueError, match='mesh.cpu_devices=-1 must be 0'):
    distributed.configure_cpu_devices(-1)


def test_a_count_set_after_jax_started_names_the_fix():
  jax.devices()  # this process's backends are running
  distributed.configure_cpu_devices(0)  # 0 leaves JAX alone, so it is always allowed
  with pytest.raises(RuntimeError, match='came too late.*before any JAX computation'):
    distributed.configure_cpu_devices(2)


def test_main_splits_the_host_and_trains_on_every_device(tmp_path):
  overrides = {
      'mesh.cpu_devices': 2, 'model.d_model': 32, 'model.num_layers': 1, 'model.num_heads': 2,
      'model.max_seq_len': 32, 'data.seq_len': 32, 'data.batch_size': 4,
      'data.max_corpus_bytes': 100_000, 'train.num_steps': 3, 'train.warmup_steps': 1,
      'train.log_every': 1, 'train.eval_every': 3, 'train.eval_batches': 1,
      'train.checkpoint_every': 3, 'train.async_checkpoints': False,
  }
  workdir = tmp_path / 'run'
  # Without the option this environment gives one CPU device.
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  run = subprocess.run(
      [sys.executable, '-m', 'gptjax.main', '--config=experiments/configs/base.py',
       f'--workdir={workdir}', *(f'--config.{k}={v}' for k, v in overrides.items())],
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert '2 device(s)' in run.stderr, run.stderr[-3000:]
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if 'train_loss' in r] == [1, 2, 3]
