"""Per-token quantities of a batch of token sequences, counted only where a mask is True.

The preference objectives (`gptjax/preferences/ppo_math.py`, `gptjax/preferences/kl_control.py`,
`gptjax/preferences/losses.py`) and the scalar-headed model (`gptjax/preferences/reward_model.py`)
all score some tokens of a row (a response) and not others (its prompt, the padding). They take the
tokens that count as a boolean mask_BxT and reduce through the helpers here, so "which tokens count"
has one meaning everywhere: a masked entry contributes exactly 0 and never a NaN.

Shape letters follow `gptjax/model/gpt.py`: B batch, T length, V vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gptjax.train import steps

Array = jax.Array


def sequence_logprobs(logits_BxTxV: Array, tokens_BxT: Array, mask_BxT: Array) -> Array:
  """log p(tokens_BxT[b, t]) under logits_BxTxV[b, t], float32 [B, T], 0 where the mask is False.

  The logits at position t are the distribution of tokens_BxT[:, t] (already shifted, as the
  targets of `steps.token_nll`); for a model's logits over a whole sequence pass its
  logits[:, :-1] with tokens[:, 1:] and mask[:, 1:]. The value is the negation of
  `steps.token_nll`, so a log-prob taken at sampling time and one taken by a training step agree
  bit for bit on the same logits.
  """
  logp_BxT = -steps.token_nll(logits_BxTxV, tokens_BxT)
  return jnp.where(mask_BxT, logp_BxT, 0.0)


def token_entropy(logits_BxTxV: Array, mask_BxT: Array) -> Array:
  """Entropy in nats of each position's distribution, float32 [B, T], 0 where the mask is False.

  H = logsumexp(l) - sum_v softmax(l)_v l_v, which needs no log of a probability that underflows.
  """
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  probs_BxTxV = jax.nn.softmax(logits_BxTxV, axis=-1)
  entropy_BxT = (jax.nn.logsumexp(logits_BxTxV, axis=-1)
                 - jnp.sum(probs_BxTxV * logits_BxTxV, axis=-1))
  return jnp.where(mask_BxT, entropy_BxT, 0.0)


def masked_sum(x_BxT: Array, mask_BxT: Array, axis: int | None = None) -> Array:
  return jnp.sum(jnp.where(mask_BxT, x_BxT, 0.0), axis=axis)


def masked_mean(x_BxT: Array, mask_BxT: Array) -> Array:
  """Mean over every True entry of the batch (each token weighs the same; long rows weigh more);
  0 for an empty mask."""
  return masked_sum(x_BxT, mask_BxT) / jnp.maximum(jnp.sum(mask_BxT), 1)


def masked_whiten(x_BxT: Array, mask_BxT: Array, epsilon: float = 1e-8) -> Array:
  """(x - mean) / std over the True entries (population variance), 0 where the mask is False."""
  mean = masked_mean(x_BxT, mask_BxT)
  variance = masked_mean(jnp.square(x_BxT - mean), mask_BxT)
  return jnp.where(mask_BxT, (x_BxT - mean) * jax.lax.rsqrt(variance + epsilon), 0.0)


def last_true_index(mask_BxT: Array) -> Array:
  """int32 [B]: the position of each row's last True entry; 0 for a row with none."""
  t = mask_BxT.shape[-1]
  positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), mask_BxT.shape)
  return jnp.max(jnp.where(mask_BxT, positions_BxT, 0), axis=-1)


def last_true_mask(mask_BxT: Array) -> Array:
  """bool [B, T]: True only at each row's last True entry (all False for a row with none)."""
  t = mask_BxT.shape[-1]
  is_last_BxT = jnp.arange(t, dtype=jnp.int32)[None, :] == last_true_index(mask_BxT)[:, None]
  return is_last_BxT & jnp.any(mask_BxT, axis=-1, keepdims=True)


def at_last_true(x_BxT: Array, mask_BxT: Array) -> Array:
  """[B]: each row's x at its last True entry (0 for a row with none), by a masked sum, not a
  gather, so it fuses like `steps.token_nll`."""
  return masked_sum(x_BxT, last_true_mask(mask_BxT), axis=-1)
