"""The fused CPU attention kernel (gptjax/model/attention/causal_attention.cc) against float64 NumPy.

The kernel is C++ built at first use with the host's compiler; these tests need one (the CI machine
has g++). Its output and all three input gradients are compared with a float64 softmax attention
written out below, for every head size it takes, grouped-query heads, sequence lengths that its
8-row blocks and 16-key vectors do not divide, and on a mesh of 8 devices where each device must
run it on its own rows and heads.
"""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from gptjax.model.attention import cpu_fused


ROOT = str(pathlib.Path(__file__).resolve().parents[2])


def _reference(q, k, v, weights):
  """float64 causal attention of [B, T, heads, H] inputs and the gradients of sum(out * weights)."""
  q, k, v, weights = (np.asarray(x, np.float64) for x in (q, k, v, weights))
  b, t, n, h = q.shape
  g = n // k.shape[2]
  k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)  # query head i reads kv head i // g
  scores_BxNxTxS = np.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(h)
  scores_BxNxTxS = np.where(np.tril(np.ones((t, t), bool)), scores_BxNxTxS, -np.inf)
  p_BxNxTxS = np.exp(scores_BxNxTxS - scores_BxNxTxS.max(-1, keepdims=True))
  p_BxNxTxS /= p_BxNxTxS.sum(-1, keepdims=True)
  out = np.einsum('bnts,bsnh->btnh', p_BxNxTxS, v)
  dp_BxNxTxS = np.einsum('btnh,bsnh->bnts', weights, v)
  ds_BxNxTxS = p_BxNxTxS * (dp_BxNxTxS - (dp_BxNxTxS * p_BxNxTxS).sum(-1, keepdims=True))
  dq = np.einsum('bnts,bsnh->btnh', ds_BxNxTxS, k) / np.sqrt(h)
  dk = np.einsum('bnts,btnh->bsnh', ds_BxNxTxS, q) / np.sqrt(h)
  dv = np.einsum('bnts,btnh->bsnh', p_BxNxTxS, weights)
  fold = lambda x: x.reshape(b, t, n // g, g, h).sum(3)  # sum the group's gradients per kv head
  return out, (dq, fold(dk), fold(dv))


def _inputs(b, t, n, k, h, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(keys[0], (b, t, n, h)), jax.random.normal(keys[1], (b, t, k, h)),
          jax.random.normal(keys[2], (b, t, k, h)), jax.random.normal(keys[3], (b, t, n, h)))


@pytest.fixture(scope='module', autouse=True)
def kernel():
  assert not cpu_fused.unavailable_reason(), cpu_fused.unavailable_reason()


@pytest.mark.parametrize('b, t, n, k, h', [
    (2, 256, 4, 4, 32),   # the small reference config's pass
    (2, 256, 6, 6, 64),   # medium's
    (3, 100, 4, 2, 16),   # grouped-query heads; T not a multiple of 8 or 16
    (1, 37, 2, 1, 128),   # one kv head for both query heads
    (2, 1, 2, 2, 32),     # a single position
])
def test_kernel_and_its_gradients_match_float64(b, t, n, k, h):
  q, key, value, weights = _inputs(b, t, n, k, h)
  want_out, want_grads = _reference(q, key, value, weights)
  out, vjp = jax.vjp(jax.jit(cpu_fused.causal_attention), q, key, value)
  np.testing.assert_allclose(out, want_out, atol=2e-6)
  for name, got, want in zip('qkv', vjp(weights), want_grads):
    scale = max(np.abs(want).max(), 1.0)  # dQ and dK are exactly 0 at T = 1
    np.testing.assert_allclose(np.asarray(got) / scale, want / scale, atol=3e-6, err_msg=name)


def test_large_logits_stay_finite():
  """Logits of ±200: the row maximum must be subtracted before the exponential.

  float32 logits that large carry ~1e-5 of rounding, hence the looser tolerance.
  """
  q, key, value, weights = _inputs(1, 64, 2, 2, 32, seed=3)
  q, key = 8 * q, 8 * key
  want_out, want_grads = _reference(q, key, value, weights)
  out, vjp = jax.vjp(cpu_fused.causal_attention, q, key, value)
  np.testing.assert_allclose(out, want_out, atol=1e-4)
  np.testing.assert_allclose(vjp(weights)[2], want_grads[2], atol=1e-4)


def test_on_a_mesh_each_device_runs_its_own_rows_and_heads():
  mesh = jax.make_mesh((4, 2), ('data', 'tensor'), devices=jax.devices()[:8])
  spec = P('data', None, 'tensor', None)
  q, key, value, weights = _inputs(8, 48, 4, 2, 16)
  want_out, want_grads = _reference(q, key, value, weights)
  placed = [jax.device_put(x, NamedSharding(mesh, spec)) for x in (q, key, value)]
  loss = lambda q, k, v: jnp.sum(cpu_fused.causal_attention_on_mesh(q, k, v, spec) * weights)
  with jax.set_mesh(mesh):
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    hlo = step.lower(*placed).compile().as_text()
    _, grads = step(*placed)
  assert 'all-gather' not in hlo  # no device sees another's rows or heads
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(got, want, atol=2e-5)
  with jax.set_mesh(mesh), pytest.raises(ValueError, match="attention_impl='blocked'"):
    cpu_fused.causal_attention_on_mesh(*placed, P('data', 'tensor', None, None))


def test_kernel_rejects_a_head_size_it_was_not_built_for():
  q, key, value, _ = _inputs(1, 8, 2, 2, 24)
  with pytest.raises(Exception, match='head size must be 16, 32, 64 or 128'):
    jax.block_until_ready(cpu_fused.causal_attention(q, key, value))


def test_without_a_compiler_the_reason_is_reported(tmp_path):
  """A fresh process with no compiler on PATH and an empty cache: the run picks 'blocked'."""
  script = ('import jax, jax.numpy as jnp\n'
            'from gptjax.model import attention\n'
            'from gptjax.model.attention import cpu_fused\n'
            'print(repr(cpu_fused.unavailable_reason()))\n'
            "print(attention.resolve('', jax.devices()[0], jnp.float32, 32)[0])\n")
  env = {**os.environ, 'PATH': str(tmp_path), 'GPTJAX_CACHE_DIR': str(tmp_path / 'cache')}
  env.pop('CXX', None)
  result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, check=True, cwd=ROOT)
  reason, choice = result.stdout.strip().splitlines()
  assert 'no C++ compiler' in reason and choice == 'blocked'


def test_a_bad_compiler_is_reported_with_its_output(tmp_path):
  failing = tmp_path / 'c++'
  failing.write_text('#!/bin/sh\necho "mock compiler: cannot build" >&2\nexit 1\n')
  failing.chmod(0o755)
  script = ('from gptjax.model.attention import cpu_fused\n'
            'print(cpu_fused.unavailable_reason())\n')
  env = {**os.environ, 'CXX': str(failing), 'GPTJAX_CACHE_DIR': str(tmp_path / 'cache')}
  result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, check=True, cwd=ROOT)
  assert 'could not build' in result.stdout and 'mock compiler: cannot build' in result.stdout
  assert not list((tmp_path / 'cache').glob('*.so'))  # no half-built library is left behind
