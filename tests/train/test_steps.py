"""Loss and train step: the loss against a hand computation, accumulation, dropout, learning."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import base
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.train import optim
from gptjax.train.steps import TrainState, cross_entropy, eval_step, loss_fn, token_nll, train_step


def test_cross_entropy_matches_hand_computation():
  logits = np.array([[[2.0, 1.0, 0.1], [0.5, 0.5, 3.0]]])
  targets = np.array([[0, 1]])
  # -log softmax by hand, in float64
  expected = np.mean([
      -(2.0 - np.log(np.exp(2.0) + np.exp(1.0) + np.exp(0.1))),
      -(0.5 - np.log(np.exp(0.5) + np.exp(0.5) + np.exp(3.0))),
  ])
  got = float(cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(targets)))
  assert abs(got - expected) < 1e-6


def test_uniform_logits_give_log_vocab():
  logits = jnp.zeros((2, 5, 37))
  targets = jnp.zeros((2, 5), jnp.int32)
  np.testing.assert_allclose(float(cross_entropy(logits, targets)), np.log(37), rtol=1e-6)


def test_token_nll_and_its_gradient_match_float64_softmax():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (2, 5, 11))
  targets = rng.integers(0, 11, (2, 5))
  targets[0, :2] = [0, 10]  # both ends of the vocabulary
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  onehot = np.eye(11)[targets]
  expected_nll = -(log_probs * onehot).sum(-1)
  expected_grad = (np.exp(log_probs) - onehot) / targets.size  # d mean(nll) / d logits

  nll = token_nll(jnp.asarray(logits, jnp.float32), jnp.asarray(targets))
  grad = jax.grad(cross_entropy)(jnp.asarray(logits, jnp.float32), jnp.asarray(targets))
  np.testing.assert_allclose(np.asarray(nll), expected_nll, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-5, atol=1e-7)

  # bfloat16 logits (the GPU training dtype) are upcast before the softmax: the gradient matches
  # the float64 one of the same rounded logits to bfloat16's own rounding, and comes back in
  # bfloat16.
  logits_bf16 = jnp.asarray(logits, jnp.bfloat16)
  rounded = np.asarray(logits_bf16, np.float64)
  rounded_probs = np.exp(rounded - rounded.max(-1, keepdims=True))
  rounded_probs /= rounded_probs.sum(-1, keepdims=True)
  grad_bf16 = jax.grad(cross_entropy)(logits_bf16, jnp.asarray(targets))
  assert grad_bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(grad_bf16, np.float64),
                             (rounded_probs - onehot) / targets.size, rtol=2 ** -8, atol=1e-7)


def _setup(accum=1, dropout=0.0, warmup=5):
  config = base.get_config()
  config.train.num_steps, config.train.warmup_steps = 50, warmup
  config.train.grad_accum_steps = accum
  cfg = GPTConfig(vocab_size=29, d_model=32, num_layers=2, num_heads=4, max_seq_len=16,
                  dropout=dropout)
  model = GPT(cfg)
  tx = optim.make_optimizer(config.train)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))['params'])
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  step = jax.jit(functools.partial(
      train_step, model=model, optimizer=tx, schedule=optim.learning_rate_schedule(config.train),
      grad_accum_steps=accum, dropout_seed=0 if dropout else None))
  batch = jax.random.randint(jax.random.key(1), (8, 17), 0, 29)
  return state, step, batch, model


def _recording_optimizer():
  """Leaves the parameters alone and keeps the step's gradient as its state."""
  return optax.GradientTransformation(
      init=lambda params: jax.tree.map(jnp.zeros_like, params),
      update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


@pytest.mark.slow
def test_gradient_accumulation_matches_one_large_batch():
  """Four micro-batches give the whole batch's loss, gradient and AdamW update (learning rate >
  0)."""
  state1, step1, batch, model = _setup(accum=1, warmup=0)
  state4, step4, _, _ = _setup(accum=4, warmup=0)
  ref_loss, ref_grads = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, model, batch, None)))(
      state1.params)
  ref_norm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree.leaves(ref_grads)))
  new1, m1 = step1(state1, batch)
  new4, m4 = step4(state4, batch)
  for m in (m1, m4):
    np.testing.assert_allclose(float(m['train_loss']), float(ref_loss), rtol=1e-5)
    np.testing.assert_allclose(float(m['grad_norm']), ref_norm, rtol=1e-5)
  # Adam's first step moves each weight by lr * g / (|g| + eps), which magnifies the rounding of
  # gradients near zero: the two updates agree to 1% of the learning rate.
  lr, moved = float(m4['learning_rate']), 0.0
  assert lr > 0
  for old, a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(new1.params),
                       jax.tree.leaves(new4.params)):
    assert np.isfinite(b).all()
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-2 * lr)
    moved = max(moved, float(np.abs(np.asarray(b) - np.asarray(old)).max()))
  assert moved > 0.5 * lr  # the step changed the parameters

  # The accumulated gradient itself, leaf by leaf, against one pass over the whole batch.
  recorder = _recording_optimizer()
  step = jax.jit(functools.partial(train_step, model=model, optimizer=recorder,
                                   schedule=optax.constant_schedule(0.0), grad_accum_steps=4))
  state = TrainState(step=state4.step, params=state4.params, opt_state=recorder.init(state4.params))
  grads4 = step(state, batch)[0].opt_state
  # atol: the key bias's gradient is zero (softmax ignores a shift of every logit), up to rounding
  largest = max(float(np.abs(g).max()) for g in jax.tree.leaves(ref_grads))
  for g, ref in zip(jax.tree.leaves(grads4), jax.tree.leaves(ref_grads)):
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6 * largest)


def test_repeated_steps_on_one_batch_drive_the_loss_down():
  state, step, batch, _ = _setup()
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics['train_loss']))
  assert losses[-1] < 0.85 * losses[0]
  assert losses[-1] < min(losses[:10])
  assert int(state.step) == 30


@pytest.mark.slow
def test_dropout_changes_the_loss_and_is_reproducible():
  state, step, batch, _ = _setup(dropout=0.5)
  plain_state, plain_step, _, _ = _setup()
  _, with_dropout = step(state, batch)
  _, again = step(_setup(dropout=0.5)[0], batch)
  _, without = plain_step(plain_state, batch)
  assert float(with_dropout['train_loss']) != float(without['train_loss'])
  assert float(with_dropout['train_loss']) == float(again['train_loss'])


def test_eval_step_sums_token_losses():
  state, _, batch, model = _setup()
  total, count, hits = np.asarray(eval_step(state.params, batch, model=model))
  logits = model.apply({'params': state.params}, batch[:, :-1])
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).sum()
  assert count == 8 * 16
  np.testing.assert_allclose(total, float(expected), rtol=1e-5)
  assert hits == np.sum(np.argmax(np.asarray(logits), -1) == np.asarray(batch[:, 1:]))
