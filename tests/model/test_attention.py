"""The attention entry point: every CPU backend against float64 NumPy, and the backend choice."""

import dataclasses
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.model import attention
from gptjax.model.attention import blocked, cpu_fused
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT


def _reference(q, k, v, mask_TxS):
  """float64 masked softmax attention of [B, T, heads, H] inputs; query head n reads kv n // G."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  g = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
  scores = np.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(q.shape[-1])
  scores = np.where(mask_TxS, scores, -np.inf)
  p = np.exp(scores - scores.max(-1, keepdims=True))
  return np.einsum('bnts,bsnh->btnh', p / p.sum(-1, keepdims=True), v)


def _inputs(b, t, n, k, h, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (b, t, n, h)), jax.random.normal(keys[1], (b, t, k, h)),
          jax.random.normal(keys[2], (b, t, k, h)))


@pytest.mark.parametrize('impl', ['xla', 'blocked', 'cpu_fused'])
@pytest.mark.parametrize('b, t, n, k, h', [(2, 100, 4, 2, 32), (1, 130, 2, 2, 16)])
@pytest.mark.slow
def test_every_cpu_backend_computes_causal_attention(impl, b, t, n, k, h):
  q, key, value = _inputs(b, t, n, k, h)
  got = attention.causal_attention(q, key, value, impl=impl)
  want = _reference(q, key, value, np.tril(np.ones((t, t), bool)))
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_masked_attention_reads_only_the_visible_keys():
  q, key, value = _inputs(2, 9, 4, 2, 16)
  mask_TxS = np.random.default_rng(0).random((9, 9)) < 0.5
  mask_TxS[np.arange(9), np.arange(9)] = True  # every query sees at least itself
  got = attention.masked_attention(q, key, value, jnp.asarray(mask_TxS)[None, None], impl='blocked')
  np.testing.assert_allclose(got, _reference(q, key, value, mask_TxS), atol=2e-5)


@pytest.mark.parametrize('impl', ['', 'flash'])
def test_an_unresolved_or_unknown_backend_is_refused_with_the_choices(impl):
  q, key, value = _inputs(1, 4, 2, 2, 16)
  with pytest.raises(ValueError, match="choose one of \\('xla', 'cudnn', 'blocked', 'cpu_fused'\\)"):
    attention.causal_attention(q, key, value, impl=impl)


@pytest.mark.parametrize('t, n, k, block', [(256, 4, 4, blocked.BLOCK), (100, 6, 2, 32),
                                            (37, 4, 4, 8), (16, 2, 1, 64)])
@pytest.mark.slow
def test_blocked_attention_matches_jax_attention_and_its_gradients(t, n, k, block):
  keys = jax.random.split(jax.random.key(t), 4)
  q = jax.random.normal(keys[0], (2, t, n, 16))
  kv = [jax.random.normal(key, (2, t, k, 16)) for key in keys[1:3]]
  weights = jax.random.normal(keys[3], (2, t, n, 16))
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * weights)
  ours = lambda q, k, v: blocked.causal_attention(q, k, v, block)
  xla = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation='xla')
  np.testing.assert_allclose(ours(q, *kv), xla(q, *kv), atol=2e-6)
  for got, want in zip(jax.grad(loss(ours), (0, 1, 2))(q, *kv), jax.grad(loss(xla), (0, 1, 2))(q, *kv)):
    np.testing.assert_allclose(got, want, atol=1e-5)


def _fake_device(platform, kind, capability=None):
  device = types.SimpleNamespace(platform=platform, device_kind=kind)
  if capability:
    device.compute_capability = capability
  return device


@pytest.mark.parametrize('impl, device, dtype, head_dim, expected', [
    ('', _fake_device('cpu', 'cpu'), jnp.float32, 64, 'cpu_fused'),
    # The fused CPU kernel is float32 with head sizes 16-128 only.
    ('', _fake_device('cpu', 'cpu'), jnp.bfloat16, 64, 'blocked'),
    ('', _fake_device('cpu', 'cpu'), jnp.float32, 48, 'blocked'),
    ('', _fake_device('gpu', 'NVIDIA H100 80GB HBM3', '9.0'), jnp.bfloat16, 64, 'cudnn'),
    ('', _fake_device('gpu', 'NVIDIA A100-SXM4-40GB', '8.0'), jnp.float16, 128, 'cudnn'),
    ('', _fake_device('gpu', 'NVIDIA B200', '10.0'), jnp.bfloat16, 64, 'cudnn'),  # a two-digit major
    # XLA where cuDNN's flash kernel would refuse: float32, an odd or large head, an older GPU,
    # another vendor, a TPU.
    ('', _fake_device('gpu', 'NVIDIA H100 80GB HBM3', '9.0'), jnp.float32, 64, 'xla'),
    ('', _fake_device('gpu', 'NVIDIA H100 80GB HBM3', '9.0'), jnp.bfloat16, 36, 'xla'),
    ('', _fake_device('gpu', 'NVIDIA H100 80GB HBM3', '9.0'), jnp.bfloat16, 256, 'xla'),
    ('', _fake_device('gpu', 'Tesla V100-SXM2-16GB', '7.0'), jnp.bfloat16, 64, 'xla'),
    ('', _fake_device('gpu', 'AMD Instinct MI300X'), jnp.bfloat16, 64, 'xla'),
    ('', _fake_device('tpu', 'TPU v5 lite'), jnp.bfloat16, 128, 'xla'),
    # A named backend is kept.
    ('xla', _fake_device('gpu', 'NVIDIA H100 80GB HBM3', '9.0'), jnp.bfloat16, 64, 'xla'),
    ('blocked', _fake_device('cpu', 'cpu'), jnp.float32, 64, 'blocked'),
])
def test_the_default_is_the_platforms_fastest_backend(impl, device, dtype, head_dim, expected,
                                                     monkeypatch):
  monkeypatch.setattr(cpu_fused, 'has_wide_vectors', lambda: True)  # an AVX-512 host
  choice, why = attention.resolve(impl, device, jnp.dtype(dtype), head_dim)
  assert choice == expected and why


def test_without_avx512_the_default_cpu_backend_is_blocked(monkeypatch):
  monkeypatch.setattr(cpu_fused, 'has_wide_vectors', lambda: False)
  choice, why = attention.resolve('', _fake_device('cpu', 'cpu'), jnp.dtype(jnp.float32), 64)
  assert choice == 'blocked' and 'AVX-512' in why
  named, _ = attention.resolve('cpu_fused', _fake_device('cpu', 'cpu'), jnp.dtype(jnp.float32), 64)
  assert named == 'cpu_fused'  # named, it still runs


def test_wide_vectors_are_read_from_the_cpu_flags(monkeypatch):
  monkeypatch.setattr(cpu_fused, '_cpu_model', lambda: 'model name : X\nflags : fpu avx2 avx512f\n')
  assert cpu_fused.has_wide_vectors()
  monkeypatch.setattr(cpu_fused, '_cpu_model', lambda: 'model name : X\nflags : fpu avx2 avx512\n')
  assert not cpu_fused.has_wide_vectors()


@pytest.mark.parametrize('device, dtype, head_dim', [
    (_fake_device('gpu', 'NVIDIA H100 80GB HBM3', '9.0'), jnp.float32, 64),
    (_fake_device('cpu', 'cpu'), jnp.bfloat16, 64),
    (_fake_device('cpu', 'cpu'), jnp.float32, 48),
])
def test_naming_the_cpu_kernel_where_it_cannot_run_says_what_to_set(device, dtype, head_dim):
  with pytest.raises(ValueError, match="attention_impl=''"):
    attention.resolve('cpu_fused', device, jnp.dtype(dtype), head_dim)


def test_an_unknown_backend_in_the_config_is_refused():
  with pytest.raises(ValueError, match="model.attention_impl='flash'"):
    attention.resolve('flash', _fake_device('cpu', 'cpu'), jnp.float32, 64)


@pytest.mark.parametrize('d_model, expected', [(32, 'gptjax_causal_attention_fwd'),
                                              (16, 'bkgch,bksh->bkgcs')])
@pytest.mark.slow
def test_the_resolved_cpu_backend_is_what_the_model_compiles(d_model, expected, monkeypatch):
  """Head size 16 takes the fused kernel; 8, which it was not built for, the blocked attention."""
  monkeypatch.setattr(cpu_fused, 'has_wide_vectors', lambda: True)  # an AVX-512 host
  cfg = GPTConfig(vocab_size=16, d_model=d_model, num_layers=1, num_heads=2, max_seq_len=8,
                  attention_impl='')
  impl, _ = attention.resolve('', jax.devices()[0], cfg.compute_dtype, cfg.head_dim)
  cfg = dataclasses.replace(cfg, attention_impl=impl)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = nn.unbox(GPT(cfg).init(jax.random.key(0), tokens))
  hlo = jax.jit(GPT(cfg).apply).lower(params, tokens).as_text(debug_info=True)
  assert expected in hlo and 'BTNH,BSNH->BNTS' not in hlo
