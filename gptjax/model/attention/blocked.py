"""'blocked': causal self-attention in query blocks that skip the masked keys, flash-style backward.

`jax.nn.dot_product_attention`'s XLA path computes all T×T logits and masks half of them, keeps the
probabilities twice (once for the forward product, once for the backward) and differentiates the
softmax through a reduction over the whole [B, N, T, T] tensor; on a CPU that is several times
slower (BENCHMARKS.md). This is the CPU attention wherever the fused kernel does not apply. Here:

  * query block i (rows [iC, (i+1)C)) attends only to keys [0, (i+1)C): the blocks above the
    diagonal, which the causal mask would zero anyway, are never computed (10 of 16 blocks at T =
    4C);
  * the probabilities are kept once, unnormalised, and the 1/sum is applied to the [C, H] output
    rather than to the [C, S] probabilities;
  * the backward uses rowsum(dP ∘ P) = rowsum(dO ∘ O) (FlashAttention), a reduction over H instead
    of over the keys.

The function equals softmax(QK^T / sqrt(H) + causal mask) V up to float32 rounding; masked logits
contribute exact zeros in both. It runs (T + C) / 2T of the QK^T and PV products that the 'full'
FLOPs count of `gptjax/cost/flops.py` assumes (62.5% at T = 256, C = 64), as any kernel that skips
masked blocks does. Shape letters follow `gptjax/model/gpt.py`; C is the query block size.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array

# Query block C: at T = 256 four blocks compute 10/16 of the logits.
BLOCK = 64


def causal_attention(q_BxTxNxH: Array, k_BxTxKxH: Array, v_BxTxKxH: Array,
                     block: int = BLOCK) -> Array:
  """Causal multi-head (or grouped-query) attention of T queries over the same T keys.

  Query head n reads key/value head n // G, as in `jax.nn.dot_product_attention`. `block` is the
  query block size C; a T that is not a multiple of it gets a shorter last block.
  """
  b, t, n, h = q_BxTxNxH.shape
  k = k_BxTxKxH.shape[2]
  if n % k:
    raise ValueError(f'{n} query heads do not split into groups over {k} key/value heads.')
  if block <= 0:
    raise ValueError(f'block={block} must be positive.')
  scale = 1.0 / math.sqrt(h)
  q_BxKxGxTxH = (q_BxTxNxH * jnp.asarray(scale, q_BxTxNxH.dtype)).reshape(
      b, t, k, n // k, h).transpose(0, 2, 3, 1, 4)
  k_BxKxTxH = k_BxTxKxH.transpose(0, 2, 1, 3)
  v_BxKxTxH = v_BxTxKxH.transpose(0, 2, 1, 3)
  out_BxKxGxTxH = _attention(q_BxKxGxTxH, k_BxKxTxH, v_BxKxTxH, block)
  return out_BxKxGxTxH.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _row_blocks(t: int, block: int) -> list[tuple[int, int]]:
  return [(start, min(start + block, t)) for start in range(0, t, block)]


def _block_forward(q_BxKxGxCxH: Array, k_BxKxSxH: Array, v_BxKxSxH: Array, start: int):
  """One query block (rows start..start+C) against keys 0..S, S = start + C.

  Returns the output, the unnormalised probabilities p and 1/rowsum(p); p is zero where masked.
  """
  c, s = q_BxKxGxCxH.shape[3], k_BxKxSxH.shape[2]
  logits_BxKxGxCxS = jnp.einsum('bkgch,bksh->bkgcs', q_BxKxGxCxH, k_BxKxSxH,
                                preferred_element_type=jnp.float32)
  # An additive 0/-inf constant rather than a select, so the max and exp fuse with it.
  visible_CxS = jnp.arange(s)[None, :] <= start + jnp.arange(c)[:, None]
  logits_BxKxGxCxS = logits_BxKxGxCxS + jnp.where(visible_CxS, 0.0, -jnp.inf)[None, None, None]
  max_BxKxGxCx1 = jnp.max(logits_BxKxGxCxS, axis=-1, keepdims=True)  # the diagonal is always visible
  p_BxKxGxCxS = jnp.exp(logits_BxKxGxCxS - max_BxKxGxCx1)
  inv_sum_BxKxGxCx1 = 1.0 / jnp.sum(p_BxKxGxCxS, axis=-1, keepdims=True)
  out_BxKxGxCxH = jnp.einsum('bkgcs,bksh->bkgch', p_BxKxGxCxS.astype(v_BxKxSxH.dtype), v_BxKxSxH,
                             preferred_element_type=jnp.float32) * inv_sum_BxKxGxCx1
  return out_BxKxGxCxH.astype(v_BxKxSxH.dtype), p_BxKxGxCxS, inv_sum_BxKxGxCx1


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q_BxKxGxTxH: Array, k_BxKxTxH: Array, v_BxKxTxH: Array, block: int) -> Array:
  return _attention_fwd(q_BxKxGxTxH, k_BxKxTxH, v_BxKxTxH, block)[0]


def _attention_fwd(q_BxKxGxTxH: Array, k_BxKxTxH: Array, v_BxKxTxH: Array, block: int):
  outs, probs, inv_sums = [], [], []
  for start, stop in _row_blocks(q_BxKxGxTxH.shape[3], block):
    out, p, inv_sum = _block_forward(q_BxKxGxTxH[:, :, :, start:stop], k_BxKxTxH[:, :, :stop],
                                     v_BxKxTxH[:, :, :stop], start)
    outs.append(out), probs.append(p), inv_sums.append(inv_sum)
  out_BxKxGxTxH = jnp.concatenate(outs, axis=3)
  return out_BxKxGxTxH, (q_BxKxGxTxH, k_BxKxTxH, v_BxKxTxH, out_BxKxGxTxH, probs, inv_sums)


def _attention_bwd(block: int, residuals, dout_BxKxGxTxH: Array):
  q_BxKxGxTxH, k_BxKxTxH, v_BxKxTxH, out_BxKxGxTxH, probs, inv_sums = residuals
  t = q_BxKxGxTxH.shape[3]
  # rowsum(dP ∘ P) for the softmax backward, from the [T, H] output instead of the [T, S] probs.
  # Written as a contraction: XLA's CPU reduce over a 32-wide minor axis is much slower.
  delta_BxKxGxTx1 = jnp.einsum('bkgth,bkgth->bkgt', dout_BxKxGxTxH, out_BxKxGxTxH,
                               preferred_element_type=jnp.float32)[..., None]
  dqs, dk_parts, dv_parts = [], [], []
  for (start, stop), p_BxKxGxCxS, inv_sum_BxKxGxCx1 in zip(_row_blocks(t, block), probs, inv_sums):
    q_BxKxGxCxH = q_BxKxGxTxH[:, :, :, start:stop]
    k_BxKxSxH, v_BxKxSxH = k_BxKxTxH[:, :, :stop], v_BxKxTxH[:, :, :stop]
    dout_BxKxGxCxH = dout_BxKxGxTxH[:, :, :, start:stop]
    # dV and dK come out as [H, S]: the contraction over queries then reads the [C, S] tensors in
    # their stored layout, and only the small [C, H] operands get transposed.
    dv_parts.append(jnp.einsum(
        'bkgch,bkgcs->bkhs', (dout_BxKxGxCxH * inv_sum_BxKxGxCx1).astype(v_BxKxSxH.dtype),
        p_BxKxGxCxS.astype(v_BxKxSxH.dtype), preferred_element_type=jnp.float32))
    dprobs_BxKxGxCxS = jnp.einsum('bkgch,bksh->bkgcs', dout_BxKxGxCxH, v_BxKxSxH,
                                  preferred_element_type=jnp.float32)
    dlogits_BxKxGxCxS = (p_BxKxGxCxS * inv_sum_BxKxGxCx1
                         * (dprobs_BxKxGxCxS - delta_BxKxGxTx1[:, :, :, start:stop]))
    dlogits_BxKxGxCxS = dlogits_BxKxGxCxS.astype(q_BxKxGxTxH.dtype)
    dqs.append(jnp.einsum('bkgcs,bksh->bkgch', dlogits_BxKxGxCxS, k_BxKxSxH,
                          preferred_element_type=jnp.float32))
    dk_parts.append(jnp.einsum('bkgch,bkgcs->bkhs', q_BxKxGxCxH, dlogits_BxKxGxCxS,
                               preferred_element_type=jnp.float32))
  pad = lambda x_BxKxHxS: jnp.pad(x_BxKxHxS, ((0, 0), (0, 0), (0, 0), (0, t - x_BxKxHxS.shape[3])))
  dq_BxKxGxTxH = jnp.concatenate(dqs, axis=3).astype(q_BxKxGxTxH.dtype)
  dk_BxKxTxH = sum(pad(part) for part in dk_parts).transpose(0, 1, 3, 2).astype(k_BxKxTxH.dtype)
  dv_BxKxTxH = sum(pad(part) for part in dv_parts).transpose(0, 1, 3, 2).astype(v_BxKxTxH.dtype)
  return dq_BxKxGxTxH, dk_BxKxTxH, dv_BxKxTxH


_attention.defvjp(_attention_fwd, _attention_bwd)
