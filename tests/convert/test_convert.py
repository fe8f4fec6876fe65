"""GPT-2 checkpoints in and out, checked against `transformers` running the same weights.

A random `GPT2LMHeadModel` (2 layers, width 64, 4 heads, dropout 0) with every parameter perturbed
(biases and LayerNorm terms included, so a mix-up of any two tensors shows), saved by
`save_pretrained` beside the `vocab.json` and `merges.txt` of a small BPE, is the outside
reference: logits, loss, gradients and greedy tokens must match it; nothing is downloaded.
"""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from experiments.configs import base
from gptjax import convert, train
from gptjax.convert import hf_gpt2
from gptjax.convert.hf_gpt2 import ConversionError
from gptjax.data.tokenizer import load_tokenizer, train_bpe
from gptjax.generate import decoding
from gptjax.generate.sampling import SamplingConfig
from gptjax.model.attention import cpu_fused
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.runs import run_dir
from gptjax.train import steps

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
safetensors_numpy = pytest.importorskip('safetensors.numpy')

ROOT = pathlib.Path(__file__).resolve().parents[2]
N_POSITIONS, VOCAB = 64, 300
TEXT = 'def add(x, y):\n    return x + y\n\nThe quick brown fox jumps over the lazy dog.\n'
# The imported run's training settings: a short run on a small text corpus.
OVERRIDES = {'data.seq_len': 32, 'data.batch_size': 8, 'data.source': 'text',
             'train.num_steps': 2, 'train.warmup_steps': 1, 'train.learning_rate': 1e-5,
             'train.log_every': 1, 'train.eval_every': 2, 'train.eval_batches': 1,
             'train.async_checkpoints': False}
BACKENDS = ['xla', 'blocked', 'cpu_fused']


def _run_config(corpus: str, **extra) -> ml_collections.ConfigDict:
  config = base.get_config()
  for key, value in {**OVERRIDES, 'data.paths': corpus, **extra}.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  """A saved random GPT-2 with a tokenizer; its torch model in float32 eval mode."""
  torch.set_num_threads(1)
  directory = tmp_path_factory.mktemp('hf')
  tokenizer = train_bpe(iter([TEXT * 4] * 50), VOCAB)
  tokenizer._tok.model.save(str(directory))  # vocab.json and merges.txt, as GPT-2 ships them
  torch.manual_seed(0)
  config = transformers.GPT2Config(
      n_layer=2, n_embd=64, n_head=4, vocab_size=tokenizer.vocab_size, n_positions=N_POSITIONS,
      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.eos_id,
      eos_token_id=tokenizer.eos_id)
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():
    for param in model.parameters():
      param.add_(0.1 * torch.randn_like(param))
  model.save_pretrained(str(directory))
  return str(directory), model


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp('corpus') / 'corpus.txt'
  path.write_text(TEXT * 200)
  return str(path)


@pytest.fixture(scope='module')
def imported(hf_dir, corpus, tmp_path_factory):
  """scan_layers -> (workdir, model config, params) of the GPT-2 imported with it; each import is
  made on first use and shared by the module's tests."""
  made = {}

  def get(scan_layers: bool):
    if scan_layers not in made:
      workdir = str(tmp_path_factory.mktemp('run') / 'imported')
      convert.import_hf(hf_dir[0], workdir, _run_config(corpus, **{'model.scan_layers': scan_layers}))
      config, params = train.load_params(workdir)
      cfg = dataclasses.replace(GPTConfig.from_config(config.model), attention_impl='xla')
      made[scan_layers] = workdir, cfg, jax.device_get(params)
    return made[scan_layers]
  return get


def _tokens(batch: int, length: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, VOCAB, (batch, length)).astype(np.int32)


def _torch_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()


@pytest.mark.parametrize('scan_layers', [False, True], ids=['unrolled', 'scan'])
@pytest.mark.parametrize('impl', BACKENDS)
@pytest.mark.slow
def test_imported_logits_equal_transformers_for_every_cpu_attention_backend(hf_dir, imported, impl,
                                                                            scan_layers):
  if impl == 'cpu_fused' and cpu_fused.unavailable_reason():
    pytest.skip(cpu_fused.unavailable_reason())
  _, cfg, params = imported(scan_layers)
  tokens = _tokens(2, N_POSITIONS)
  cfg = dataclasses.replace(cfg, attention_impl=impl)
  ours = jax.jit(GPT(cfg).apply)({'params': params}, tokens)
  want = _torch_logits(hf_dir[1], tokens)
  assert np.abs(want).max() > 1.0  # logits far from zero: a 1e-5 match means something
  np.testing.assert_allclose(ours, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('scan_layers', [False, True], ids=['unrolled', 'scan'])
def test_export_loads_in_transformers_and_imports_back_bitwise(hf_dir, imported, tmp_path,
                                                               scan_layers):
  workdir, cfg, params = imported(scan_layers)
  out = str(tmp_path / 'export')
  convert.export_hf(workdir, out)
  model = transformers.GPT2LMHeadModel.from_pretrained(out, attn_implementation='eager').eval()
  tokens = _tokens(2, N_POSITIONS, seed=1)
  ours = jax.jit(GPT(cfg).apply)({'params': params}, tokens)
  np.testing.assert_allclose(_torch_logits(model, tokens), ours, atol=1e-5, rtol=0)

  hf_config, tensors = convert.read_hf_checkpoint(out)
  fields = hf_gpt2.model_fields(hf_config)
  assert fields == {name: getattr(cfg, name) for name in fields}
  jax.tree.map(np.testing.assert_array_equal, hf_gpt2.params_from_hf(tensors, cfg), params)
  # and export(import(x)) is x, tensor by tensor (the key biases included, which no logit shows)
  _, original = convert.read_hf_checkpoint(hf_dir[0])
  assert sorted(tensors) == sorted(original)
  for name, tensor in original.items():
    np.testing.assert_array_equal(tensors[name], tensor, err_msg=name)

  # The run's tokenizer goes along, readable by transformers, with the same ids.
  hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(out, 'tokenizer.json'))
  assert hf_tokenizer(TEXT)['input_ids'] == load_tokenizer(workdir).encode(TEXT).tolist()
  assert json.loads(pathlib.Path(out, 'config.json').read_text())['eos_token_id'] == 0


def test_loss_and_gradients_of_a_batch_equal_pytorch(hf_dir, imported):
  _, cfg, params = imported(False)
  batch = _tokens(4, 33, seed=2)
  loss, grads = jax.jit(jax.value_and_grad(steps.loss_fn), static_argnums=(1, 3))(
      params, GPT(cfg), batch, None)
  model = hf_dir[1]
  model.zero_grad()
  torch_loss = model(torch.from_numpy(batch.astype(np.int64)), labels=torch.from_numpy(
      batch.astype(np.int64))).loss
  torch_loss.backward()
  # The mapping is a relayout, so it carries PyTorch's gradients into gptjax's tree as well.
  torch_grads = hf_gpt2.params_from_hf(
      {name: p.grad.numpy() for name, p in model.named_parameters()}, cfg)
  np.testing.assert_allclose(float(loss), torch_loss.item(), rtol=1e-4)
  # Each element within 1e-4 of PyTorch's, or within 1e-5 of the largest gradient: the key biases'
  # gradient is zero in exact arithmetic (softmax ignores a shift shared by all keys) and float
  # noise (~1e-8) in both.
  largest = max(np.abs(want).max() for want in jax.tree.leaves(torch_grads))
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(torch_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * largest)


def test_greedy_decoding_of_32_tokens_equals_transformers_generate(hf_dir, imported):
  workdir, cfg, params = imported(True)
  tokenizer = load_tokenizer(workdir)  # the run's copy of GPT-2's BPE
  prompt = tokenizer.encode('def add(x, y):')
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir[0])  # from the same two files
  assert hf_tokenizer('def add(x, y):')['input_ids'] == prompt.tolist()
  out = decoding.generate(params, prompt[None], None, jax.random.key(0), config=cfg,
                          max_new_tokens=32, sampling=SamplingConfig(temperature=0.0))
  with torch.no_grad():
    want = hf_dir[1].generate(torch.from_numpy(prompt[None].astype(np.int64)), do_sample=False,
                              max_new_tokens=32, eos_token_id=None, pad_token_id=0)
  assert np.asarray(out.tokens_BxN[0]).tolist() == want[0, len(prompt):].tolist()
  # No step is a near-tie that float rounding could flip: the comparison means the same anywhere.
  sequence = np.concatenate([prompt, np.asarray(out.tokens_BxN[0])])[None, :-1]
  sorted_NxV = np.sort(np.asarray(GPT(cfg).apply({'params': params}, sequence))[0, len(prompt) - 1:])
  assert (sorted_NxV[:, -1] - sorted_NxV[:, -2]).min() > 1e-4


@pytest.mark.slow
def test_the_imported_run_trains_on_from_its_weights(imported, corpus, tmp_path):
  """gptjax.main's own loop resumes the imported step-0 checkpoint (a tiny learning rate keeps the
  trained weights within 1e-3 of it; a fresh initialisation would be ~0.1 away)."""
  workdir, _, params = imported(True)
  run = str(tmp_path / 'run')
  shutil.copytree(workdir, run)
  record = train.train_and_evaluate(run_dir.read_config(run), run)
  assert record['step'] == 2 and np.isfinite(record['eval_loss'])
  trained = jax.device_get(train.load_params(run)[1])
  distance = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(trained),
                                                           jax.tree.leaves(params)))
  assert 0 < distance < 1e-3


def test_pytorch_bin_without_prefix_and_with_mask_buffers_reads_the_same(hf_dir, imported, tmp_path):
  _, cfg, params = imported(False)
  source, model = hf_dir
  state = {name.removeprefix('transformer.'): tensor for name, tensor in model.state_dict().items()
           if name != 'lm_head.weight'}  # GPT2Model's names, as in the original release
  for i in range(2):
    state[f'h.{i}.attn.bias'] = torch.tril(torch.ones(1, 1, N_POSITIONS, N_POSITIONS))
    state[f'h.{i}.attn.masked_bias'] = torch.tensor(-1e4)
  torch.save(state, tmp_path / convert.TORCH_BIN)
  shutil.copy(os.path.join(source, 'config.json'), tmp_path)
  _, tensors = convert.read_hf_checkpoint(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, hf_gpt2.params_from_hf(tensors, cfg), params)


def _broken(source: str, target: pathlib.Path, config=None, tensors=None) -> str:
  """A copy of `source` with config.json's fields and the tensors changed (None deletes one)."""
  shutil.copytree(source, target)
  hf_config = json.loads((target / 'config.json').read_text())
  (target / 'config.json').write_text(json.dumps({**hf_config, **(config or {})}))
  weights = safetensors_numpy.load_file(str(target / convert.SAFETENSORS))
  for name, value in (tensors or {}).items():
    weights.pop(name) if value is None else weights.update({name: value})
  safetensors_numpy.save_file(weights, str(target / convert.SAFETENSORS))
  return str(target)


BAD_CHECKPOINTS = {
    'missing_tensor': (dict(tensors={'transformer.h.1.mlp.c_fc.bias': None}),
                       "lacks 1 tensor(s) that config.json implies, e.g. ['h.1.mlp.c_fc.bias']"),
    'wrong_shape': (dict(tensors={'transformer.h.0.attn.c_attn.weight': np.zeros((64, 64), np.float32)}),
                    "'h.0.attn.c_attn.weight' has shape (64, 64) but config.json implies (64, 192)"),
    'unknown_tensor': (dict(tensors={'score.weight': np.zeros((2, 64), np.float32)}),
                       "holds 'score.weight', which is not a tensor of a 2-layer GPT-2"),
    'not_gpt2': (dict(config={'model_type': 'gpt_neo'}), "model_type='gpt_neo', not 'gpt2'"),
    'exact_gelu': (dict(config={'activation_function': 'gelu'}), "activation_function='gelu'"),
    'untied': (dict(config={'tie_word_embeddings': False}), 'tie_word_embeddings=false'),
    'too_short': (dict(config={'n_positions': 16},
                       tensors={'transformer.wpe.weight': np.zeros((16, 64), np.float32)}),
                  "data.seq_len=32 exceeds the checkpoint's n_positions=16"),
}


@pytest.mark.parametrize('case', BAD_CHECKPOINTS)
def test_a_bad_checkpoint_is_refused_before_anything_is_written(hf_dir, corpus, tmp_path, case):
  changes, message = BAD_CHECKPOINTS[case]
  source = _broken(hf_dir[0], tmp_path / 'hf', **changes)
  workdir = tmp_path / 'run'
  with pytest.raises(ConversionError, match=re.escape(message)):
    convert.import_hf(source, str(workdir), _run_config(corpus))
  assert not workdir.exists()


def test_a_missing_directory_or_a_taken_workdir_is_refused(imported, corpus, tmp_path):
  with pytest.raises(ConversionError, match='no such directory'):
    convert.import_hf(str(tmp_path / 'absent'), str(tmp_path / 'run'), _run_config(corpus))
  with pytest.raises(ConversionError, match='already holds a run'):
    convert.import_hf(str(tmp_path / 'absent'), imported(False)[0], _run_config(corpus))


@pytest.mark.parametrize('overrides, reason', [
    (dict(position='rope'), "position='rope'"), (dict(mlp='swiglu'), "mlp='swiglu'"),
    (dict(norm='rmsnorm'), "norm='rmsnorm'"), (dict(num_kv_heads=2), 'num_kv_heads=2'),
    (dict(tie_embeddings=False), 'tie_embeddings=False'), (dict(use_bias=False), 'use_bias=False'),
    (dict(parametrization='mup', base_width=64), "parametrization='mup' at d_model=128"),
])
def test_a_model_gpt2_cannot_express_is_refused_with_the_reason(tmp_path, overrides, reason):
  config = base.get_config()
  config.model.update(overrides)
  workdir, out = str(tmp_path / 'run'), tmp_path / 'export'
  run_dir.write_config(workdir, config)  # refused before the checkpoint is read
  with pytest.raises(ConversionError, match=f'GPT-2 cannot express the model of .*{reason}'):
    convert.export_hf(workdir, str(out))
  assert not out.exists()
  assert hf_gpt2.unexpressible(GPTConfig.from_config(base.get_config().model)) == []


def test_the_command_line_refuses_in_one_line_with_status_2(hf_dir, corpus, tmp_path):
  source = _broken(hf_dir[0], tmp_path / 'hf', tensors={'transformer.ln_f.bias': None})
  workdir = tmp_path / 'run'
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  run = subprocess.run(
      [sys.executable, '-m', 'gptjax.convert', 'from-hf', f'--hf_dir={source}',
       f'--workdir={workdir}', '--config=experiments/configs/base.py', '--config.data.seq_len=32'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 2, run.stderr[-3000:]
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('gptjax.convert: error: '), run.stderr[-3000:]
  assert "['ln_f.bias']" in lines[0]
  assert not workdir.exists()


