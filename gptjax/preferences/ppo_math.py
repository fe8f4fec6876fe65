"""The PPO objective on token sequences: advantages by GAE, the clipped policy and value losses.

Each response is one episode whose actions are its tokens (Ziegler et al. 2019; Ouyang et al.
2022). Arrays are [B, T] over a batch of responses with mask_BxT True at the tokens a row
generated: right-padded, or behind a masked prompt, as long as each row's True entries are one
contiguous run. An episode ends at its row's last True entry, and nothing is bootstrapped after
it (value 0). Every mean is over the True entries of the whole batch
(`masked_tokens.masked_mean`). The rollout's quantities (old log-probs and values, advantages,
returns) are constants of the losses: no gradient flows into them.

Advantages are whitened with `masked_tokens.masked_whiten` and the entropy bonus comes from
`masked_tokens.token_entropy`.

The equations are those of Schulman et al., "Proximal Policy Optimization Algorithms" (2017) and
"High-Dimensional Continuous Control Using Generalized Advantage Estimation" (2016).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gptjax.train.masked_tokens import masked_mean

Array = jax.Array
Metrics = dict[str, Array]


def gae(rewards_BxT: Array, values_BxT: Array, mask_BxT: Array, gamma: float,
        lam: float) -> tuple[Array, Array]:
  """Generalised advantage estimates and returns, (advantages_BxT, returns_BxT), 0 where masked.

  delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}, where V_{t+1}
  and A_{t+1} are 0 past the row's last token; returns_t = A_t + V_t, the target of the value
  loss. A reverse `lax.scan` over T carries (V_{t+1}, A_{t+1}) and resets both to 0 at every
  masked position, which is what ends each row's episode at its last True entry. Computed in
  float32, or in float64 where the inputs are.
  """
  dtype = jnp.promote_types(jnp.result_type(rewards_BxT, values_BxT), jnp.float32)
  rewards_BxT, values_BxT = rewards_BxT.astype(dtype), values_BxT.astype(dtype)

  def step(carry, inputs):
    next_value_B, next_advantage_B = carry
    reward_B, value_B, valid_B = inputs
    delta_B = reward_B + gamma * next_value_B - value_B
    advantage_B = jnp.where(valid_B, delta_B + gamma * lam * next_advantage_B, 0.0)
    value_B = jnp.where(valid_B, value_B, 0.0)
    return (value_B, advantage_B), advantage_B

  b = rewards_BxT.shape[0]
  zeros_B = jnp.zeros((b,), dtype)
  _, advantages_TxB = jax.lax.scan(step, (zeros_B, zeros_B),
                                   (rewards_BxT.T, values_BxT.T, mask_BxT.T), reverse=True)
  advantages_BxT = advantages_TxB.T
  returns_BxT = jnp.where(mask_BxT, advantages_BxT + values_BxT, 0.0)
  return advantages_BxT, returns_BxT


def ppo_policy_loss(logp_new_BxT: Array, logp_old_BxT: Array, advantages_BxT: Array,
                    mask_BxT: Array, clip_eps: float) -> tuple[Array, Metrics]:
  """The clipped surrogate -mean(min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)), rho = p_new/p_old.

  Where clipping binds (A > 0 and rho > 1 + eps, or A < 0 and rho < 1 - eps) the clipped term
  is the minimum and is constant in logp_new, so such a token's gradient is exactly 0: one batch
  of samples cannot push the policy further from the one that drew them.

  Metrics: `approx_kl`, the k3 estimate mean((rho - 1) - log rho) of KL(old || new), >= 0 per
  token and 0 at rho = 1; `clip_fraction`, the share of tokens with |rho - 1| > eps; `mean_ratio`.
  """
  logp_old_BxT, advantages_BxT = jax.lax.stop_gradient((logp_old_BxT, advantages_BxT))
  log_ratio_BxT = jnp.where(mask_BxT, logp_new_BxT - logp_old_BxT, 0.0)
  ratio_BxT = jnp.exp(log_ratio_BxT)
  unclipped_BxT = ratio_BxT * advantages_BxT
  clipped_BxT = jnp.clip(ratio_BxT, 1.0 - clip_eps, 1.0 + clip_eps) * advantages_BxT
  loss = -masked_mean(jnp.minimum(unclipped_BxT, clipped_BxT), mask_BxT)

  metrics = {
      'approx_kl': masked_mean((ratio_BxT - 1.0) - log_ratio_BxT, mask_BxT),
      'clip_fraction': masked_mean((jnp.abs(ratio_BxT - 1.0) > clip_eps).astype(jnp.float32),
                                   mask_BxT),
      'mean_ratio': masked_mean(ratio_BxT, mask_BxT),
  }
  return loss, metrics


def value_loss(values_new_BxT: Array, values_old_BxT: Array, returns_BxT: Array, mask_BxT: Array,
               clip_range: float | None) -> tuple[Array, Metrics]:
  """0.5 * mean((V - R)^2), or with a clip range c, 0.5 * mean(max((V - R)^2, (V_c - R)^2)) where
  V_c = V_old + clip(V - V_old, -c, c): the value head, like the policy, is kept near the values
  the rollout was scored with. `value_clip_fraction`: the share of tokens where V_c's error binds.
  """
  values_old_BxT, returns_BxT = jax.lax.stop_gradient((values_old_BxT, returns_BxT))
  squared_error_BxT = jnp.square(values_new_BxT - returns_BxT)
  if clip_range is None:
    return 0.5 * masked_mean(squared_error_BxT, mask_BxT), {
        'value_clip_fraction': jnp.zeros((), jnp.float32)}
  values_clipped_BxT = values_old_BxT + jnp.clip(values_new_BxT - values_old_BxT, -clip_range,
                                                 clip_range)
  clipped_error_BxT = jnp.square(values_clipped_BxT - returns_BxT)
  loss = 0.5 * masked_mean(jnp.maximum(squared_error_BxT, clipped_error_BxT), mask_BxT)
  binds_BxT = clipped_error_BxT > squared_error_BxT
  return loss, {'value_clip_fraction': masked_mean(binds_BxT.astype(jnp.float32), mask_BxT)}
