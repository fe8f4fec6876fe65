"""Autoregressive generation with the model's preallocated KV cache (the library; the CLI is
`gptjax.generate`).

One jitted call per shape does everything: the left-padded prompt batch is prefilled in a single
forward pass (filling the cache), then a `jax.lax.while_loop` feeds one token per step, so each
step costs one token's work against the cached keys and values instead of the whole prefix.

Left padding keeps every row's next slot at the same cache index (the cache has one shared write
position). Pads are hidden from attention by `kv_mask_BxS`, and positions count from 0 at each
row's first real token, so a padded row yields exactly the logits of the same prompt unpadded.

`sample_windowed` slides the context window once the prompt and output outgrow max_seq_len, so a
continuation's length is not limited by the model's context.

Shape letters follow `gptjax/model/gpt.py`, plus P prompt length (padded) and N new tokens.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.generate.sampling import SamplingConfig, select_tokens
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT

Array = jax.Array


class Generation(NamedTuple):
  tokens_BxN: Array  # int32 new tokens; pad_id after a row's stop token
  lengths_B: Array  # int32 new tokens per row, its stop token included


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Token lists of different lengths -> (tokens_BxP int32, mask_BxP bool), pads on the left."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError(f'Every prompt needs at least one token, got lengths '
                     f'{[len(p) for p in prompts]}; start an empty prompt with the EOS token.')
  p = max(len(x) for x in prompts)
  tokens_BxP = np.full((len(prompts), p), pad_id, np.int32)
  mask_BxP = np.zeros((len(prompts), p), bool)
  for row, prompt in enumerate(prompts):
    tokens_BxP[row, p - len(prompt):] = np.asarray(prompt, np.int32)
    mask_BxP[row, p - len(prompt):] = True
  return tokens_BxP, mask_BxP


def prompt_positions(mask_BxP: Array) -> Array:
  """Positions counting from 0 at each row's first real token; pads get 0 (they are masked)."""
  return jnp.maximum(jnp.cumsum(mask_BxP.astype(jnp.int32), axis=1) - 1, 0)


def check_lengths(config: GPTConfig, prompt_len: int, max_new_tokens: int) -> None:
  """Raises if the cache would need positions that the model has no embedding for; a prefix- or
  prompt-tuned model's P slots take the first P positions (`gptjax/model/peft.py`)."""
  if max_new_tokens < 1:
    raise ValueError(f'max_new_tokens={max_new_tokens} must be at least 1.')
  read = prompt_len + max_new_tokens - 1  # the last new token is never fed back
  offset = config.peft.position_offset
  room = config.max_seq_len - offset
  if config.position == 'learned' and read > room:
    slots = f' after its {offset} {config.peft.method} slots' if offset else ''
    raise ValueError(
        f'prompt length {prompt_len} + max_new_tokens {max_new_tokens} - 1 = {read} tokens exceed '
        f'the learned position table (max_seq_len={config.max_seq_len}){slots}; shorten the prompt '
        f'or lower max_new_tokens to {room - prompt_len + 1}.')


def init_cache(config: GPTConfig, batch_size: int, length: int) -> Any:
  """An all-zero 'cache' collection of `length` slots, built from shapes (no forward pass)."""
  model = GPT(config, decode=True)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((batch_size, length), jnp.int32)))['cache']
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def decode_apply(params: Any, config: GPTConfig, cache: Any, tokens_BxT: Array,
                 positions_BxT: Array, kv_mask_BxS: Array) -> tuple[Array, Any]:
  """Feeds T tokens at the cache's write index; returns (logits_BxTxV, updated cache)."""
  logits_BxTxV, variables = GPT(config, decode=True).apply(
      {'params': params, 'cache': cache}, tokens_BxT, positions_BxT=positions_BxT,
      kv_mask_BxS=kv_mask_BxS, mutable=['cache'])
  return logits_BxTxV, variables['cache']


def prefill(params: Any, config: GPTConfig, prompt_BxP: Array, mask_BxP: Array,
            max_new_tokens: int) -> tuple[Array, Any, Array]:
  """Runs the prompt through a fresh cache sized for it plus max_new_tokens - 1 fed-back tokens.

  Returns the last position's logits_BxV, the cache and the cache's kv_mask_BxS (pads False).
  """
  b, p = prompt_BxP.shape
  check_lengths(config, p, max_new_tokens)
  kv_mask_BxS = jnp.concatenate([mask_BxP.astype(bool), jnp.ones((b, max_new_tokens - 1), bool)], 1)
  cache = init_cache(config, b, p + max_new_tokens - 1)
  logits_BxPxV, cache = decode_apply(params, config, cache, prompt_BxP,
                                     prompt_positions(mask_BxP), kv_mask_BxS)
  return logits_BxPxV[:, -1], cache, kv_mask_BxS


class _LoopState(NamedTuple):
  step: Array  # index of the next new token to choose
  cache: Any
  last_B: Array  # the token chosen at step - 1
  tokens_BxN: Array
  lengths_B: Array
  done_B: Array


def _record(state: _LoopState, token_B: Array, stop_tokens: tuple[int, ...], pad_id: int):
  """Writes step's token for rows still running, then marks rows that just emitted a stop token."""
  running_B = ~state.done_B
  column_B = jnp.where(running_B, token_B, pad_id)
  tokens_BxN = jax.lax.dynamic_update_slice(state.tokens_BxN, column_B[:, None], (0, state.step))
  done_B = state.done_B
  if stop_tokens:
    done_B = done_B | jnp.isin(token_B, jnp.asarray(stop_tokens, jnp.int32))
  return state._replace(step=state.step + 1, last_B=token_B, tokens_BxN=tokens_BxN,
                        lengths_B=state.lengths_B + running_B, done_B=done_B)


@functools.partial(jax.jit, static_argnames=('config', 'max_new_tokens', 'sampling', 'stop_tokens',
                                             'pad_id'))
def generate(params: Any, prompt_BxP: Array, prompt_mask_BxP: Array | None, key: Array, *,
             config: GPTConfig, max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
             stop_tokens: tuple[int, ...] = (), pad_id: int = 0) -> Generation:
  """Samples up to max_new_tokens per row after a left-padded prompt batch (see `left_pad`).

  A row ends at its first stop token (kept in the output and counted in its length); the loop
  ends when every row has ended. Step i draws with `jax.random.fold_in(key, i)`, so a fixed key
  reproduces the same tokens. `prompt_mask_BxP=None` means no padding.
  """
  b, _ = prompt_BxP.shape
  if prompt_mask_BxP is None:
    prompt_mask_BxP = jnp.ones(prompt_BxP.shape, bool)
  logits_BxV, cache, kv_mask_BxS = prefill(params, config, prompt_BxP, prompt_mask_BxP,
                                           max_new_tokens)
  next_position_B = jnp.sum(prompt_mask_BxP, axis=1, dtype=jnp.int32)
  state = _LoopState(step=jnp.array(0, jnp.int32), cache=cache, last_B=jnp.zeros((b,), jnp.int32),
                     tokens_BxN=jnp.full((b, max_new_tokens), pad_id, jnp.int32),
                     lengths_B=jnp.zeros((b,), jnp.int32), done_B=jnp.zeros((b,), bool))
  first_B = select_tokens(logits_BxV, jax.random.fold_in(key, 0), sampling)
  state = _record(state, first_B, stop_tokens, pad_id)

  def keep_going(state: _LoopState) -> Array:
    return (state.step < max_new_tokens) & ~jnp.all(state.done_B)

  def step(state: _LoopState) -> _LoopState:
    positions_Bx1 = (next_position_B + state.step - 1)[:, None]
    logits_Bx1xV, cache = decode_apply(params, config, state.cache, state.last_B[:, None],
                                       positions_Bx1, kv_mask_BxS)
    token_B = select_tokens(logits_Bx1xV[:, 0], jax.random.fold_in(key, state.step), sampling)
    return _record(state._replace(cache=cache), token_B, stop_tokens, pad_id)

  state = jax.lax.while_loop(keep_going, step, state)
  return Generation(tokens_BxN=state.tokens_BxN, lengths_B=state.lengths_B)


def sample_windowed(params: Any, config: GPTConfig, prompt_ids: Sequence[int], max_new_tokens: int,
                    key: Array, sampling: SamplingConfig,
                    stop_tokens: tuple[int, ...] = ()) -> list[int]:
  """Samples one prompt's continuation of any length, never past the model's max_seq_len.

  The model never saw positions beyond max_seq_len (a learned table has none), so once the context
  is full the last max_seq_len // 2 tokens are prefilled afresh and sampling goes on from there: a
  window that slides by half its length, at the cost of one prefill per slide. Every round after
  the first has the same shapes, so this compiles `generate` at most twice.
  """
  window = config.max_seq_len - config.peft.position_offset  # prefix/prompt slots come first
  ids, new = [int(i) for i in prompt_ids], []
  round_ = 0
  while len(new) < max_new_tokens:
    context = ids if len(ids) < window else ids[-(window // 2):]
    out = generate(params, np.asarray([context], np.int32), None, jax.random.fold_in(key, round_),
                   config=config, max_new_tokens=window - len(context) + 1, sampling=sampling,
                   stop_tokens=stop_tokens)
    chunk = [int(t) for t in np.asarray(out.tokens_BxN[0, :int(out.lengths_B[0])])]
    chunk = chunk[:max_new_tokens - len(new)]
    ids, new, round_ = ids + chunk, new + chunk, round_ + 1
    if chunk and chunk[-1] in stop_tokens:
      break
  return new
