"""Fine-tuning end to end: from a pre-trained run (module fixture) through `finetune.finetune`.

Checked: the records (response loss, exact match, the method's trainable count), the frozen base
left bitwise alone, an exact resume, sampling and export of the fine-tuned run, and bad input
refused before anything is written.
"""

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.configs import base, finetune as finetune_configs
from gptjax import convert, finetune
from gptjax.convert import hf_gpt2
from gptjax.cost import flops
from gptjax.data.tokenizer import load_tokenizer
from gptjax.finetune import state as finetune_state, tasks
from gptjax.generate import decoding
from gptjax.generate.sampling import SamplingConfig
from gptjax.model import peft
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.parallel import sharding
from gptjax.train import loop

PRETRAIN = {
    'model.d_model': 32, 'model.num_layers': 2, 'model.num_heads': 2, 'model.max_seq_len': 48,
    'data.seq_len': 32, 'data.batch_size': 8, 'data.max_corpus_bytes': 100_000,
    'train.num_steps': 20, 'train.warmup_steps': 2, 'train.learning_rate': 3e-3,
    'train.log_every': 10, 'train.eval_every': 20, 'train.eval_batches': 1,
    'train.checkpoint_every': 20, 'train.async_checkpoints': False,
}
FINETUNE = {
    'data.seq_len': 40, 'data.batch_size': 8, 'train.num_steps': 20, 'train.warmup_steps': 2,
    'train.schedule': 'constant', 'train.learning_rate': 3e-3, 'train.log_every': 5,
    'train.eval_every': 10, 'train.eval_batches': 1, 'train.checkpoint_every': 10,
    'train.async_checkpoints': False, 'finetune.num_examples': 200, 'finetune.eval_examples': 16,
    'finetune.method': 'lora', 'finetune.task': 'reverse',
}


ROOT = str(pathlib.Path(__file__).resolve().parents[2])


def _set(config, overrides):
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def _finetune_config(**extra):
  return _set(finetune_configs.get_config(), {**FINETUNE, **extra})


@pytest.fixture(scope='module')
def base_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('base'))
  loop.train_and_evaluate(_set(base.get_config(), PRETRAIN), workdir)
  return workdir


def _model_config(config):
  return dataclasses.replace(GPTConfig.from_run_config(config), attention_impl='xla')


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _trained(workdir, config):
  """The fine-tune's trained (not frozen) parameters, read back from its checkpoint."""
  _, params = finetune_state.load_params(workdir)
  return peft.split_trainable(jax.device_get(params), config.finetune.method)


@pytest.mark.slow
def test_lora_records_frozen_base_and_exact_resume(base_run, tmp_path):
  straight, resumed_dir = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  record = finetune.finetune(_finetune_config(), base_run, straight)
  # A copy that lost its last checkpoint resumes from step 10 and must retrace the same steps.
  shutil.copytree(straight, resumed_dir)
  shutil.rmtree(os.path.join(resumed_dir, 'checkpoints', '20'))
  finetune.finetune(_finetune_config(), base_run, resumed_dir)

  config = finetune_state.resolve_config(_finetune_config(), base_run)
  model_cfg = _model_config(config)
  rows = _records(straight)
  evals = [r for r in rows if 'eval_loss' in r]
  assert [r['step'] for r in evals] == [10, 20]
  assert all(0.0 <= r['eval_exact_match'] <= 1.0 for r in evals)
  assert all(r['params_trainable'] == flops.trainable_params(model_cfg) for r in rows)
  assert evals[-1]['eval_loss'] < evals[0]['eval_loss'] and record['step'] == 20

  _, base_params = loop.load_params(base_run)
  trainable, frozen = _trained(straight, config)
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(jax.device_get(base_params))):
    np.testing.assert_array_equal(a, b)
  assert all('lora' in jax.tree_util.keystr(path)
             for path, _ in jax.tree_util.tree_flatten_with_path(trainable)[0])

  resumed, _ = _trained(resumed_dir, config)
  for a, b in zip(jax.tree.leaves(trainable), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  assert [r['eval_loss'] for r in _records(resumed_dir) if 'eval_loss' in r] == \
      [r['eval_loss'] for r in evals]

  # Merged into the weights, the fine-tune is a plain run that gives the same logits.
  plain_config, merged = finetune_state.plain_run(straight)
  assert 'finetune' not in plain_config
  _, full = finetune_state.load_params(straight)
  tokens = np.arange(40, dtype=np.int32)[None] % 200
  logits = GPT(model_cfg).apply({'params': full}, tokens)
  plain_logits = GPT(_model_config(plain_config)).apply({'params': merged}, tokens)
  np.testing.assert_allclose(plain_logits, logits, atol=1e-5)

  # Exported to GPT-2, the tensors are the merged weights'.
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  convert.export_hf(straight, str(tmp_path / 'hf'))
  exported = safetensors_numpy.load_file(str(tmp_path / 'hf' / convert.SAFETENSORS))
  expected = hf_gpt2.params_to_hf(jax.device_get(merged), _model_config(plain_config))
  assert sorted(exported) == sorted(expected)
  for name, tensor in expected.items():
    np.testing.assert_array_equal(exported[name], tensor)

  # The command-line sampler applies the method: greedy text equals the decoder's own.
  prompt = "reverse('abc') == '"
  run = subprocess.run(
      [sys.executable, '-m', 'gptjax.generate', f'--workdir={straight}', f'--prompt={prompt}',
       '--temperature=0', '--max_new_tokens=6'], capture_output=True, text=True, cwd=ROOT,
      env={**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  out = decoding.generate(full, np.asarray([list(prompt.encode())], np.int32), None,
                          jax.random.key(0), config=model_cfg, max_new_tokens=6,
                          sampling=SamplingConfig(temperature=0.0), stop_tokens=(0,), pad_id=0)
  ids = [int(i) for i in np.asarray(out.tokens_BxN[0, :int(out.lengths_B[0])]) if i != 0]
  assert run.stdout.rstrip('\n') == prompt + load_tokenizer(straight).decode(ids)


def test_full_method_trains_every_parameter_from_the_base(base_run, tmp_path):
  config = finetune_state.resolve_config(_finetune_config(**{'finetune.method': 'full'}), base_run)
  mesh = sharding.make_mesh(config.mesh)
  _, base_params = loop.load_params(base_run)
  split = finetune_state.create_split_state(config, mesh, sharding.logical_rules(config.mesh),
                                            base_params)
  assert split.frozen == {}
  for a, b in zip(jax.tree.leaves(split.state.params), jax.tree.leaves(base_params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_exact_match_scores_the_right_answers(base_run):
  config, params = loop.load_params(base_run)
  model_cfg = _model_config(config)
  tokenizer = load_tokenizer(base_run)
  prompts = [e.prompt for e in tasks.synthetic_examples('reverse', 5, 0)]
  responses = ['', '', 'x', '', "tnerrif'"]
  examples = [tasks.Example(p, r) for p, r in zip(prompts, responses)]
  assert finetune.exact_match(params, model_cfg, tokenizer, examples, 8) == 0.0
  # A readout that always says EOS: the empty responses, and only they, are right.
  params = jax.device_get(params)
  eos_direction = params['embed']['embedding'][tokenizer.eos_id]
  params['final_norm'] = {'scale': np.zeros_like(params['final_norm']['scale']),
                          'bias': 10 * eos_direction / np.linalg.norm(eos_direction)}
  assert finetune.exact_match(params, model_cfg, tokenizer, examples, 8) == 3 / 5
  assert finetune.exact_match(params, model_cfg, tokenizer, examples, 2) == 3 / 5


def test_bad_input_is_refused_before_anything_is_written(base_run, tmp_path):
  workdir = str(tmp_path / 'never')
  cases = [
      (lambda: finetune.finetune(_finetune_config(), str(tmp_path / 'nothing'), workdir),
       'is not a gptjax run directory'),
      (lambda: finetune.finetune(_set(_finetune_config(), {}), '', workdir), '--init_from'),
  ]
  differing = _finetune_config()
  differing.model = base.get_model_config()
  differing.model.d_model = 48
  cases.append((lambda: finetune.finetune(differing, base_run, workdir),
                "model differs from the checkpoint's .*d_model"))
  for name, text, message in (('empty', '', 'holds no examples'),
                              ('bad', '{"prompt": 1}\n', 'bad.jsonl:1')):
    path = tmp_path / f'{name}.jsonl'
    path.write_text(text)
    config = _finetune_config(**{'finetune.task': 'jsonl', 'finetune.task_path': str(path)})
    cases.append((lambda config=config: finetune.finetune(config, base_run, workdir), message))
  for run, message in cases:
    with pytest.raises((ValueError, OSError), match=message):
      run()
    assert not os.path.exists(workdir)
