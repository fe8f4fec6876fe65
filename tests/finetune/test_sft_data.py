"""Fine-tuning examples and rows: the tasks' answers, the split, the loss mask and padding.

The loss checks run the training step's own loss (`steps.loss_fn`) on rows from `sft_data` and
compare it with a float64 NumPy reference over the response tokens only.
"""

import ast
import functools
import json
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gptjax.data import masking
from gptjax.data.tokenizer import ByteTokenizer
from gptjax.finetune import sft_data, tasks as sft_tasks
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.train import steps

TOKENIZER = ByteTokenizer()


def test_synthetic_answers_are_right_and_validation_is_unseen():
  for task in sft_tasks.SYNTHETIC_TASKS:
    val = sft_tasks.synthetic_examples(task, 50, seed=7)
    train = sft_tasks.synthetic_examples(task, 500, seed=0, exclude={e.prompt for e in val})
    assert len({e.prompt for e in train}) == 500
    assert not {e.prompt for e in train} & {e.prompt for e in val}
    for example in train[:50]:
      if task == 'add':
        a, b = example.prompt.removesuffix(' == ').split(' + ')
        assert example.response == str(int(a) + int(b))
      else:
        s = example.prompt.split("'")[1]
        assert example.response == (s[::-1] if task == 'reverse' else ''.join(sorted(s))) + "'"
  assert sft_tasks.synthetic_examples('sort', 20, 3) == sft_tasks.synthetic_examples('sort', 20, 3)


def test_function_examples_split_signature_and_docstring_from_body():
  source = ('import os\n\n@staticmethod\ndef f(x,\n      y):\n  """Adds.\n\n  More."""\n'
            '  z = x + y\n  return z\n\ndef g():\n  """No body."""\n\ndef h():\n  return 1\n')
  examples = list(sft_tasks.function_examples(source))
  assert examples == [sft_tasks.Example(
      '@staticmethod\ndef f(x,\n      y):\n  """Adds.\n\n  More."""\n', '  z = x + y\n  return z\n')]
  assert list(sft_tasks.function_examples('def broken(:\n')) == []


def _jsonl_config(path, eval_path=''):
  return ml_collections.ConfigDict({
      'seed': 0, 'finetune': {'task': 'jsonl', 'task_path': str(path), 'eval_path': eval_path,
                              'num_examples': 10, 'eval_examples': 10}})


def test_jsonl_task_reads_splits_and_names_a_bad_line(tmp_path):
  path = tmp_path / 'task.jsonl'
  rows = [{'prompt': f'q{i}', 'response': f'a{i}'} for i in range(200)]
  path.write_text('\n'.join(json.dumps(r) for r in rows) + '\n\n')
  task = sft_tasks.load_task(_jsonl_config(path))
  assert 0 < len(task.validation) < 40 and len(task.train) + len(task.validation) == 200
  assert not {e.prompt for e in task.train} & {e.prompt for e in task.validation}
  assert task == sft_tasks.load_task(_jsonl_config(path))  # a stable split

  bad_cases = {
      '{"prompt": "a", "response": "b"}\n{"prompt": "a", "resp': 'task.jsonl:2: not valid JSON',
      '{"prompt": "a", "response": 3}\n': 'task.jsonl:1: expected an object with string fields',
      '["a", "b"]\n': 'task.jsonl:1: expected an object',
      '{"prompt": "a", "response": ""}\n': 'task.jsonl:1: the response is empty',
      '\n\n': 'holds no examples',
  }
  for text, message in bad_cases.items():
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
      sft_tasks.load_task(_jsonl_config(path))
  with pytest.raises(ValueError, match='task_path, which is empty'):
    sft_tasks.load_task(_jsonl_config(''))
  with pytest.raises(ValueError, match='finetune.task='):
    sft_tasks.check_config(ml_collections.ConfigDict({'task': 'poetry', 'num_examples': 1,
                                                      'eval_examples': 1}))


def test_row_labels_only_the_response_and_eos():
  example = sft_tasks.Example('ab', 'xyz')
  row_2xT = sft_data.example_row(TOKENIZER, example, seq_len=8)
  inputs, labels = row_2xT
  ids = list(b'abxyz') + [TOKENIZER.eos_id]
  np.testing.assert_array_equal(inputs[:5], ids[:5])
  # position 1 ('b') predicts 'x', the first response token; the last real position predicts EOS
  expected = [masking.IGNORE, ord('x'), ord('y'), ord('z'), TOKENIZER.eos_id] + [masking.IGNORE] * 3
  np.testing.assert_array_equal(labels, expected)
  assert sft_data.example_row(TOKENIZER, example, seq_len=4) is None  # 6 tokens > seq_len + 1
  empty_prompt = sft_data.example_row(TOKENIZER, sft_tasks.Example('', 'q'), seq_len=4)
  np.testing.assert_array_equal(empty_prompt[:, :2], [[TOKENIZER.eos_id, ord('q')],
                                                      [ord('q'), TOKENIZER.eos_id]])


@functools.cache
def _model():
  cfg = GPTConfig(vocab_size=256, d_model=32, num_layers=2, num_heads=2, max_seq_len=32)
  model = GPT(cfg)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params']
  return model, params


EXAMPLES = [sft_tasks.Example('abc', 'de'), sft_tasks.Example('hello ', 'world'),
            sft_tasks.Example('x', 'yyyyyyyy')]


@pytest.mark.slow
def test_loss_is_the_mean_nll_of_response_tokens_in_float64():
  model, params = _model()
  batch = jnp.asarray(sft_data.example_rows(TOKENIZER, EXAMPLES, 24, 'train')[0])
  loss = jax.jit(steps.loss_fn, static_argnums=(1,))(params, model, batch, None)
  logits = np.asarray(jax.jit(model.apply)({'params': params}, batch[:, 0]), np.float64)
  log_probs = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                     keepdims=True)) - logits.max(-1, keepdims=True)
  nll = []
  for row, example in enumerate(EXAMPLES):
    ids = list(example.prompt.encode()) + list(example.response.encode()) + [0]
    for i in range(len(example.prompt) - 1, len(ids) - 1):  # targets: response and EOS
      nll.append(-log_probs[row, i, ids[i + 1]])
  np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-6)


@pytest.mark.slow
def test_prompt_predictions_get_no_gradient():
  model, params = _model()
  batch = jnp.asarray(sft_data.example_rows(TOKENIZER, EXAMPLES, 24, 'train')[0])
  logits = jax.jit(model.apply)({'params': params}, batch[:, 0])

  def loss_of_logits(logits_BxTxV):
    labels_BxT = batch[:, 1]
    selected_BxT = labels_BxT != masking.IGNORE
    nll_BxT = steps.token_nll(logits_BxTxV, jnp.where(selected_BxT, labels_BxT, 0))
    return jnp.sum(jnp.where(selected_BxT, nll_BxT, 0.0)) / jnp.sum(selected_BxT)

  np.testing.assert_allclose(loss_of_logits(logits), steps.loss_fn(params, model, batch, None),
                             rtol=1e-6)
  grad_BxT = np.abs(np.asarray(jax.jit(jax.grad(loss_of_logits))(logits))).sum(-1)
  for row, example in enumerate(EXAMPLES):
    first = len(example.prompt) - 1
    last = len(example.prompt) + len(example.response)
    assert np.all(grad_BxT[row, :first] == 0) and np.all(grad_BxT[row, last:] == 0)
    assert np.all(grad_BxT[row, first:last] > 0)


def test_padding_changes_neither_loss_nor_gradient():
  model, params = _model()
  tight = jnp.asarray(sft_data.example_rows(TOKENIZER, EXAMPLES[:2], 12, 'train')[0])
  padded = jnp.asarray(sft_data.example_rows(TOKENIZER, EXAMPLES[:2], 24, 'train')[0])
  grad_fn = jax.jit(jax.value_and_grad(steps.loss_fn), static_argnums=(1,))
  (loss_a, grads_a), (loss_b, grads_b) = grad_fn(params, model, tight, None), grad_fn(
      params, model, padded, None)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  moved = padded.at[0, 0, 20].set(99)  # a pad input: only later pads could see it
  np.testing.assert_array_equal(grad_fn(params, model, moved, None)[0], loss_b)


def test_too_long_examples_are_dropped_or_refused():
  rows, _ = sft_data.example_rows(TOKENIZER, EXAMPLES, 10, 'train')
  assert len(rows) == 2  # 'x' + 8 y's + EOS fits; 'hello world' does not
  with pytest.raises(ValueError, match='No train example fits'):
    sft_data.example_rows(TOKENIZER, EXAMPLES, 3, 'train')


def test_docstring_task_splits_functions_by_file_like_pretraining():
  from experiments.configs import base
  config = base.get_config()
  config.data.max_corpus_bytes = 2_000_000
  config.finetune = ml_collections.ConfigDict({'task': 'docstring', 'num_examples': 300,
                                               'eval_examples': 30})
  task = sft_tasks.load_task(config)
  assert len(task.train) == 300 and 0 < len(task.validation) <= 30 and not task.exact_match
  assert not {e.prompt for e in task.train} & {e.prompt for e in task.validation}
  for example in task.train[:50]:
    # signature + docstring + body is the whole function again, and the prompt ends at its docstring
    function = ast.parse(textwrap.dedent(example.prompt + example.response)).body[0]
    assert isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
    assert ast.get_docstring(function) and example.response.strip()
    assert function.body[0].end_lineno == example.prompt.count('\n')
