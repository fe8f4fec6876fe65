"""GPT model: shapes, causality, position encodings and attention against float64 NumPy
references."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_models import random_model

from gptjax.model import config
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT, CausalSelfAttention, apply_rope, sinusoidal_positions

SMALL = dict(vocab_size=37, d_model=32, num_layers=2, num_heads=4, max_seq_len=16)
VARIANTS = {
    'learned': dict(),
    'sinusoidal': dict(position='sinusoidal'),
    'rope_gqa_swiglu_rms': dict(position='rope', num_kv_heads=2, mlp='swiglu', norm='rmsnorm',
                                use_bias=False, tie_embeddings=False),
    'scan_remat': dict(scan_layers=True, remat='full'),
    'scan_dots_rope': dict(scan_layers=True, remat='dots', position='rope', num_kv_heads=1),
    # Each attention backend that runs on a CPU; decoding with 'blocked' or 'cpu_fused' goes
    # through the masked (XLA) attention.
    'xla_attention': dict(attention_impl='xla'),
    'blocked_attention_gqa': dict(attention_impl='blocked', num_kv_heads=2),
    'cpu_fused_attention_gqa': dict(d_model=64, attention_impl='cpu_fused', num_kv_heads=2),
}


def _init(cfg: GPTConfig, batch: int = 2, length: int = 12):
  tokens = jax.random.randint(jax.random.key(1), (batch, length), 0, cfg.vocab_size)
  params = nn.unbox(GPT(cfg).init(jax.random.key(0), tokens)['params'])
  return params, tokens


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.slow
def test_logits_shape_and_dtype(variant):
  cfg = GPTConfig(**{**SMALL, **VARIANTS[variant]})
  params, tokens = _init(cfg)
  logits = jax.jit(GPT(cfg).apply)({'params': params}, tokens)
  assert logits.shape == (2, 12, cfg.vocab_size)
  assert logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.slow
def test_changing_a_future_token_never_changes_an_earlier_logit(variant):
  cfg = GPTConfig(**{**SMALL, **VARIANTS[variant]})
  params, tokens = _init(cfg)
  apply = jax.jit(GPT(cfg).apply)
  base = np.asarray(apply({'params': params}, tokens))
  for position in (3, 7, 11):
    changed = tokens.at[:, position].set((tokens[:, position] + 5) % cfg.vocab_size)
    out = np.asarray(apply({'params': params}, changed))
    np.testing.assert_array_equal(out[:, :position], base[:, :position])
    assert np.abs(out[:, position:] - base[:, position:]).max() > 1e-6  # the change does matter


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_close_logits():
  cfg32 = GPTConfig(**SMALL)
  cfg16 = GPTConfig(**SMALL, dtype='bfloat16')
  params, tokens = _init(cfg32)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  out32 = np.asarray(GPT(cfg32).apply({'params': params}, tokens))
  out16 = GPT(cfg16).apply({'params': params}, tokens)
  assert out16.dtype == jnp.float32
  # bfloat16 keeps 8 significant bits (7 stored and the implicit one), so each rounding is off by
  # at most 2^-8 relative. The logits pass a few roundings in sequence (the final norm's output,
  # the head matmul's inputs and its output) on top of those carried up the residual stream, so
  # they may be off by a few 2^-8 of their scale, not more: 4 * 2^-8 of the largest logit.
  error = np.abs(np.asarray(out16) - out32).max()
  assert error < 4 * 2.0**-8 * np.abs(out32).max()
  assert error > 0  # the computation does run in bfloat16


def test_sinusoidal_positions_match_the_paper_formula():
  d_model, positions = 16, np.arange(50)
  expected = np.zeros((50, d_model))
  for pos in positions:
    for i in range(d_model // 2):
      expected[pos, 2 * i] = np.sin(pos / 10000 ** (2 * i / d_model))
      expected[pos, 2 * i + 1] = np.cos(pos / 10000 ** (2 * i / d_model))
  got = sinusoidal_positions(jnp.asarray(positions)[None], d_model)[0]
  np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5)


def test_rope_matches_complex_rotation_reference():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 9, 3, 8))
  positions = np.stack([np.arange(9), np.arange(9) + 4])
  half = 4
  pairs = x[..., :half] + 1j * x[..., half:]  # feature i pairs with feature i + H/2
  freqs = 10000.0 ** (-np.arange(half) * 2 / 8)
  rotated = pairs * np.exp(1j * positions[:, :, None, None] * freqs)
  expected = np.concatenate([rotated.real, rotated.imag], axis=-1)
  got = apply_rope(jnp.asarray(x, jnp.float32), jnp.asarray(positions), 10000.0)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4)


def test_rope_scores_depend_only_on_relative_position():
  rng = np.random.default_rng(1)
  q, k = rng.standard_normal((2, 1, 1, 1, 8)).astype(np.float32)

  def score(pos_q, pos_k):
    rq = apply_rope(jnp.asarray(q), jnp.array([[pos_q]]), 10000.0)
    rk = apply_rope(jnp.asarray(k), jnp.array([[pos_k]]), 10000.0)
    return float((rq * rk).sum())

  assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-4)
  assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


@pytest.mark.parametrize('kv_heads', [4, 2, 1])
@pytest.mark.parametrize('position', ['learned', 'rope'])
@pytest.mark.slow
def test_attention_matches_naive_float64(kv_heads, position):
  cfg = GPTConfig(**SMALL, num_kv_heads=kv_heads, position=position)
  x = jax.random.normal(jax.random.key(2), (2, 10, cfg.d_model))
  positions = jnp.broadcast_to(jnp.arange(10), (2, 10))
  module = CausalSelfAttention(cfg)
  params = nn.unbox(module.init(jax.random.key(3), x, positions, None)['params'])
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(4), p.shape), params)
  got = np.asarray(module.apply({'params': params}, x, positions, None))

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  xx = np.asarray(x, np.float64)
  q = np.einsum('btd,dnh->btnh', xx, p['query']['kernel']) + p['query']['bias']
  k = np.einsum('btd,dnh->btnh', xx, p['key']['kernel']) + p['key']['bias']
  v = np.einsum('btd,dnh->btnh', xx, p['value']['kernel']) + p['value']['bias']
  if position == 'rope':
    q = np.asarray(apply_rope(jnp.asarray(q, jnp.float32), positions, 10000.0), np.float64)
    k = np.asarray(apply_rope(jnp.asarray(k, jnp.float32), positions, 10000.0), np.float64)
  group = cfg.num_heads // kv_heads
  k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
  scores = np.einsum('bqnh,bknh->bnqk', q, k) / np.sqrt(cfg.head_dim)
  scores = np.where(np.tril(np.ones((10, 10), bool)), scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum('bnqk,bknh->bqnh', weights, v)
  expected = np.einsum('bqnh,nhd->bqd', out, p['out_kernel']) + p['out_bias']
  np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.slow
def test_kv_cache_prefill_and_steps_reproduce_the_full_forward(variant):
  cfg = GPTConfig(**{**SMALL, **VARIANTS[variant]})
  params, tokens = _init(cfg)
  full = np.asarray(jax.jit(GPT(cfg).apply)({'params': params}, tokens))
  decoder = GPT(cfg, decode=True)
  step = jax.jit(functools.partial(decoder.apply, mutable=['cache']))
  cache = decoder.init(jax.random.key(0), jnp.zeros((2, 12), jnp.int32))['cache']
  logits, state = step({'params': params, 'cache': cache}, tokens[:, :5])
  np.testing.assert_allclose(np.asarray(logits), full[:, :5], atol=2e-5)
  for t in range(5, 12):
    positions = jnp.full((2, 1), t)
    logits, state = step({'params': params, 'cache': state['cache']}, tokens[:, t:t + 1],
                         positions_BxT=positions)
    np.testing.assert_allclose(np.asarray(logits[:, 0]), full[:, t], atol=2e-5)


@pytest.mark.slow
def test_scan_and_unrolled_blocks_compute_the_same_function():
  unrolled, scanned = GPTConfig(**SMALL), GPTConfig(**SMALL, scan_layers=True)
  params, tokens = _init(unrolled)
  stacked = {k: v for k, v in params.items() if not k.startswith('block_')}
  stacked['blocks'] = jax.tree.map(lambda *xs: jnp.stack(xs), params['block_0'], params['block_1'])
  a = GPT(unrolled).apply({'params': params}, tokens)
  b = GPT(scanned).apply({'params': stacked}, tokens)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def _loss(params, cfg: GPTConfig, tokens_BxT):
  """Next-token cross-entropy with dropout on, its masks drawn from a fixed key."""
  logits_BxTxV = GPT(cfg).apply({'params': params}, tokens_BxT[:, :-1], deterministic=False,
                                rngs={'dropout': jax.random.key(5)})
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV)
  return -jnp.take_along_axis(logp_BxTxV, tokens_BxT[:, 1:, None], axis=-1).mean()


@pytest.mark.parametrize('scan', [False, True], ids=['unrolled', 'scanned'])
@pytest.mark.slow
def test_remat_leaves_the_gradients_unchanged(scan):
  """'full' and 'dots' recompute activations in the backward pass, and only there; the gradients
  of the loss, with dropout on (so the recomputation must redraw the same masks), equal
  remat='none'.

  The recomputation runs the same float32 operations, fused and summed in a possibly different
  order: a few float32 roundings (2^-24 each) apart, far inside rtol=1e-5. Gradients that are zero
  in exact arithmetic (the key bias: softmax ignores a constant added to a row of logits) come out
  as rounding noise, hence atol 1e-6 of the largest gradient entry.
  """
  overrides = (('dropout', 0.1), ('scan_layers', scan))
  _, params = random_model(0.2, tuple(sorted(SMALL.items())), overrides)  # no flax init: quick
  cfgs = [GPTConfig(**SMALL, **dict(overrides), remat=remat) for remat in config.REMATS]
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, SMALL['vocab_size'])
  all_grads = jax.jit(lambda p, t: [jax.grad(_loss)(p, cfg, t) for cfg in cfgs])(params, tokens)
  grads = dict(zip(config.REMATS, jax.tree.map(np.asarray, all_grads)))
  scale = max(np.abs(g).max() for g in jax.tree.leaves(grads['none']))
  assert np.isfinite(scale) and scale > 0
  for remat in ('full', 'dots'):
    jax.tree.map(lambda want, got: np.testing.assert_allclose(got, want, rtol=1e-5,
                                                              atol=1e-6 * scale),
                 grads['none'], grads[remat])


def test_tied_head_uses_the_embedding_and_untied_adds_a_head():
  tied_params, _ = _init(GPTConfig(**SMALL))
  untied_params, _ = _init(GPTConfig(**SMALL, tie_embeddings=False))
  assert 'head' not in tied_params
  assert untied_params['head']['kernel'].shape == (32, 37)


def test_every_parameter_carries_logical_axis_names():
  cfg = GPTConfig(**SMALL, **VARIANTS['rope_gqa_swiglu_rms'])
  boxed = jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  assert all(len(x.names) == x.value.ndim for x in leaves)
  names = nn.get_partition_spec(boxed)
  assert tuple(names['embed']['embedding']) == ('vocab', 'embed')
  assert tuple(names['block_0']['attn']['key']['kernel']) == ('embed', 'kv_heads', 'head_dim')


@pytest.mark.parametrize('bad, message', [
    (dict(d_model=30, num_heads=4), 'not divisible by num_heads'),
    (dict(num_heads=4, num_kv_heads=3), 'not divisible by num_kv_heads'),
    (dict(position='alibi'), "position='alibi'"),
    (dict(mlp='relu'), "mlp='relu'"),
    (dict(dtype='int8'), "dtype='int8'"),
])
def test_bad_model_configs_are_refused_with_the_fix(bad, message):
  values = {**SMALL, **bad}
  with pytest.raises(ValueError, match=message):
    GPTConfig(**values)


def test_unknown_config_field_is_named():
  with pytest.raises(ValueError, match='num_layer'):
    GPTConfig.from_config({'num_layer': 3})
