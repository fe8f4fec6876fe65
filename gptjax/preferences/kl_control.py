"""The KL penalty of RL from preferences: its per-token estimate, the shaped reward, its weight.

PPO against a learned reward maximises score(x, y) - beta * KL(pi(.|x) || pi_ref(.|x)), with pi_ref
the frozen SFT model (Ziegler et al., "Fine-Tuning Language Models from Human Preferences",
2019). The KL is estimated from the sampled tokens themselves, k1_t = log pi(y_t) - log pi_ref(y_t),
whose expectation under pi is the exact KL of that step; it enters the reward at every token, and
the score only at the last one.

Arrays are [B, T] over responses, mask_BxT True at generated tokens, as in
`gptjax/preferences/ppo_math.py`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gptjax.train.masked_tokens import last_true_mask, masked_sum

Array = jax.Array


def kl_per_token(logp_BxT: Array, logp_ref_BxT: Array, mask_BxT: Array) -> Array:
  """k1_t = logp_t - logp_ref_t at the sampled tokens, 0 where masked. One sample can be
  negative; its mean over samples from the policy is the KL, >= 0."""
  return jnp.where(mask_BxT, logp_BxT - logp_ref_BxT, 0.0)


def sequence_kl(logp_BxT: Array, logp_ref_BxT: Array, mask_BxT: Array) -> Array:
  """[B]: the k1 estimate of each response's KL, the sum over its tokens."""
  return masked_sum(kl_per_token(logp_BxT, logp_ref_BxT, mask_BxT), mask_BxT, axis=-1)


def shaped_rewards(scores_B: Array, kl_BxT: Array, mask_BxT: Array, beta: float | Array) -> Array:
  """Token rewards [B, T]: -beta * kl_t at every response token, plus the sequence's score at its
  last one; 0 where masked. Their undiscounted sum is score - beta * KL, the PPO objective."""
  penalty_BxT = jnp.where(mask_BxT, -beta * kl_BxT, 0.0)
  return penalty_BxT + jnp.where(last_true_mask(mask_BxT), scores_B[:, None], 0.0)


def adaptive_beta(beta: float, kl: float, *, target: float, horizon: float,
                  n_steps: float) -> float:
  """Ziegler et al.'s proportional controller:
  beta * (1 + clip((kl - target) / target, -0.2, 0.2) * n_steps / horizon).

  beta grows while the measured KL is above target and shrinks while it is below; the clip bounds
  the change one noisy batch can cause, and horizon (in samples) sets how fast beta moves. It runs
  on the host between batches, in float64.
  """
  error = min(max((float(kl) - target) / target, -0.2), 0.2)
  return beta * (1.0 + error * n_steps / horizon)


@dataclasses.dataclass(frozen=True)
class KLController:
  """The KL coefficient beta and its rule: fixed (target None) or adaptive (`adaptive_beta`).

  Immutable: `update` returns the next controller, so a loop's state stays a value that can be
  logged and checkpointed. kl is the mean sequence KL (`sequence_kl`) of the last batch and
  n_steps the number of sequences in it.
  """

  beta: float
  target: float | None = None
  horizon: float = 10000.0

  def __post_init__(self):
    if not self.beta >= 0.0:
      raise ValueError(f'KL coefficient beta={self.beta} must be >= 0.')
    if self.target is not None and not (self.target > 0.0 and self.horizon > 0.0):
      raise ValueError(f'An adaptive KL controller needs target > 0 and horizon > 0, got '
                       f'target={self.target}, horizon={self.horizon}; pass target=None for a '
                       'fixed beta.')

  @classmethod
  def fixed(cls, beta: float) -> KLController:
    return cls(beta=beta)

  @classmethod
  def adaptive(cls, beta: float, target: float, horizon: float = 10000.0) -> KLController:
    return cls(beta=beta, target=target, horizon=horizon)

  def update(self, kl: float, n_steps: int) -> KLController:
    if self.target is None:
      return self
    beta = adaptive_beta(self.beta, kl, target=self.target, horizon=self.horizon, n_steps=n_steps)
    return dataclasses.replace(self, beta=beta)
