"""Sampling a policy on many prompts in sharded batches, and the report that scores its samples.

`Sampler` runs `rollouts.sample` over prompt rows batch by batch, jitted once per model and mesh
(traced under the mesh and its logical-axis rules, prompts split over the batch axes). The pairs
stage draws its responses with it; DPO and PPO evaluate a policy with `policy_report`: responses
to the held-out prompts, drawn with the same keys at every evaluation, scored by the gold reward,
by their k1 estimate of KL(policy || reference) (`kl_control.sequence_kl`, summed over a
response's tokens, averaged over responses), and, where one is given, by a reward model.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from gptjax import train
from gptjax.data.tokenizer import Tokenizer
from gptjax.model.config import GPTConfig
from gptjax.parallel import sharding
from gptjax.preferences import kl_control, rollouts

Array = jax.Array
# Evaluation draws from its own stream, the same at every evaluation of a run.
_EVAL_KEY_OFFSET = 7_919


@functools.lru_cache(maxsize=8)
def _jitted(model_cfg: GPTConfig, max_new_tokens: int, eos_id: int, mesh: Mesh,
            rules: sharding.Rules) -> tuple[Callable, Callable]:
  """(sample, sequence_kl) jitted once per model, length and mesh: the runs of one process (a
  study's, a resumed test's) compile them once."""
  sample = functools.partial(rollouts.sample, config=model_cfg, max_new_tokens=max_new_tokens,
                             eos_id=eos_id)

  def kl(params, ref_params, rollout):
    logp_BxT = rollouts.token_logprobs(params, model_cfg, *rollout)
    ref_logp_BxT = rollouts.token_logprobs(ref_params, model_cfg, *rollout)
    return kl_control.sequence_kl(logp_BxT, ref_logp_BxT, rollout.response_BxT)

  return (jax.jit(sharding.traced_under(mesh, rules, sample, 'sample')),
          jax.jit(sharding.traced_under(mesh, rules, kl, 'sequence_kl')))


class Sampler:
  """Responses of a policy to prompt rows (`rollouts.prompt_rows`), data.batch_size at a time."""

  def __init__(self, model_cfg: GPTConfig, tokenizer: Tokenizer, max_new_tokens: int,
               batch_size: int, mesh: Mesh, rules: sharding.Rules):
    self.tokenizer, self.batch_size = tokenizer, batch_size
    self.batch_sharding = sharding.batch_sharding(mesh)
    self._sample, self.sequence_kl = _jitted(model_cfg, max_new_tokens, int(tokenizer.eos_id),
                                             mesh, rules)

  def to_global(self, rows_Bx2xP: np.ndarray) -> Array:
    return train.global_batch(rows_Bx2xP, self.batch_sharding, rows_Bx2xP.shape)

  def sample(self, params: Any, rows_Bx2xP: np.ndarray, key: Array) -> rollouts.Rollout:
    return self._sample(params, self.to_global(rows_Bx2xP), key)

  def batches(self, params: Any, rows_Nx2xP: np.ndarray, key: Array
              ) -> Iterator[rollouts.Rollout]:
    """One rollout per batch of rows, batch i drawn with fold_in(key, i); N must fill whole
    batches."""
    if len(rows_Nx2xP) % self.batch_size:
      raise ValueError(f'{len(rows_Nx2xP)} prompt rows do not fill batches of '
                       f'{self.batch_size}.')
    for i in range(0, len(rows_Nx2xP), self.batch_size):
      yield self.sample(params, rows_Nx2xP[i:i + self.batch_size],
                        jax.random.fold_in(key, i // self.batch_size))


def eval_key(seed: int) -> Array:
  return jax.random.key(seed + _EVAL_KEY_OFFSET)


def policy_report(sampler: Sampler, params: Any, ref_params: Any, rows_Nx2xP: np.ndarray,
                  gold: Callable[[str], float], key: Array,
                  score: Callable[[rollouts.Rollout], Array] | None = None) -> dict[str, float]:
  """Means over the policy's responses to `rows_Nx2xP`: `eval_gold_reward`, `eval_kl` (nats per
  response), `eval_response_tokens` and, with a reward model's `score`, `eval_reward`."""
  golds, kls, lengths, rewards = [], [], [], []
  for rollout in sampler.batches(params, rows_Nx2xP, key):
    texts, _ = rollouts.responses(sampler.tokenizer, rollout)
    golds.append(rollouts.gold_scores(texts, gold))
    kls.append(np.asarray(sampler.sequence_kl(params, ref_params, rollout)))
    lengths.append(np.asarray(rollout.response_BxT).sum(-1))
    if score is not None:
      rewards.append(np.asarray(score(rollout)))
  report = {'eval_gold_reward': float(np.mean(np.concatenate(golds))),
            'eval_kl': float(np.mean(np.concatenate(kls))),
            'eval_response_tokens': float(np.mean(np.concatenate(lengths)))}
  if score is not None:
    report['eval_reward'] = float(np.mean(np.concatenate(rewards)))
  return report
