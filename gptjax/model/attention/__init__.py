"""Self-attention behind one entry point; the backend is a name chosen where a run is set up.

Every backend computes softmax(QKᵀ/√H + causal mask) V of [B, T, heads, H] queries, keys and
values; with grouped-query attention, query head n reads key/value head n // G.
  'xla'        `jax.nn.dot_product_attention`'s XLA path: all [B, N, T, T] scores, then the mask.
  'cudnn'      cuDNN's flash attention, on NVIDIA GPUs (compute capability 8.0+, 16-bit compute).
  'blocked'    query blocks that skip the masked keys, with a flash-style backward (`blocked.py`).
  'cpu_fused'  a fused C++ kernel for the CPU, built at first use (`cpu_fused.py`).
`resolve` turns `model.attention_impl=''` into the backend measured fastest for the platform, the
compute dtype and the head size (BENCHMARKS.md), and refuses a named backend that cannot run there;
`gptjax.parallel.hardware` calls it once per run and logs the choice, so the model only ever sees a
name. Padded batches and decoding with a KV cache need an explicit mask, which only
`jax.nn.dot_product_attention` takes: they go through `masked_attention`. A non-causal model
(`model.causal=False`, the MLM objective) runs `bidirectional_attention`, on 'xla' or 'cudnn'.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gptjax.model.attention import blocked, cpu_fused

Array = jax.Array

BACKENDS = ('xla', 'cudnn', 'blocked', 'cpu_fused')
BIDIRECTIONAL_BACKENDS = ('xla', 'cudnn')
# Logical axes of the [B, T, N, H] queries and outputs; the fused kernel splits its work by them.
ACTIVATION_AXES = ('batch', 'length', 'act_heads', 'head_dim')


def causal_attention(q_BxTxNxH: Array, k_BxTxKxH: Array, v_BxTxKxH: Array, *, impl: str) -> Array:
  """Causal attention of T queries over the same T keys with the backend `impl` (see BACKENDS)."""
  if impl == 'blocked':
    return blocked.causal_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
  if impl == 'cpu_fused':
    spec = nn.logical_to_mesh_axes(ACTIVATION_AXES)
    return cpu_fused.causal_attention_on_mesh(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, spec)
  if impl in ('xla', 'cudnn'):
    return jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, is_causal=True,
                                        implementation=impl)
  raise ValueError(f'attention_impl={impl!r} is not a backend; choose one of {BACKENDS}, or leave '
                   "model.attention_impl='' in the config to have the run pick one.")


def bidirectional_attention(q_BxTxNxH: Array, k_BxTxKxH: Array, v_BxTxKxH: Array, *,
                            impl: str) -> Array:
  """Attention of T queries over all T keys (a non-causal model). Only the XLA and cuDNN paths
  compute it: 'blocked' and 'cpu_fused' exist to skip the causal mask's upper triangle."""
  if impl not in BIDIRECTIONAL_BACKENDS:
    raise ValueError(f'attention_impl={impl!r} computes causal attention only; a model with '
                     f'model.causal=False runs one of {BIDIRECTIONAL_BACKENDS}.')
  return jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, is_causal=False,
                                      implementation=impl)


def masked_attention(q_BxTxNxH: Array, k_BxSxKxH: Array, v_BxSxKxH: Array, mask_Bx1xTxS: Array,
                     *, impl: str) -> Array:
  """Attention of T queries over S keys where `mask` is True (padding, a KV cache's filled slots).

  cuDNN where the run uses it; every other backend takes this path through XLA, since 'blocked'
  and 'cpu_fused' compute only the causal mask.
  """
  return jax.nn.dot_product_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask=mask_Bx1xTxS,
                                      implementation='cudnn' if impl == 'cudnn' else 'xla')


def resolve(impl: str, device: jax.Device, dtype: jnp.dtype, head_dim: int,
            causal: bool = True) -> tuple[str, str]:
  """The backend for `model.attention_impl=impl` on `device`, and why it was chosen.

  '' picks: on a CPU the fused kernel where it applies and is fast (float32, head sizes 16-128,
  AVX-512, a C++ compiler at hand), else 'blocked'; on an NVIDIA GPU of compute capability 8.0
  or later in 16-bit compute with a head size cuDNN's flash kernel takes, 'cudnn' (XLA's path
  materialises the [B, N, T, T] scores); elsewhere 'xla'.
  """
  if impl not in ('',) + BACKENDS:
    raise ValueError(f'model.attention_impl={impl!r}; choose one of {BACKENDS}, or leave it empty '
                     'to pick the fastest that runs here.')
  dtype_name = jnp.dtype(dtype).name
  where = f'{dtype_name} with head size {head_dim} on {device.platform} ({device.device_kind})'
  if not causal and impl not in ('',) + BIDIRECTIONAL_BACKENDS:
    raise ValueError(f'model.attention_impl={impl!r} computes causal attention only; with '
                     f'model.causal=False choose one of {BIDIRECTIONAL_BACKENDS}, or leave it empty.')
  if impl == 'cpu_fused':
    if device.platform != 'cpu' or not cpu_fused.supports(dtype, head_dim):
      raise ValueError(
          f"attention_impl='cpu_fused' runs float32 on a CPU with head sizes "
          f'{cpu_fused.HEAD_SIZES}, not {dtype_name} on {device.platform} with head size '
          f"{head_dim}; leave model.attention_impl='' to pick one that fits.")
    if cpu_fused.unavailable_reason():
      raise RuntimeError(f"attention_impl='cpu_fused': {cpu_fused.unavailable_reason()}; leave "
                         "model.attention_impl='' to fall back to 'blocked'.")
  if impl:
    return impl, f'named in the config; {where}'
  if device.platform == 'cpu' and not causal:
    return 'xla', f'the blocked and fused CPU backends are causal only; {where}'
  if device.platform == 'cpu':
    if not cpu_fused.supports(dtype, head_dim):
      return 'blocked', (f'the fused CPU kernel takes float32 with head sizes '
                         f'{cpu_fused.HEAD_SIZES}, not {dtype_name} with head size {head_dim}')
    if not cpu_fused.has_wide_vectors():
      return 'blocked', ('the fused CPU kernel is slower without AVX-512, which this CPU lacks; '
                         "model.attention_impl='cpu_fused' still runs it")
    if cpu_fused.unavailable_reason():
      return 'blocked', f'the fused CPU kernel is unavailable: {cpu_fused.unavailable_reason()}'
    return 'cpu_fused', f'the fastest measured for {where}'
  capability = tuple(int(x) for x in getattr(device, 'compute_capability', '0').split('.'))
  if (device.platform == 'gpu' and device.device_kind.startswith('NVIDIA') and capability >= (8, 0)
      and dtype_name in ('bfloat16', 'float16') and head_dim % 8 == 0 and head_dim <= 128):
    return 'cudnn', f'the fastest measured for {where}'
  return 'xla', f'the default for {where}'
