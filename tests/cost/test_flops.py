"""The size and FLOP formulas against the model itself: its parameter tree and XLA's count."""

import dataclasses
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.cost import flops
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT

BASE = GPTConfig(vocab_size=97, d_model=32, num_layers=2, num_heads=4, max_seq_len=16)
VARIANTS = {
    'gpt2_like': {},
    'gqa': dict(num_kv_heads=2),
    'mqa_swiglu_rope_rms': dict(num_kv_heads=1, mlp='swiglu', position='rope', norm='rmsnorm'),
    'no_bias': dict(use_bias=False),
    'no_bias_layernorm_untied': dict(use_bias=False, tie_embeddings=False),
    'sinusoidal_untied': dict(position='sinusoidal', tie_embeddings=False),
    'swiglu_explicit_width': dict(mlp='swiglu', mlp_dim=48),
    'llama_like': dict(position='rope', norm='rmsnorm', mlp='swiglu', use_bias=False,
                       tie_embeddings=False, num_kv_heads=2),
    'scanned_deep': dict(num_layers=5, scan_layers=True),
}


def tree_size(cfg: GPTConfig) -> tuple[int, int]:
  """(all parameters, those in the token/position tables and the untied head) of the real model."""
  shapes = jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  leaves = jax.tree_util.tree_leaves_with_path(shapes['params'])
  total = sum(int(np.prod(leaf.shape)) for _, leaf in leaves)
  embedding_names = ('embed', 'pos_embed', 'head')
  embedding = sum(int(np.prod(leaf.shape)) for path, leaf in leaves
                  if getattr(path[0], 'key', None) in embedding_names)
  return total, embedding


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_param_counts_match_parameter_tree(name):
  cfg = dataclasses.replace(BASE, **VARIANTS[name])
  counts = flops.param_counts(cfg)
  total, embedding = tree_size(cfg)
  assert counts.total == total
  assert counts.embedding == embedding
  assert counts.non_embedding == total - embedding


def test_gpt2_small_param_count_is_published_exact():
  """The released GPT-2 small has 124,439,808 parameters, tied head and positions included."""
  cfg = GPTConfig(vocab_size=50257, d_model=768, num_layers=12, num_heads=12, max_seq_len=1024)
  assert flops.param_counts(cfg).total == 124_439_808


def test_kaplan_flops_are_six_n_plus_attention():
  cfg = dataclasses.replace(BASE, num_layers=3)
  n = flops.param_counts(cfg).non_embedding
  assert flops.flops_per_token(cfg, 16, 'kaplan') == 6 * n + 6 * 3 * 16 * 32
  assert flops.training_flops(cfg, 16, 1000, 'kaplan') == 1000 * (6 * n + 6 * 3 * 16 * 32)


def xla_forward_flops(cfg: GPTConfig, batch: int, seq_len: int) -> float:
  model = GPT(cfg)
  tokens_BxT = jnp.zeros((batch, seq_len), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens_BxT)
  compiled = jax.jit(model.apply).lower(params, tokens_BxT).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax returned a list
  return float(cost['flops'])


# XLA's attention computes the full T×T square that the 'full' count assumes; the CPU default,
# 'blocked', skips the masked blocks above the diagonal (see gptjax/model/attention/blocked.py).
XLA_CONFIGS = {
    'gelu': GPTConfig(vocab_size=512, d_model=256, num_layers=2, num_heads=4, max_seq_len=128,
                      attention_impl='xla'),
    'swiglu_gqa_rope': GPTConfig(vocab_size=512, d_model=256, num_layers=2, num_heads=4,
                                 num_kv_heads=2, mlp='swiglu', position='rope', norm='rmsnorm',
                                 use_bias=False, max_seq_len=128, attention_impl='xla'),
    'untied_long_context': GPTConfig(vocab_size=1024, d_model=128, num_layers=1, num_heads=2,
                                     tie_embeddings=False, max_seq_len=256, attention_impl='xla'),
}


@pytest.mark.parametrize('name', sorted(XLA_CONFIGS))
def test_full_flops_match_xla_cost_analysis(name):
  """The 'full' count is at most 3% below XLA's FLOPs for the compiled forward pass on CPU.

  XLA counts every op: besides the matmuls (which the formula counts exactly) it adds one FLOP per
  element for bias adds, residual adds, norms, the softmax over T×T logits, the causal mask select
  and GELU/SiLU arithmetic. Those scale with D·T and T² rather than D², so they are a few percent
  here and vanish at real widths; XLA is therefore above the formula, by at most 3% on these shapes
  (heads of 64 or more, so the softmax is small next to QK^T). A formula missing a matmul (e.g. the
  output layer, 2·D·V, or SwiGLU's third matrix) would be off by 10-40% and fail.
  """
  cfg = XLA_CONFIGS[name]
  batch, seq_len = 2, cfg.max_seq_len
  measured = xla_forward_flops(cfg, batch, seq_len) / (batch * seq_len)
  formula = flops.forward_flops_per_token(cfg, seq_len, 'full')
  assert formula <= measured <= 1.03 * formula, (measured / formula)
  assert flops.flops_per_token(cfg, seq_len, 'full') == 3 * formula


def next_token_loss(params, cfg: GPTConfig, tokens_BxT):
  logits_BxTxV = GPT(cfg).apply({'params': params}, tokens_BxT[:, :-1])
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV)
  return -jnp.take_along_axis(logp_BxTxV, tokens_BxT[:, 1:, None], axis=-1).mean()


@pytest.mark.parametrize('name', sorted(XLA_CONFIGS))
@pytest.mark.slow
def test_training_flops_match_xla_cost_of_value_and_grad(name):
  """`flops_per_token` (forward + a backward of twice the forward) is at most 3% below XLA's FLOPs
  for the compiled `jax.value_and_grad` of the next-token loss.

  Every matmul Y = X·W costs 2 more of its size in the backward (dX = dY·W^T and dW = X^T·dY),
  QK^T and AV included, and the first layer's inputs need their gradient too (they depend on the
  embedding table), so the matmul FLOPs are exactly 3x the forward's. XLA adds the elementwise
  work on top: the forward's (see above) and, in the backward, a few FLOPs per element for the
  norm, GELU/SiLU, softmax, bias and residual gradients and the loss's log-softmax over V. Those
  scale with D·T, T² and V, not D², so XLA lands 1-2% above the formula on these shapes; a
  backward counted as 1x or 3x the forward would be off by a third and fail.
  """
  cfg = XLA_CONFIGS[name]
  batch, seq_len = 2, cfg.max_seq_len
  tokens_BxT = jnp.zeros((batch, seq_len + 1), jnp.int32)
  params = nn.unbox(jax.eval_shape(GPT(cfg).init, jax.random.key(0), tokens_BxT[:, :-1]))['params']
  compiled = jax.jit(jax.value_and_grad(next_token_loss), static_argnums=1).lower(
      params, cfg, tokens_BxT).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  measured = float(cost['flops']) / (batch * seq_len)
  formula = flops.flops_per_token(cfg, seq_len, 'full')
  assert formula <= measured <= 1.03 * formula, (measured / formula)


def test_full_exceeds_kaplan_by_output_layer_and_second_attention_product():
  cfg = XLA_CONFIGS['gelu']
  t, d, v, layers = 128, 256, 512, 2
  difference = (flops.forward_flops_per_token(cfg, t, 'full')
                - flops.forward_flops_per_token(cfg, t, 'kaplan'))
  n = flops.param_counts(cfg).non_embedding
  matmul_params = layers * 12 * d * d  # N less biases and norms, which Kaplan's 2N counts
  assert difference == pytest.approx(2 * d * v + 2 * layers * t * d - 2 * (n - matmul_params))


def test_bad_method_and_lengths_raise():
  with pytest.raises(ValueError, match="choose one of \\('kaplan', 'full'\\)"):
    flops.flops_per_token(BASE, 16, 'chinchilla')
  with pytest.raises(ValueError, match='seq_len=0'):
    flops.flops_per_token(BASE, 0)


@pytest.mark.parametrize('kind,dtype,expected', [
    ('TPU v4', 'bfloat16', 275e12),
    ('TPU v5 lite', jnp.bfloat16, 197e12),  # must not match v5p's 'TPU v5'
    ('TPU v5', 'bfloat16', 459e12),
    ('TPU v6 lite', 'bfloat16', 918e12),
    ('NVIDIA A100-SXM4-80GB', 'bfloat16', 312e12),
    ('NVIDIA A100-SXM4-40GB', jnp.float32, 156e12),  # TF32: JAX's default fp32 matmul on GPU
    ('NVIDIA H100 80GB HBM3', 'bfloat16', 989.4e12),
    ('NVIDIA H200', 'float16', 989.4e12),
    ('TPU v4', 'float32', None),
    ('NVIDIA H100 PCIe', 'bfloat16', None),
    ('cpu', 'float32', None),
])
def test_device_peak_flops_matches_device_kinds(kind, dtype, expected):
  assert flops.device_peak_flops(kind, dtype) == expected


def test_accelerator_table_keys_are_stable():
  """The cost estimator imports these names."""
  expected = {'tpu_v4', 'tpu_v5e', 'tpu_v5p', 'tpu_v6e', 'a100', 'h100', 'h200'}
  assert expected <= set(flops.ACCELERATORS)
  for acc in flops.ACCELERATORS.values():
    assert acc.peak_bf16_flops > 1e14 and acc.memory_bytes > 1e10 and acc.price_per_hour_usd > 0


def test_device_peak_rejects_int8():
  with pytest.raises(ValueError, match='int8'):
    flops.device_peak_flops('TPU v4', 'int8')


def test_measure_matmul_peak_divides_two_n_cubed_by_the_median_time(monkeypatch):
  """With a stubbed clock the timed calls take 0.5 s, 0.25 s and 2 s: the peak is 2·n³ / 0.5 s.

  The median (not the mean, 0.917 s, nor the minimum) and the untimed warm-up call (the clock is
  read exactly twice per timed call) both show in the result.
  """
  ticks = iter([0.0, 0.5, 10.0, 10.25, 20.0, 22.0])
  monkeypatch.setattr(flops, 'time', types.SimpleNamespace(perf_counter=lambda: next(ticks)))
  n = 64
  assert flops.measure_matmul_peak('float32', n=n, repeats=3) == 2 * n**3 / 0.5
  assert next(ticks, None) is None


def test_mfu_is_achieved_over_peak():
  assert flops.mfu(0.5e12, 2e12) == pytest.approx(0.25)
  with pytest.raises(ValueError, match='peak_flops_per_s=0'):
    flops.mfu(1.0, 0)
