"""muP: the parameter classes, the init and learning-rate multipliers, and SP equivalence at the
base width."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_model import SMALL, VARIANTS

from experiments.configs import base
from gptjax.model import gpt as model_lib, parametrization
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.train import optim
from gptjax.train.steps import TrainState, train_step

EXPECTED_CLASS = {  # the last path key of a parameter -> its class
    'embedding': 'input', 'pos_embed': 'input', 'kernel': 'hidden', 'out_kernel': 'hidden',
    'bias': 'vector', 'out_bias': 'vector', 'scale': 'vector'}


def _train_config(**overrides):
  t = base.get_config().train
  t.update(num_steps=100, warmup_steps=3, learning_rate=1e-2, weight_decay=0.1, grad_clip=1.0)
  t.update(**overrides)
  return t


@pytest.mark.parametrize('variant', VARIANTS)
def test_every_parameter_of_every_variant_gets_exactly_one_class(variant):
  cfg = GPTConfig(**{**SMALL, **VARIANTS[variant]}, parametrization='mup', base_width=16)
  rows = optim.param_table(cfg)
  leaves = jax.tree.leaves(nn.unbox(optim.abstract_params(cfg)))
  assert len(rows) == len(leaves) == len({row.path for row in rows})
  for row in rows:
    name = row.path[-1]
    expected = 'output' if row.path[0] == 'head' else EXPECTED_CLASS[name]
    assert row.cls == expected, row
    m = cfg.d_model / 16
    assert row.multipliers.learning_rate == (1 / m if expected == 'hidden' else 1.0)
    assert row.multipliers.init_std == pytest.approx(m**-0.5 if expected == 'hidden' else 1.0)


def test_unknown_axes_are_an_error_not_a_default():
  with pytest.raises(ValueError, match=r"\('embed', 'mystery'\)"):
    parametrization.classify(('embed', 'mystery'))
  with pytest.raises(ValueError, match='No muP class'):
    model_lib._init(GPTConfig(**SMALL), 0.02, ('mystery', 'embed'))
  unnamed = {'layer': {'kernel': jax.ShapeDtypeStruct((4, 4), jnp.float32)}}
  with pytest.raises(ValueError, match='no logical axes'):
    parametrization.table(unnamed, 1.0)
  assert parametrization.classify(('layers', 'embed', 'mlp')) == 'hidden'  # nn.scan's axis


@pytest.mark.parametrize('fields, message', [
    (dict(parametrization='mu'), "parametrization='mu'"),
    (dict(parametrization='mup'), 'needs base_width > 0'),
    (dict(parametrization='mup', base_width=-8), 'base_width=-8'),
])
def test_bad_parametrization_config_is_refused_in_one_message(fields, message):
  with pytest.raises(ValueError, match=message):
    GPTConfig(**SMALL, **fields)


@pytest.mark.slow
def test_init_std_scales_as_one_over_sqrt_width_for_hidden_weights_only():
  cfg = GPTConfig(vocab_size=256, d_model=128, num_layers=2, num_heads=4, max_seq_len=64,
                  parametrization='mup', base_width=32)  # m = 4
  params = nn.unbox(jax.jit(GPT(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  p = params['params']
  np.testing.assert_allclose(np.std(p['embed']['embedding']), 0.02, rtol=0.02)
  np.testing.assert_allclose(np.std(p['pos_embed']), 0.02, rtol=0.02)
  np.testing.assert_allclose(np.std(p['block_0']['mlp']['up']['kernel']), 0.02 / 2, rtol=0.02)
  np.testing.assert_allclose(np.std(p['block_0']['attn']['query']['kernel']), 0.02 / 2, rtol=0.02)
  np.testing.assert_allclose(np.std(p['block_0']['attn']['out_kernel']), 0.02 / 2 / 2, rtol=0.02)


def test_adam_learning_rate_is_divided_by_m_for_hidden_weights_and_decay_is_not():
  cfg = GPTConfig(**{**SMALL, 'd_model': 64}, parametrization='mup', base_width=16)  # m = 4
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.02, s.shape), s.dtype),
                        nn.unbox(optim.abstract_params(cfg)))
  lr, decay = 1e-2, 0.5
  tx = optim.make_optimizer(_train_config(schedule='constant', warmup_steps=0, learning_rate=lr,
                                          weight_decay=decay, grad_clip=0.0), cfg)
  # A gradient of ones: Adam's first direction is 1, times the class's LR multiplier; the decay
  # term is lr * decay * w at every width (not divided by m); norm scales are not decayed.
  grads = jax.tree.map(jnp.ones_like, params)
  updates = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)[0]
  for path, mult in ((('block_0', 'mlp', 'up', 'kernel'), 1 / 4),
                     (('block_1', 'attn', 'key', 'kernel'), 1 / 4),
                     (('embed', 'embedding'), 1.0), (('pos_embed',), 1.0)):
    w = functools.reduce(lambda tree, key: tree[key], path, params)
    u = functools.reduce(lambda tree, key: tree[key], path, updates)
    np.testing.assert_allclose(u, -lr * (mult + decay * w), rtol=1e-4, err_msg=str(path))
  np.testing.assert_allclose(updates['block_0']['mlp_norm']['scale'], -lr, rtol=1e-5)


def _losses(cfg: GPTConfig, train_config, steps: int = 10):
  model = GPT(cfg)
  tx = optim.make_optimizer(train_config, cfg)
  # One batch, repeated: memorising it makes the loss fall, so the steps do train.
  batch = np.random.default_rng(0).integers(0, cfg.vocab_size, (4, 13)).astype(np.int32)
  batches = [batch] * steps

  @jax.jit
  def init(key):
    params = nn.unbox(model.init(key, jnp.asarray(batch[:, :-1]))['params'])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  step = jax.jit(functools.partial(train_step, model=model, optimizer=tx,
                                   schedule=optim.learning_rate_schedule(train_config)))
  state = init(jax.random.key(0))
  first_params = jax.device_get(state.params)
  losses = []
  for batch in batches:
    state, metrics = step(state, jnp.asarray(batch))
    losses.append(float(metrics['train_loss']))
  return first_params, losses


@pytest.mark.slow
def test_mup_at_the_base_width_is_sp_bit_for_bit():
  """Same init, same 10 losses, exactly: every muP multiplier is 1 at d_model == base_width.
  The GPT-2 block: tied embeddings (the readout multiplier), learned positions, biases."""
  sp = GPTConfig(**SMALL)
  mup = dataclasses.replace(sp, parametrization='mup', base_width=sp.d_model)
  train_config = _train_config()
  sp_params, sp_losses = _losses(sp, train_config)
  mup_params, mup_losses = _losses(mup, train_config)
  jax.tree.map(np.testing.assert_array_equal, sp_params, mup_params)
  assert mup_losses == sp_losses
  assert sp_losses[-1] < sp_losses[0] - 0.1  # it trains


@pytest.mark.slow
def test_mup_at_the_base_width_initialises_every_variant_as_sp():
  fields = {**SMALL, **VARIANTS['rope_gqa_swiglu_rms'], 'scan_layers': True}
  tokens = jnp.zeros((1, 4), jnp.int32)
  init = lambda cfg: nn.unbox(jax.jit(GPT(cfg).init)(jax.random.key(0), tokens))
  sp = GPTConfig(**fields)
  mup = dataclasses.replace(sp, parametrization='mup', base_width=sp.d_model)
  jax.tree.map(np.testing.assert_array_equal, init(sp), init(mup))


def _logits(cfg, params, tokens_BxT):
  return GPT(cfg).apply({'params': params}, tokens_BxT)


@pytest.mark.parametrize('heads, base_head_dim, attention_mult', [
    (4, 8, 1.0),             # head_dim fixed at 8, heads grow: no factor on the scores
    (2, 0, 2.0 ** -0.5),     # heads fixed: head_dim 8 -> 16, the scores shrink by sqrt(m)
])
def test_attention_scale_follows_head_dim_not_width(heads, base_head_dim, attention_mult):
  """d_model 32 against a 2-head proxy of width 16 (head_dim 8). With the same weights, muP's
  logits are SP's times the readout's 1/m, once the queries carry `attention_mult`: with a fixed
  head_dim and more heads, scores need no factor (a multiplier of 1/sqrt(m) there would shrink
  them with width)."""
  fields = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=heads, max_seq_len=16,
                attention_impl='xla')
  mup = GPTConfig(**fields, parametrization='mup', base_width=16, base_head_dim=base_head_dim)
  assert mup.attention_mult == pytest.approx(attention_mult)
  tokens_BxT = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
  params = GPT(mup).init(jax.random.key(0), tokens_BxT)['params']
  # SP with the query kernel and bias scaled by the factor computes the same scores.
  scaled = jax.tree_util.tree_map_with_path(
      lambda path, x: x * attention_mult if 'query' in jax.tree_util.keystr(path) else x,
      nn.unbox(params))
  logits_sp = _logits(GPTConfig(**fields), scaled, tokens_BxT)
  np.testing.assert_allclose(_logits(mup, params, tokens_BxT), logits_sp / 2.0, rtol=1e-5,
                             atol=1e-6)


def test_a_proxy_head_dim_that_base_width_cannot_give_is_refused():
  with pytest.raises(ValueError, match='base_width=15 is not divisible by num_heads=2'):
    GPTConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=2, max_seq_len=16,
              parametrization='mup', base_width=15)
