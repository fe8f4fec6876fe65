"""End-to-end training: loss falls, records, NaN guard, exact resume, damaged checkpoints, changed
configs, lost records, preemption and Ctrl-C.

One 30-step run (module fixture) is shared; resume tests copy its workdir, remove or damage the last
checkpoint, and rerun: the resumed run must reach the very same parameters and loss curve.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import faults
import jax
import numpy as np
import pytest

from experiments.configs import base
from gptjax.data.tokenizer import load_tokenizer
from gptjax.generate import decoding
from gptjax.generate.sampling import SamplingConfig
from gptjax.model.config import GPTConfig
from gptjax.parallel import hardware
from gptjax.runs import run_dir
from gptjax.train import checkpointing, loop, stopping

ROOT = str(pathlib.Path(__file__).resolve().parents[2])

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
  return jax.device_get(loop.load_params(workdir)[1])


def _assert_same_params(a, b, atol=0.0):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  loop.train_and_evaluate(_config(), workdir)
  return workdir


def _copy_without_last_checkpoint(src, dst):
  shutil.copytree(src, dst)
  shutil.rmtree(os.path.join(dst, 'checkpoints', '30'))
  return dst


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_generate_command_continues_a_prompt_from_the_latest_checkpoint(finished_run):
  command = [sys.executable, '-m', 'gptjax.generate', f'--workdir={finished_run}', '--prompt=def ',
             '--max_new_tokens=12', '--temperature=0']
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Attention: ' in result.stderr  # the backend it resolved to is logged
  config, params = loop.load_params(finished_run)
  cfg = hardware.resolve_attention(GPTConfig.from_config(config.model), jax.devices()[0])
  tokenizer = load_tokenizer(finished_run)
  greedy = decoding.sample_windowed(params, cfg, list(tokenizer.encode('def ')), 12,
                                    jax.random.key(0), SamplingConfig(temperature=0.0),
                                    (tokenizer.eos_id,))
  assert len(greedy) == 12 or greedy[-1] == tokenizer.eos_id
  assert result.stdout == 'def ' + tokenizer.decode([i for i in greedy
                                                     if i != tokenizer.eos_id]) + '\n'


def _generate(*flags):
  return subprocess.run([sys.executable, '-m', 'gptjax.generate', *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('flags, says', [
    (['--max_new_tokens=0'], '--max_new_tokens=0 must be at least 1'),
    (['--num_beams=0'], '--num_beams=0 must be at least 1'),
    (['--num_beams=2', '--prompt=' + 'x' * 40],
     "The prompt has 40 tokens, but beam search keeps prompt and output in the model's 32-token "
     'context: shorten the prompt, or sample (--num_beams=1)'),
], ids=['no-tokens', 'no-beams', 'prompt-too-long'])
@pytest.mark.slow
def test_the_generate_command_refuses_impossible_requests_in_one_line(finished_run, flags, says):
  run = _generate(f'--workdir={finished_run}', *flags)
  assert run.returncode == 2 and run.stdout == '', run.stderr[-3000:]
  assert run.stderr.strip().splitlines()[-1].startswith('gptjax.generate: error: ' + says)
  assert 'Traceback' not in run.stderr


def test_the_generate_command_on_a_run_without_checkpoints_writes_nothing(finished_run, tmp_path):
  workdir = tmp_path / 'untrained'
  workdir.mkdir()
  shutil.copy(os.path.join(finished_run, run_dir.CONFIG_FILE), workdir)
  run = _generate(f'--workdir={workdir}')
  assert run.returncode == 1 and 'Traceback' not in run.stderr, run.stderr[-3000:]
  assert run.stderr.strip().splitlines()[-1].startswith(
      f'gptjax.generate: error: No checkpoint in {workdir / "checkpoints"}: train the run first')
  assert os.listdir(workdir) == [run_dir.CONFIG_FILE]


@pytest.mark.slow
def test_resume_reaches_bit_identical_parameters_and_curve(finished_run, tmp_path):
  workdir = _copy_without_last_checkpoint(finished_run, str(tmp_path / 'resumed'))
  loop.train_and_evaluate(_config(), workdir)
  _assert_same_params(_params(workdir), _params(finished_run))
  resumed, original = _records(workdir), _records(finished_run)
  assert [r['step'] for r in resumed] == [r['step'] for r in original]  # no duplicates
  for a, b in zip(resumed, original):
    assert a['train_loss'] == b['train_loss']
    assert a.get('eval_loss') == b.get('eval_loss')


@pytest.mark.slow
def test_several_steps_per_call_train_the_same_run(finished_run, tmp_path):
  """train.steps_per_call=4, resumed at step 20 of a run that logs every 5 steps: calls of 4 and
  1 steps (one compiled program), records on the same steps, the same losses and parameters up to
  float reassociation."""
  workdir = _copy_without_last_checkpoint(finished_run, str(tmp_path / 'chunked'))
  loop.train_and_evaluate(_config(**{'train.steps_per_call': 4}), workdir,
                          allow_config_change=True)
  chunked, original = _records(workdir), _records(finished_run)
  assert [r['step'] for r in chunked] == [r['step'] for r in original]
  for a, b in zip(chunked[-2:], original[-2:]):  # steps 25 and 30, trained in calls of 4 + 1
    assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-5)
    assert ('eval_loss' in a) == ('eval_loss' in b)
    assert a.get('eval_loss', 0.0) == pytest.approx(b.get('eval_loss', 0.0), rel=1e-5)
    assert a['learning_rate'] == pytest.approx(b['learning_rate'], rel=1e-6)
  _assert_same_params(_params(workdir), _params(finished_run), atol=2e-5)


@pytest.mark.slow
def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path):
  workdir = str(tmp_path / 'corrupt')
  shutil.copytree(finished_run, workdir)
  state_dir = os.path.join(workdir, 'checkpoints', '30', 'state')
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  loop.train_and_evaluate(_config(), workdir)
  _assert_same_params(_params(workdir), _params(finished_run))
  set_aside = os.listdir(os.path.join(workdir, run_dir.UNREADABLE_DIR))
  assert len(set_aside) == 1 and set_aside[0].startswith('30-')  # kept, not deleted


@pytest.mark.slow
def test_resume_on_a_different_mesh(finished_run, tmp_path):
  workdir = _copy_without_last_checkpoint(finished_run, str(tmp_path / 'remeshed'))
  # saved with the batch split over 8 devices ('data'), resumed fully sharded over 'fsdp'
  loop.train_and_evaluate(_config(**{'mesh.data': 1, 'mesh.fsdp': 8}), workdir)
  _assert_same_params(_params(workdir), _params(finished_run), atol=5e-5)


@pytest.mark.parametrize('override, message', [
    ({'model.num_heads': 3}, 'd_model=64 is not divisible by num_heads=3'),
    ({'train.warmup_steps': 30}, r'train.warmup_steps=30 must be in \[0, num_steps=30\)'),
    ({'data.batch_size': 12}, 'data.batch_size=12 must be divisible'),
    ({'train.tokens_per_pass': 'lots'}, "train.tokens_per_pass='lots'"),
    ({'data.batch_size': 0}, 'data.batch_size=0 must be a whole number >= 1'),
    ({'train.eval_every': -5}, 'train.eval_every=-5 must be a whole number >= 1'),
    ({'data.tokenizer': 'words'}, "data.tokenizer='words'; choose 'byte' or 'bpe'"),
    ({'data.tokenizer': 'bpe', 'data.bpe_vocab_size': 10}, 'data.bpe_vocab_size=10 must exceed'),
    ({'train.learning_rate': -1e-3}, r'train.learning_rate=-0.001 must be > 0'),
    ({'train.b2': 1.5}, r'train.b2=1.5 must be in \[0, 1\)'),
], ids=['heads', 'warmup', 'batch', 'passes', 'empty-batch', 'eval-every', 'tokenizer',
        'bpe-vocab', 'learning-rate', 'b2'])
def test_a_bad_config_is_refused_before_the_workdir_is_written(tmp_path, override, message):
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=message):
    loop.train_and_evaluate(_config(**override), str(workdir))
  assert not workdir.exists()


def _tree(path) -> dict[str, bytes]:
  """Every file under `path` and its bytes, but the lock file (it names the latest holder)."""
  return {os.path.relpath(os.path.join(root, name), path):
          open(os.path.join(root, name), 'rb').read()
          for root, _, names in os.walk(path) for name in names if name != run_dir.LOCK_FILE}


@pytest.mark.slow
def test_a_changed_config_is_refused_before_anything_is_touched(finished_run, tmp_path):
  workdir = shutil.copytree(finished_run, str(tmp_path / 'changed'))
  before = _tree(workdir)
  with pytest.raises(ValueError, match=r'another config \(model.d_model: 64 -> 32\).* new '
                                       r'--workdir.*--allow_config_change'):
    loop.train_and_evaluate(_config(**{'model.d_model': 32}), workdir)
  assert _tree(workdir) == before
  # Reporting and hardware fields are no change of experiment: the run resumes (and is done).
  loop.train_and_evaluate(_config(**{'train.log_every': 3, 'mesh.data': 1, 'mesh.fsdp': 8}),
                          workdir)
  assert _records(workdir) == _records(finished_run)


@pytest.mark.slow
def test_allow_config_change_continues_the_run_and_keeps_its_old_config(finished_run, tmp_path):
  workdir = shutil.copytree(finished_run, str(tmp_path / 'longer'))
  with open(os.path.join(workdir, run_dir.CONFIG_FILE)) as f:
    old_config = f.read()
  loop.train_and_evaluate(_config(**{'train.num_steps': 40}), workdir, allow_config_change=True)
  with open(os.path.join(workdir, 'config.until-step-30.json')) as f:
    assert f.read() == old_config
  assert run_dir.read_config(workdir).train.num_steps == 40
  assert [r['step'] for r in _records(workdir)] == [5, 10, 15, 20, 25, 30, 35, 40]
  assert _records(workdir)[:6] == _records(finished_run)


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused_not_set_aside(finished_run, tmp_path):
  workdir = shutil.copytree(finished_run, str(tmp_path / 'reshaped'))
  before = _tree(os.path.join(workdir, 'checkpoints'))
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'step 30 .* another layout .*\(64, 4, 16\) -> \(32, 4, 8\)'):
    loop.train_and_evaluate(_config(**{'model.d_model': 32}), workdir, allow_config_change=True)
  assert _tree(os.path.join(workdir, 'checkpoints')) == before
  assert not os.path.exists(os.path.join(workdir, run_dir.UNREADABLE_DIR))
  assert run_dir.read_config(workdir).model.d_model == 64


def _flip_a_byte_of_the_largest_array_file(step_dir):
  files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, 'state'))
           for name in names]
  faults.flip_middle_byte(max(files, key=os.path.getsize))


def _alter_one_saved_checksum(step_dir):
  """What a flipped bit inside an array's bytes looks like to the restore, deterministically."""
  path = os.path.join(step_dir, 'checksums', 'metadata')
  with open(path) as f:
    sums = json.load(f)
  sums['params.embed.embedding'] ^= 1
  with open(path, 'w') as f:
    json.dump(sums, f)


def _alter_the_data_position(step_dir):
  """The probe's edit: another next index in the data iterator's saved position."""
  path = os.path.join(step_dir, 'data', 'process_0-of-1.json')
  with open(path) as f:
    position = json.load(f)
  assert isinstance(position.get('next_index'), int), position  # the file the probe edited
  position['next_index'] += 7
  with open(path, 'w') as f:
    json.dump(position, f)


def _delete_the_checksums_and_flip_a_byte(step_dir):
  """Without its checksums a checkpoint is unverifiable: damaged, whatever else it holds."""
  shutil.rmtree(os.path.join(step_dir, 'checksums'))
  _flip_a_byte_of_the_largest_array_file(step_dir)


@pytest.mark.parametrize('damage', [_flip_a_byte_of_the_largest_array_file,
                                    _alter_one_saved_checksum, _alter_the_data_position,
                                    _delete_the_checksums_and_flip_a_byte],
                         ids=['flipped-byte', 'checksum', 'data-position', 'no-checksums'])
@pytest.mark.slow
def test_a_checkpoint_that_fails_its_checksum_is_set_aside(finished_run, tmp_path, damage):
  workdir = shutil.copytree(finished_run, str(tmp_path / 'altered'))
  damage(os.path.join(workdir, 'checkpoints', '30'))
  loop.train_and_evaluate(_config(), workdir)
  _assert_same_params(_params(workdir), _params(finished_run))  # retrained from step 20
  set_aside = os.listdir(os.path.join(workdir, run_dir.UNREADABLE_DIR))
  assert len(set_aside) == 1 and set_aside[0].startswith('30-')


@pytest.mark.slow
def test_a_fresh_start_after_every_checkpoint_failed_records_each_step_once(finished_run, tmp_path):
  workdir = shutil.copytree(finished_run, str(tmp_path / 'all-damaged'))
  for step in os.listdir(os.path.join(workdir, 'checkpoints')):
    _alter_one_saved_checksum(os.path.join(workdir, 'checkpoints', step))
  with pytest.raises(checkpointing.CheckpointError, match='Rerun to start afresh'):
    loop.train_and_evaluate(_config(), workdir)
  loop.train_and_evaluate(_config(), workdir)  # the rerun starts afresh
  steps = [r['step'] for r in _records(workdir)]
  assert steps == [r['step'] for r in _records(finished_run)]  # each step once
  aside, = [name for name in os.listdir(workdir) if name.startswith('set-aside-')]
  with open(os.path.join(workdir, aside, run_dir.METRICS_FILE)) as f, open(
      os.path.join(finished_run, run_dir.METRICS_FILE)) as g:
    assert f.read() == g.read()  # the earlier attempt's records, kept as they were
  _assert_same_params(_params(workdir), _params(finished_run))


@pytest.mark.slow
def test_a_lost_final_record_is_measured_again_on_rerun(finished_run, tmp_path):
  workdir = shutil.copytree(finished_run, str(tmp_path / 'cut'))
  metrics = os.path.join(workdir, run_dir.METRICS_FILE)
  with open(metrics, 'rb') as f:
    text = f.read()
  with open(metrics, 'wb') as f:  # a crash cut the last record short
    f.write(text[:text.rstrip(b'\n').rfind(b'\n') + 30])
  loop.train_and_evaluate(_config(), workdir)
  final, original = _records(workdir)[-1], _records(finished_run)[-1]
  assert final['step'] == 30 and final['eval_loss'] == original['eval_loss']
  assert final['flops_kaplan'] == original['flops_kaplan']
  for key in ('train_loss', 'grad_norm', 'param_norm', 'learning_rate'):  # from the checkpoint
    assert final[key] == original[key], key
  loop.train_and_evaluate(_config(), workdir)  # present now: nothing is added
  assert len(_records(workdir)) == len(_records(finished_run))


@pytest.mark.slow
def test_a_non_finite_state_is_never_saved_and_the_error_names_the_last_good_step(tmp_path):
  workdir = str(tmp_path / 'nan')
  config = _config(**{'train.learning_rate': 1e3, 'train.warmup_steps': 0,
                      'train.schedule': 'constant', 'train.checkpoint_every': 1})
  with pytest.raises(stopping.NonFiniteLossError,
                     match=r'non-finite at step (\d+) .*last checkpoint, step (\d+), is finite') as e:
    loop.train_and_evaluate(config, workdir)
  bad_step, last_good = map(int, re.search(r'step (\d+) .*step (\d+),', str(e.value)).groups())
  saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())
  assert saved[-1] == last_good == bad_step - 1
  abstract = loop.abstract_train_state(run_dir.read_config(workdir))
  for step in saved:  # every array of every saved state, optimizer moments included
    manager = checkpointing.make_manager(workdir, save_every=1, keep=100, async_save=False)
    state = manager.restore(step, args=checkpointing.ocp.args.Composite(
        state=checkpointing.ocp.args.StandardRestore(abstract)))['state']
    manager.close()
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state)), step


@pytest.mark.slow
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
  assert process.returncode == 75, output[-3000:]  # stopped, not finished: a scheduler resumes it
  assert 'SIGTERM' in output
  assert output.strip().splitlines()[-1].startswith('gptjax.main: error: Stopped at step ')
  saved = [int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit()]
  assert len(saved) == 1 and 5 <= saved[0] < 30, (saved, output[-3000:])
  loop.train_and_evaluate(_config(**{'train.checkpoint_every': 1000}), workdir)
  # The first segment ran in another process, whose XLA CPU executables may split reductions over
  # threads differently, so this comparison allows float32 rounding; the in-process resume test
  # above is the bit-for-bit one.
  _assert_same_params(_params(workdir), _params(finished_run), atol=5e-5)
  np.testing.assert_allclose([r['train_loss'] for r in _records(workdir)],
                             [r['train_loss'] for r in _records(finished_run)], rtol=1e-4)
