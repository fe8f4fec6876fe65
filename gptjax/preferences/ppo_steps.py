"""PPO's two pure steps: score a rollout, then update the policy and the critic on it.

The state (`PPOState`) holds the policy's and the critic's train states and the KL weight beta;
the reference policy and the reward model are separate arguments that no step writes.

`rollout_step` samples responses with the KV-cache sampler, then scores every sequence with full
forward passes: the policy's log-probs of its own tokens (the "old" log-probs of the ratios), the
reference's, the critic's values and the reward model's score at the last real token. The log-probs
come from the very function the update differentiates (`rollouts.policy_outputs`), so on the first
minibatch, before any update, every ratio is 1 up to float rounding, the approximate KL is 0 and
nothing is clipped.

`ppo_update` turns the rollout into token rewards (-beta * k1 KL at every response token, plus the
score at the last one: `kl_control.shaped_rewards`), advantages and returns by GAE, advantages
whitened over the batch, then runs ppo.epochs passes over it in ppo.minibatches shuffled
minibatches, each one Adam step of the policy (the clipped surrogate minus the entropy bonus) and
one of the critic (the clipped value loss). Its metrics are per minibatch, so a caller can read the
first one alone.

Shape letters follow `gptjax/model/gpt.py`; E*M minibatches of m = B / M rows each.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gptjax.model.config import GPTConfig
from gptjax.preferences import kl_control, ppo_math, rollouts, stage
from gptjax.train import masked_tokens
from gptjax.train.steps import TrainState

Array = jax.Array
Metrics = dict[str, Array]


@flax.struct.dataclass
class PPOState:
  policy: TrainState
  critic: TrainState
  kl_beta: Array  # float32 scalar: the KL penalty's weight for the next rollout


class ScoredRollout(NamedTuple):
  tokens_BxT: Array
  mask_BxT: Array
  response_BxT: Array
  logp_BxT: Array  # the policy's log-probs when it sampled
  ref_logp_BxT: Array
  values_BxT: Array  # the critic's, of the state each response token is chosen in
  scores_B: Array  # the reward model's


@dataclasses.dataclass(frozen=True)
class PPOSettings:
  """The `ppo` config section's numbers the update reads (hashable: a static jit argument)."""

  epochs: int
  minibatches: int
  clip_eps: float
  value_clip: float | None
  gamma: float
  lam: float
  entropy_coef: float

  @classmethod
  def from_config(cls, o: ml_collections.ConfigDict) -> PPOSettings:
    return cls(epochs=o.epochs, minibatches=o.minibatches, clip_eps=o.clip_eps,
               value_clip=o.value_clip or None, gamma=o.gamma, lam=o.lam,
               entropy_coef=o.entropy_coef)


def rollout_step(state: PPOState, prompts_Bx2xP: Array, key: Array, ref_params: Any,
                 reward_params: Any, *, policy_cfg: GPTConfig, critic_cfg: GPTConfig,
                 reward_cfg: GPTConfig, max_new_tokens: int, eos_id: int) -> ScoredRollout:
  rollout = rollouts.sample(state.policy.params, prompts_Bx2xP, key, config=policy_cfg,
                            max_new_tokens=max_new_tokens, eos_id=eos_id)
  return ScoredRollout(
      *rollout,
      logp_BxT=rollouts.token_logprobs(state.policy.params, policy_cfg, *rollout),
      ref_logp_BxT=rollouts.token_logprobs(ref_params, policy_cfg, *rollout),
      values_BxT=rollouts.state_values(state.critic.params, critic_cfg, *rollout),
      scores_B=rollouts.sequence_rewards(reward_params, reward_cfg, rollout))


def advantages(rollout: ScoredRollout, kl_beta: Array, settings: PPOSettings
               ) -> tuple[Array, Array, Array]:
  """(whitened advantages_BxT, returns_BxT, sequence KL_B) of a scored rollout at weight beta."""
  response_BxT = rollout.response_BxT
  kl_BxT = kl_control.kl_per_token(rollout.logp_BxT, rollout.ref_logp_BxT, response_BxT)
  rewards_BxT = kl_control.shaped_rewards(rollout.scores_B, kl_BxT, response_BxT, kl_beta)
  advantages_BxT, returns_BxT = ppo_math.gae(rewards_BxT, rollout.values_BxT, response_BxT,
                                             settings.gamma, settings.lam)
  return (masked_tokens.masked_whiten(advantages_BxT, response_BxT), returns_BxT,
          masked_tokens.masked_sum(kl_BxT, response_BxT, axis=-1))


def _policy_loss(params, rollout: ScoredRollout, advantages_BxT: Array, *, policy_cfg,
                 settings: PPOSettings) -> tuple[Array, Metrics]:
  logp_BxT, entropy_BxT = rollouts.policy_outputs(params, policy_cfg, rollout.tokens_BxT,
                                                  rollout.mask_BxT, rollout.response_BxT)
  loss, metrics = ppo_math.ppo_policy_loss(logp_BxT, rollout.logp_BxT, advantages_BxT,
                                           rollout.response_BxT, settings.clip_eps)
  entropy = masked_tokens.masked_mean(entropy_BxT, rollout.response_BxT)
  deviation_BxT = jnp.abs(jnp.exp(logp_BxT - jax.lax.stop_gradient(rollout.logp_BxT)) - 1.0)
  metrics['max_ratio_deviation'] = jnp.max(jnp.where(rollout.response_BxT, deviation_BxT, 0.0))
  metrics['policy_loss'] = loss
  metrics['entropy'] = entropy
  return loss - settings.entropy_coef * entropy, metrics


def _value_loss(params, rollout: ScoredRollout, returns_BxT: Array, *, critic_cfg,
                settings: PPOSettings) -> tuple[Array, Metrics]:
  values_BxT = rollouts.state_values(params, critic_cfg, rollout.tokens_BxT, rollout.mask_BxT,
                                     rollout.response_BxT)
  loss, metrics = ppo_math.value_loss(values_BxT, rollout.values_BxT, returns_BxT,
                                      rollout.response_BxT, settings.value_clip)
  return loss, {'value_loss': loss, **metrics}


def ppo_update(state: PPOState, rollout: ScoredRollout, key: Array, *, policy_cfg: GPTConfig,
               critic_cfg: GPTConfig, settings: PPOSettings,
               policy_optimizer: optax.GradientTransformation,
               critic_optimizer: optax.GradientTransformation, schedule: optax.Schedule
               ) -> tuple[PPOState, Metrics, Metrics]:
  """(state, per-minibatch metrics [E*M] each, the rollout's statistics)."""
  advantages_BxT, returns_BxT, kl_B = advantages(rollout, state.kl_beta, settings)
  b = rollout.tokens_BxT.shape[0]
  m = b // settings.minibatches
  order_ExMxm = jnp.stack([jax.random.permutation(jax.random.fold_in(key, e), b).reshape(-1, m)
                           for e in range(settings.epochs)])
  data = (rollout, advantages_BxT, returns_BxT)

  def minibatch(state: PPOState, rows_m: Array) -> tuple[PPOState, Metrics]:
    mb_rollout, mb_advantages, mb_returns = jax.tree.map(lambda x: x[rows_m], data)
    policy_grads, policy_metrics = jax.grad(_policy_loss, has_aux=True)(
        state.policy.params, mb_rollout, mb_advantages, policy_cfg=policy_cfg, settings=settings)
    critic_grads, critic_metrics = jax.grad(_value_loss, has_aux=True)(
        state.critic.params, mb_rollout, mb_returns, critic_cfg=critic_cfg, settings=settings)
    policy, policy_update = stage.optimizer_update(state.policy, policy_grads,
                                                   policy_optimizer, schedule)
    critic, critic_update = stage.optimizer_update(state.critic, critic_grads,
                                                   critic_optimizer, schedule)
    metrics = {**policy_metrics, **critic_metrics, **policy_update,
               'critic_grad_norm': critic_update['grad_norm']}
    return state.replace(policy=policy, critic=critic), metrics

  state, per_minibatch = jax.lax.scan(minibatch, state, order_ExMxm.reshape(-1, m))
  response_BxT = rollout.response_BxT
  stats = {'reward': jnp.mean(rollout.scores_B), 'kl': jnp.mean(kl_B),
           'response_tokens': jnp.mean(jnp.sum(response_BxT, axis=-1, dtype=jnp.float32)),
           'value_mean': masked_tokens.masked_mean(rollout.values_BxT, response_BxT)}
  return state, per_minibatch, stats
