"""Sampling responses from a policy and scoring them: the rollouts of preference learning.

A rollout is a batch of sequences laid out as `gptjax/generate/decoding.py` generates them: a prompt
left-padded to P tokens, then up to N sampled tokens, then right padding, so T = P + N. Masks say
which tokens are real (`mask_BxT`) and which the policy chose (`response_BxT`, the stop token
included: stopping is an action too). Responses are drawn at temperature 1, from the policy's own
distribution: PPO's ratios and DPO's KL estimates are about that distribution, not a sharpened one.

Log-probs are never taken from the sampler. `token_logprobs` recomputes them with one full forward
pass over the whole sequence, the computation every training step repeats, so a policy that has
not moved since it sampled gives ratios of exactly 1 up to float rounding. Per-token arrays are
aligned with the tokens: entry t belongs to token t (log p(token t | tokens < t)), and is 0 where
the token is not a response token.

Shape letters follow `gptjax/model/gpt.py`, plus P prompt length (padded) and N new tokens.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.data.tokenizer import Tokenizer
from gptjax.generate import decoding
from gptjax.generate.sampling import SamplingConfig
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.preferences import reward_model
from gptjax.train import masked_tokens

Array = jax.Array

POLICY_SAMPLING = SamplingConfig(temperature=1.0)


class Rollout(NamedTuple):
  tokens_BxT: Array  # int32: left-padded prompt, response, right padding (the EOS id)
  mask_BxT: Array  # bool: real tokens, prompt and response
  response_BxT: Array  # bool: the tokens the policy chose


def prompt_ids(tokenizer: Tokenizer, prompt: str, max_tokens: int) -> list[int]:
  """The prompt's last `max_tokens` tokens (where the response starts); an empty prompt is EOS,
  as generation starts one."""
  ids = [int(i) for i in tokenizer.encode(prompt)] or [int(tokenizer.eos_id)]
  return ids[-max_tokens:]


def prompt_rows(tokenizer: Tokenizer, prompts: Sequence[str], max_tokens: int) -> np.ndarray:
  """int32 [B, 2, P] with P = max_tokens: each prompt's tokens left-padded with EOS, and a 0/1
  row saying which are real. One fixed P keeps every sampling call the same shape."""
  rows_Bx2xP = np.zeros((len(prompts), 2, max_tokens), np.int32)
  rows_Bx2xP[:, 0] = tokenizer.eos_id
  for row, prompt in enumerate(prompts):
    ids = prompt_ids(tokenizer, prompt, max_tokens)
    rows_Bx2xP[row, 0, max_tokens - len(ids):] = ids
    rows_Bx2xP[row, 1, max_tokens - len(ids):] = 1
  return rows_Bx2xP


def sample(params: Any, prompts_Bx2xP: Array, key: Array, *, config: GPTConfig,
           max_new_tokens: int, eos_id: int) -> Rollout:
  """Responses to `prompt_rows` drawn with the KV-cache sampler; a row ends at its first EOS."""
  prompt_BxP, prompt_mask_BxP = prompts_Bx2xP[:, 0], prompts_Bx2xP[:, 1].astype(bool)
  out = decoding.generate(params, prompt_BxP, prompt_mask_BxP, key, config=config,
                          max_new_tokens=max_new_tokens, sampling=POLICY_SAMPLING,
                          stop_tokens=(eos_id,), pad_id=eos_id)
  new_BxN = jnp.arange(max_new_tokens)[None, :] < out.lengths_B[:, None]
  return Rollout(tokens_BxT=jnp.concatenate([prompt_BxP, out.tokens_BxN], axis=1),
                 mask_BxT=jnp.concatenate([prompt_mask_BxP, new_BxN], axis=1),
                 response_BxT=jnp.concatenate([jnp.zeros_like(prompt_mask_BxP), new_BxN], axis=1))


def _shift_right(x_BxT: Array) -> Array:
  """Entry t of the result is x_BxT[t - 1]; entry 0 is 0 (no token precedes the first)."""
  return jnp.pad(x_BxT[:, :-1], ((0, 0), (1, 0)))


def policy_outputs(params: Any, config: GPTConfig, tokens_BxT: Array, mask_BxT: Array,
                   response_BxT: Array) -> tuple[Array, Array]:
  """(log-prob, entropy) [B, T] of each response token under the policy, 0 elsewhere.

  One forward pass without dropout; padding on either side is masked from attention and positions
  count from each row's first real token, as in the sampler, so a row's values do not depend on
  how it is padded.
  """
  positions_BxT = decoding.prompt_positions(mask_BxT)
  logits_BxTxV = GPT(config).apply({'params': params}, tokens_BxT, positions_BxT=positions_BxT,
                                   kv_mask_BxS=mask_BxT.astype(bool))
  # The logits at t - 1 are the distribution token t was drawn from.
  chosen_BxT = response_BxT[:, 1:]
  logp_BxT = masked_tokens.sequence_logprobs(logits_BxTxV[:, :-1], tokens_BxT[:, 1:], chosen_BxT)
  entropy_BxT = masked_tokens.token_entropy(logits_BxTxV[:, :-1], chosen_BxT)
  return jnp.pad(logp_BxT, ((0, 0), (1, 0))), jnp.pad(entropy_BxT, ((0, 0), (1, 0)))


def token_logprobs(params: Any, config: GPTConfig, tokens_BxT: Array, mask_BxT: Array,
                   response_BxT: Array) -> Array:
  """log pi(token t | tokens < t) [B, T] at the response tokens, 0 elsewhere."""
  return policy_outputs(params, config, tokens_BxT, mask_BxT, response_BxT)[0]


def state_values(params: Any, config: GPTConfig, tokens_BxT: Array, mask_BxT: Array,
                 response_BxT: Array) -> Array:
  """A value model's V [B, T] of the state each response token is chosen in (the prefix before
  it), 0 elsewhere: the score at t - 1 pairs with token t, as logits do."""
  scores_BxT = reward_model.ScalarHeadGPT(config).apply({'params': params}, tokens_BxT, mask_BxT)
  return jnp.where(response_BxT, _shift_right(scores_BxT), 0.0)


def sequence_rewards(params: Any, config: GPTConfig, rollout: Rollout) -> Array:
  """A reward model's [B] scores of whole sequences, read at each row's last real token."""
  return reward_model.rewards(params, config, rollout.tokens_BxT, rollout.mask_BxT)


def responses(tokenizer: Tokenizer, rollout: Rollout) -> tuple[list[str], list[bool]]:
  """Each row's response as text (without its EOS) and whether it was cut off at N tokens."""
  tokens_BxT, response_BxT = jax.device_get((rollout.tokens_BxT, rollout.response_BxT))
  eos = int(tokenizer.eos_id)
  texts, truncated = [], []
  for tokens_T, chosen_T in zip(tokens_BxT, response_BxT):
    ids = [int(i) for i in tokens_T[chosen_T]]
    ended = bool(ids) and ids[-1] == eos
    texts.append(tokenizer.decode(ids[:-1] if ended else ids))
    truncated.append(not ended)
  return texts, truncated


def gold_scores(texts: Sequence[str], gold: Callable[[str], float]) -> np.ndarray:
  return np.asarray([gold(text) for text in texts], np.float64)
