"""End-to-end training: loss falls, records, NaN guard, exact resume, corrupt checkpoints, preemption.

One 30-step run (module fixture) is shared; resume tests copy its workdir, remove or damage the last
checkpoint, and rerun: the resumed run must reach the very same parameters and loss curve.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments.configs import base
from gptjax import decoding, hardware, run_dir, train
from gptjax.model import GPTConfig
from gptjax.sampling import SamplingConfig
from gptjax.tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The same run as flags (for the subprocess test) and as a config (for in-process runs).
OVERRIDES = {
    'model.d_model': 64, 'model.num_layers': 2, 'model.num_heads': 4, 'model.max_seq_len': 32,
    'data.seq_len': 32, 'data.batch_size': 8, 'data.max_corpus_bytes': 200_000,
    'train.num_steps': 30, 'train.warmup_steps': 5, 'train.learning_rate': 3e-3,
    'train.log_every': 5, 'train.eval_every': 10, 'train.eval_batches': 2,
    'train.checkpoint_every': 10, 'train.keep_checkpoints': 5, 'train.async_checkpoints': False,
}


def _config(**extra):
  config = base.get_config()
  for key, value in {**OVERRIDES, **extra}.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _params(workdir):
  return jax.device_get(train.load_params(workdir)[1])


def _assert_same_params(a, b, atol=0.0):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(_config(), workdir)
  return workdir


def _copy_without_last_checkpoint(src, dst):
  shutil.copytree(src, dst)
  shutil.rmtree(os.path.join(dst, 'checkpoints', '30'))
  return dst


def test_training_writes_records_and_the_loss_falls(finished_run):
  records = _records(finished_run)
  assert [r['step'] for r in records] == [5, 10, 15, 20, 25, 30]
  for key in ('step', 'tokens_seen', 'train_loss', 'learning_rate', 'tokens_per_s', 'step_time',
              'flops_kaplan', 'params_non_embedding'):
    assert key in records[-1]
  assert records[-1]['tokens_seen'] == 30 * 8 * 32
  evals = [r for r in records if 'eval_loss' in r]
  assert [r['step'] for r in evals] == [10, 20, 30]
  assert evals[-1]['eval_loss'] < evals[0]['eval_loss'] < np.log(256)
  assert records[-1]['train_loss'] < records[0]['train_loss'] - 0.5
  assert os.path.exists(os.path.join(finished_run, 'config.json'))
  assert os.listdir(os.path.join(finished_run, 'tensorboard'))
  assert sorted(int(s) for s in os.listdir(os.path.join(finished_run, 'checkpoints'))
                if s.isdigit()) == [10, 20, 30]


def test_records_hold_compute_perplexity_and_bits_per_byte_by_their_definitions(finished_run):
  """Kaplan compute from the checkpoint's parameter count, exp of the loss, bits per byte."""
  config = run_dir.read_config(finished_run)
  params = _params(finished_run)
  embedding = params['embed']['embedding'].size + params['pos_embed'].size  # tied output head
  non_embedding = sum(x.size for x in jax.tree.leaves(params)) - embedding
  m, seq_len = config.model, config.data.seq_len
  # Kaplan et al. (2020), table 1: C = 6N + 6 n_layer n_ctx d_attn training FLOPs per token.
  kaplan_per_token = 6 * non_embedding + 6 * m.num_layers * seq_len * m.d_model
  # The validation split as the run tokenised it: one byte per token, EOS after each document.
  [cache] = (os.path.join(finished_run, run_dir.DATA_DIR, name)
             for name in os.listdir(os.path.join(finished_run, run_dir.DATA_DIR)))
  val_ids = np.fromfile(os.path.join(cache, 'validation.bin'), np.uint16)
  val_bytes = int(np.sum(val_ids != load_tokenizer(finished_run).eos_id))
  assert 0 < val_bytes < val_ids.size
  records = _records(finished_run)
  assert len([r for r in records if 'eval_loss' in r]) == 3
  for r in records:
    assert r['tokens_seen'] == r['step'] * 8 * 32
    assert r['params_non_embedding'] == non_embedding
    np.testing.assert_allclose(r['flops_kaplan'], kaplan_per_token * r['tokens_seen'], rtol=1e-12)
    if 'eval_loss' in r:
      np.testing.assert_allclose(r['eval_perplexity'], np.exp(r['eval_loss']), rtol=1e-12)
      np.testing.assert_allclose(r['eval_bits_per_byte'],
                                 r['eval_loss'] / np.log(2) * val_ids.size / val_bytes, rtol=1e-12)


def test_the_generate_command_continues_a_prompt_from_the_latest_checkpoint(finished_run):
  command = [sys.executable, '-m', 'gptjax.generate', f'--workdir={finished_run}', '--prompt=def ',
             '--max_new_tokens=12', '--temperature=0']
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Attention: ' in result.stderr  # the backend it resolved to is logged
  config, params = train.load_params(finished_run)
  cfg = hardware.resolve_attention(GPTConfig.from_config(config.model), jax.devices()[0])
  tokenizer = load_tokenizer(finished_run)
  greedy = decoding.sample_windowed(params, cfg, list(tokenizer.encode('def ')), 12,
                                    jax.random.key(0), SamplingConfig(temperature=0.0),
                                    (tokenizer.eos_id,))
  assert len(greedy) == 12 or greedy[-1] == tokenizer.eos_id
  assert result.stdout == 'def ' + tokenizer.decode([i for i in greedy
                                                     if i != tokenizer.eos_id]) + '\n'


def test_resume_reaches_bit_identical_parameters_and_curve(finished_run, tmp_path):
  workdir = _copy_without_last_checkpoint(finished_run, str(tmp_path / 'resumed'))
  train.train_and_evaluate(_config(), workdir)
  _assert_same_params(_params(workdir), _params(finished_run))
  resumed, original = _records(workdir), _records(finished_run)
  assert [r['step'] for r in resumed] == [r['step'] for r in original]  # no duplicates
  for a, b in zip(resumed, original):
    assert a['train_loss'] == b['train_loss']
    assert a.get('eval_loss') == b.get('eval_loss')


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path):
  workdir = str(tmp_path / 'corrupt')
  shutil.copytree(finished_run, workdir)
  state_dir = os.path.join(workdir, 'checkpoints', '30', 'state')
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  train.train_and_evaluate(_config(), workdir)
  _assert_same_params(_params(workdir), _params(finished_run))
  set_aside = os.listdir(os.path.join(workdir, run_dir.UNREADABLE_DIR))
  assert len(set_aside) == 1 and set_aside[0].startswith('30-')  # kept, not deleted


def test_resume_on_a_different_mesh(finished_run, tmp_path):
  workdir = _copy_without_last_checkpoint(finished_run, str(tmp_path / 'remeshed'))
  # saved with the batch split over 8 devices ('data'), resumed fully sharded over 'fsdp'
  train.train_and_evaluate(_config(**{'mesh.data': 1, 'mesh.fsdp': 8}), workdir)
  _assert_same_params(_params(workdir), _params(finished_run), atol=5e-5)


@pytest.mark.parametrize('override, message', [
    ({'model.num_heads': 3}, 'd_model=64 is not divisible by num_heads=3'),
    ({'train.warmup_steps': 30}, r'train.warmup_steps=30 must be in \[0, num_steps=30\)'),
    ({'data.batch_size': 12}, 'data.batch_size=12 must be divisible'),
    ({'train.tokens_per_pass': 'lots'}, "train.tokens_per_pass='lots'"),
], ids=['heads', 'warmup', 'batch', 'passes'])
def test_a_bad_config_is_refused_before_the_workdir_is_written(tmp_path, override, message):
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(_config(**override), str(workdir))
  assert not workdir.exists()


def test_non_finite_loss_stops_the_run_and_keeps_earlier_checkpoints(tmp_path):
  workdir = str(tmp_path / 'nan')
  config = _config(**{'train.learning_rate': 1e12, 'train.grad_clip': 0.0, 'train.warmup_steps': 0,
                      'train.schedule': 'constant', 'train.checkpoint_every': 1})
  with pytest.raises(train.NonFiniteLossError, match=r'became (nan|inf) at step \d+'):
    train.train_and_evaluate(config, workdir)
  saved = [int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit()]
  assert saved and all(np.isfinite(x).all() for x in jax.tree.leaves(_params(workdir)))


def test_sigterm_saves_a_checkpoint_and_the_rerun_finishes_identically(finished_run, tmp_path):
  workdir = str(tmp_path / 'preempted')
  # a slower schedule of saves so the SIGTERM checkpoint is the one that matters
  flags = [f'--config.{k}={v}' for k, v in {**OVERRIDES, 'train.checkpoint_every': 1000}.items()]
  command = [sys.executable, '-m', 'gptjax.main', '--config=experiments/configs/base.py',
             f'--workdir={workdir}', *flags]
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu'}
  process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 120
  while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
    assert process.poll() is None, process.stdout.read()[-3000:]
    assert time.time() < deadline, 'the run never logged a step'
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=120)
  assert process.returncode == 0, output[-3000:]
  assert 'SIGTERM' in output
  saved = [int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit()]
  assert len(saved) == 1 and 5 <= saved[0] < 30, (saved, output[-3000:])
  train.train_and_evaluate(_config(**{'train.checkpoint_every': 1000}), workdir)
  # The first segment ran in another process, whose XLA CPU executables may split reductions over
  # threads differently, so this comparison allows float32 rounding; the in-process resume test
  # above is the bit-for-bit one.
  _assert_same_params(_params(workdir), _params(finished_run), atol=5e-5)
  np.testing.assert_allclose([r['train_loss'] for r in _records(workdir)],
                             [r['train_loss'] for r in _records(finished_run)], rtol=1e-4)
