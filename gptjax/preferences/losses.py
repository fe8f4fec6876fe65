"""Losses on preference pairs: Bradley-Terry for a reward model, DPO for a policy.

Both model P(chosen preferred over rejected) = sigmoid(r_chosen - r_rejected) (Bradley and Terry,
1952) and minimise its negative log-likelihood, -log sigmoid(margin), averaged over the batch's
pairs. A reward model outputs r directly; DPO (Rafailov et al., "Direct Preference Optimization",
2023) takes r = beta * (log pi(y|x) - log pi_ref(y|x)), the reward under which the policy is
optimal for the KL-penalised objective, so a policy is trained on pairs without a reward model.

A sequence's log-prob log pi(y|x) is the sum of its response tokens' log-probs,
`masked_tokens.sequence_logprobs(...).sum(-1)` with the mask True on the response only: the prompt
is given, not chosen, and counts for neither side.

The metrics are batch means: `margin`, and `accuracy`, the share of pairs ranked the right way
round, a tie counting one half (a model that cannot tell the two apart sits at chance, 0.5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = dict[str, Array]


def _at_least_float32(x: Array) -> Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def pair_accuracy(margin_B: Array) -> Array:
  right_B = jnp.where(margin_B > 0, 1.0, jnp.where(margin_B == 0, 0.5, 0.0))
  return jnp.mean(right_B)


def bradley_terry_loss(reward_chosen_B: Array, reward_rejected_B: Array) -> tuple[Array, Metrics]:
  """mean(-log sigmoid(r_chosen - r_rejected)) in float32 (or wider), without overflow at large
  margins."""
  margin_B = _at_least_float32(reward_chosen_B) - _at_least_float32(reward_rejected_B)
  loss = -jnp.mean(jax.nn.log_sigmoid(margin_B))
  return loss, {'margin': jnp.mean(margin_B), 'accuracy': pair_accuracy(margin_B)}


def implicit_rewards(policy_logp_B: Array, ref_logp_B: Array, beta: float) -> Array:
  """DPO's reward of each sequence, beta * (log pi - log pi_ref), up to a prompt-only term."""
  return beta * (_at_least_float32(policy_logp_B) - _at_least_float32(ref_logp_B))


def dpo_loss(policy_chosen_logp_B: Array, policy_rejected_logp_B: Array, ref_chosen_logp_B: Array,
             ref_rejected_logp_B: Array, beta: float) -> tuple[Array, Metrics]:
  """mean(-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))) on summed response log-probs.

  The reference log-probs are constants (a frozen model; no gradient flows into them). Where the
  policy equals the reference every margin is 0 and the loss is log 2. Metrics add the mean
  implicit rewards of each side, `reward_chosen` and `reward_rejected`.
  """
  reward_chosen_B = implicit_rewards(policy_chosen_logp_B,
                                     jax.lax.stop_gradient(ref_chosen_logp_B), beta)
  reward_rejected_B = implicit_rewards(policy_rejected_logp_B,
                                       jax.lax.stop_gradient(ref_rejected_logp_B), beta)
  loss, metrics = bradley_terry_loss(reward_chosen_B, reward_rejected_B)
  metrics['reward_chosen'] = jnp.mean(reward_chosen_B)
  metrics['reward_rejected'] = jnp.mean(reward_rejected_B)
  return loss, metrics
