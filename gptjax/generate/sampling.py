"""Token selection from next-token logits: greedy, temperature, top-k and top-p (nucleus).

Filters run in the order Hugging Face uses, so settings carry over between the two codebases:
divide by the temperature, keep the top-k logits, then keep the smallest set of the survivors
whose probability (renormalised over the survivors) reaches top_p. A filtered-out token gets
logit -inf and so probability exactly 0: it can never be drawn.

Ties: both filters work by a threshold on the logit value, so every token tied with the last one
kept is kept too. That makes the masks independent of the (arbitrary) order of tied entries.

Shape letters follow `gptjax/model/gpt.py`: B batch, V vocabulary.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How the next token is chosen. Frozen (hashable) so `jax.jit` can take it as a static argument.

  temperature: 0 means greedy (argmax; top_k and top_p are then irrelevant); > 0 samples from
    softmax(logits / temperature).
  top_k: keep the k most likely tokens; 0 keeps all.
  top_p: keep the smallest most-likely set whose probability reaches top_p; 1.0 keeps all.
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0.0:
      raise ValueError(f'temperature={self.temperature} must be >= 0 (0 means greedy).')
    if self.top_k < 0:
      raise ValueError(f'top_k={self.top_k} must be >= 0 (0 turns the filter off).')
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f'top_p={self.top_p} must be in (0, 1] (1.0 turns the filter off).')

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


def top_k_mask(logits_BxV: Array, k: int) -> Array:
  """True for the k largest logits of each row (and any tied with the k-th); k >= V keeps all."""
  if k <= 0:
    raise ValueError(f'top_k={k} must be positive here; 0 means "no filter" and skips this call.')
  v = logits_BxV.shape[-1]
  if k >= v:
    return jnp.ones(logits_BxV.shape, bool)
  kth_largest_Bx1 = jax.lax.top_k(logits_BxV, k)[0][..., -1:]
  return logits_BxV >= kth_largest_Bx1


def top_p_mask(logits_BxV: Array, p: float) -> Array:
  """True for the nucleus: the most likely tokens whose cumulative probability first reaches p.

  A token is kept when the probability of the tokens strictly more likely than it is below p, so
  the most likely token is always kept and the set is the smallest one with mass >= p.
  """
  if not 0.0 < p <= 1.0:
    raise ValueError(f'top_p={p} must be in (0, 1].')
  v = logits_BxV.shape[-1]
  sorted_logits_BxV = jax.lax.top_k(logits_BxV, v)[0]  # descending
  sorted_probs_BxV = jax.nn.softmax(sorted_logits_BxV, axis=-1)
  mass_before_BxV = jnp.cumsum(sorted_probs_BxV, axis=-1) - sorted_probs_BxV
  keep_sorted_BxV = mass_before_BxV < p
  # The smallest kept logit is the threshold; mapping back by value avoids a scatter.
  threshold_Bx1 = jnp.min(jnp.where(keep_sorted_BxV, sorted_logits_BxV, jnp.inf), axis=-1,
                          keepdims=True)
  return logits_BxV >= threshold_Bx1


def filter_logits(logits_BxV: Array, config: SamplingConfig) -> Array:
  """Temperature-scaled logits with every filtered-out token set to -inf (float32).

  For a greedy config the logits come back unscaled and unfiltered (argmax needs neither).
  """
  logits_BxV = logits_BxV.astype(jnp.float32)
  if config.greedy:
    return logits_BxV
  logits_BxV = logits_BxV / config.temperature
  if config.top_k:
    logits_BxV = jnp.where(top_k_mask(logits_BxV, config.top_k), logits_BxV, -jnp.inf)
  if config.top_p < 1.0:
    logits_BxV = jnp.where(top_p_mask(logits_BxV, config.top_p), logits_BxV, -jnp.inf)
  return logits_BxV


def select_tokens(logits_BxV: Array, key: Array, config: SamplingConfig) -> Array:
  """Next token per row, int32 [B]. `key` is used as is (not split): pass a fresh one per step."""
  if config.greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, filter_logits(logits_BxV, config), axis=-1).astype(jnp.int32)
