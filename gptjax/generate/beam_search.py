"""Beam search over the KV cache: W hypotheses per prompt, the cache reordered by parent each step.

Each prompt row carries W alive hypotheses (flattened to B*W cache rows) and a pool of W finished
ones. A step scores every one-token extension of the alive beams, moves the extensions that end
in a stop token (or reach max_new_tokens) and rank among the W best extensions into the finished
pool, keeps the W best others alive, and gathers the cache rows of their parents so the next step
attends to the right history. The rank rule (Hugging Face's) means a stop token only ends a
hypothesis that would have made the beam, so one beam is exactly greedy decoding.

Scores: a finished hypothesis of `length` new tokens (its stop token included, the prompt not)
scores sum(log p) / penalty(length), with
  'gnmt':   ((5 + length) / 6) ** alpha   (Wu et al. 2016, "Google's NMT system", eq. 14)
  'simple': length ** alpha               (Hugging Face's `length_penalty`)
alpha = 0 ranks by total log-probability; alpha > 0 favours longer outputs.

Stopping: by default (`early_stopping=False`) a prompt row stops once its pool is full and no
alive beam can still beat the pool's worst entry; log-probabilities only fall as a hypothesis grows,
so that bound is exact and the answer equals running to max_new_tokens. `early_stopping=True`
stops as soon as the pool holds W hypotheses (Hugging Face's heuristic; faster, may miss better
longer ones when alpha > 0).

Shape letters follow `gptjax/model/gpt.py`, plus W beams, C candidates per step and N new tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gptjax.generate.decoding import decode_apply, prefill
from gptjax.model.config import GPTConfig

Array = jax.Array
PENALTIES = ('gnmt', 'simple')


@dataclasses.dataclass(frozen=True)
class BeamSearchConfig:
  """Beam settings; frozen (hashable) so `jax.jit` takes it as a static argument."""

  num_beams: int = 4
  alpha: float = 0.0  # length-penalty exponent; 0 ranks by total log-probability
  length_penalty: str = 'gnmt'  # 'gnmt' | 'simple', see the module docstring
  early_stopping: bool = False

  def __post_init__(self):
    if self.num_beams < 1:
      raise ValueError(f'num_beams={self.num_beams} must be at least 1.')
    if self.length_penalty not in PENALTIES:
      raise ValueError(f'length_penalty={self.length_penalty!r}; choose one of {PENALTIES}.')


class BeamSearchOutput(NamedTuple):
  tokens_BxWxN: Array  # int32 finished hypotheses, best first; pad_id after a stop token
  scores_BxW: Array  # length-penalised log-probabilities, descending
  lengths_BxW: Array  # int32 new tokens, the stop token included


def length_penalty(length: Array, beam: BeamSearchConfig) -> Array:
  length = jnp.asarray(length, jnp.float32)
  if beam.length_penalty == 'gnmt':
    return ((5.0 + length) / 6.0) ** beam.alpha
  return length ** beam.alpha


def _beam_rows(leaf: Array) -> int:
  """Batch axis of a cache leaf: keys/values are [..., B, S, K, H] (a leading L when scanned)."""
  return leaf.ndim - 4


def _is_index(path: tuple) -> bool:
  return getattr(path[-1], 'key', None) == 'cache_index'


def _gather_cache(cache: Any, rows_R: Array) -> Any:
  """Cache rows `rows_R` (indices into the B*W batch axis); the shared write index is untouched."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x if _is_index(path) else jnp.take(x, rows_R, axis=_beam_rows(x)), cache)


def _gather(x_BxWx: Array, beams_BxW: Array) -> Array:
  return jnp.take_along_axis(x_BxWx, beams_BxW.reshape(beams_BxW.shape + (1,) * (x_BxWx.ndim - 2)),
                             axis=1)


class _BeamState(NamedTuple):
  step: Array
  cache: Any
  alive_BxWxN: Array
  alive_logp_BxW: Array
  done_tokens_BxWxN: Array
  done_scores_BxW: Array
  done_lengths_BxW: Array
  finished_B: Array  # True once a prompt row needs no more steps


def _beam_step(state: _BeamState, logits_BWxV: Array, beam: BeamSearchConfig,
               stop_tokens: tuple[int, ...], max_new_tokens: int) -> _BeamState:
  """Chooses token `state.step` for every beam; see the module docstring for the rules."""
  b, w, n = state.alive_BxWxN.shape
  v = logits_BWxV.shape[-1]
  t = state.step
  logp_BxWxV = jax.nn.log_softmax(logits_BWxV.astype(jnp.float32)).reshape(b, w, v)
  total_BxWV = (state.alive_logp_BxW[:, :, None] + logp_BxWxV).reshape(b, w * v)
  # Each beam has at most len(stop_tokens) stopping extensions, so this many candidates always
  # leave W that continue.
  c = min(w * v, w * (1 + len(stop_tokens)))
  cand_logp_BxC, flat_BxC = jax.lax.top_k(total_BxWV, c)
  parent_BxC, token_BxC = flat_BxC // v, (flat_BxC % v).astype(jnp.int32)
  cand_BxCxN = jax.lax.dynamic_update_slice(
      _gather(state.alive_BxWxN, parent_BxC), token_BxC[:, :, None], (0, 0, t))
  stops_BxC = (jnp.isin(token_BxC, jnp.asarray(stop_tokens, jnp.int32)) if stop_tokens
               else jnp.zeros_like(token_BxC, bool))
  # Only extensions that would have made the beam (rank < W) may finish; see the module docstring.
  ends_BxC = (stops_BxC | (t == max_new_tokens - 1)) & (jnp.arange(c) < w)[None]

  # Finished pool: merge the ending candidates (not for rows already finished) and keep the best W.
  new_scores_BxC = cand_logp_BxC / length_penalty(t + 1, beam)
  new_scores_BxC = jnp.where(ends_BxC & ~state.finished_B[:, None], new_scores_BxC, -jnp.inf)
  pool_scores = jnp.concatenate([state.done_scores_BxW, new_scores_BxC], axis=1)
  pool_tokens = jnp.concatenate([state.done_tokens_BxWxN, cand_BxCxN], axis=1)
  pool_lengths = jnp.concatenate(
      [state.done_lengths_BxW, jnp.full((b, c), t + 1, jnp.int32)], axis=1)
  done_scores_BxW, keep_BxW = jax.lax.top_k(pool_scores, w)

  # Alive beams: the best W candidates that did not stop.
  alive_logp_BxW, pick_BxW = jax.lax.top_k(jnp.where(stops_BxC, -jnp.inf, cand_logp_BxC), w)
  parent_BxW = _gather(parent_BxC, pick_BxW)
  rows_BW = (jnp.arange(b)[:, None] * w + parent_BxW).reshape(b * w)

  # A row is finished when its pool is full and (unless early_stopping) no alive beam, at any
  # remaining length, can score above the pool's worst entry.
  pool_full_B = jnp.all(jnp.isfinite(done_scores_BxW), axis=1)
  if beam.early_stopping:
    finished_B = pool_full_B
  else:
    best_alive_B = jnp.max(alive_logp_BxW, axis=1)  # <= 0; dividing by either end bounds it
    bound_B = jnp.maximum(best_alive_B / length_penalty(t + 2, beam),
                          best_alive_B / length_penalty(max_new_tokens, beam))
    finished_B = pool_full_B & (done_scores_BxW[:, -1] >= bound_B)
  return _BeamState(
      step=t + 1, cache=_gather_cache(state.cache, rows_BW),
      alive_BxWxN=_gather(cand_BxCxN, pick_BxW), alive_logp_BxW=alive_logp_BxW,
      done_tokens_BxWxN=_gather(pool_tokens, keep_BxW), done_scores_BxW=done_scores_BxW,
      done_lengths_BxW=_gather(pool_lengths, keep_BxW),
      finished_B=state.finished_B | finished_B)


@functools.partial(jax.jit, static_argnames=('config', 'max_new_tokens', 'beam', 'stop_tokens',
                                             'pad_id'))
def beam_search(params: Any, prompt_BxP: Array, prompt_mask_BxP: Array | None, *,
                config: GPTConfig, max_new_tokens: int, beam: BeamSearchConfig = BeamSearchConfig(),
                stop_tokens: tuple[int, ...] = (), pad_id: int = 0) -> BeamSearchOutput:
  """The W best continuations of each left-padded prompt (see `decoding.left_pad`), best first.

  The prompt is prefilled once per row and its cache copied to the W beams. A row whose pool
  holds fewer than W hypotheses at the end (tiny vocabularies) has -inf scores in the empty slots.
  """
  b, _ = prompt_BxP.shape
  w, n = beam.num_beams, max_new_tokens
  if prompt_mask_BxP is None:
    prompt_mask_BxP = jnp.ones(prompt_BxP.shape, bool)
  logits_BxV, cache, kv_mask_BxS = prefill(params, config, prompt_BxP, prompt_mask_BxP, n)
  repeat = lambda path, x: x if _is_index(path) else jnp.repeat(x, w, axis=_beam_rows(x))
  cache = jax.tree_util.tree_map_with_path(repeat, cache)
  kv_mask_BWxS = jnp.repeat(kv_mask_BxS, w, axis=0)
  next_position_BW = jnp.repeat(jnp.sum(prompt_mask_BxP, axis=1, dtype=jnp.int32), w)
  # Only beam 0 is live at first, so the W copies of the prompt do not yield W equal hypotheses.
  alive_logp_BxW = jnp.where(jnp.arange(w) == 0, 0.0, -jnp.inf)[None].repeat(b, axis=0)
  state = _BeamState(
      step=jnp.array(0, jnp.int32), cache=cache,
      alive_BxWxN=jnp.full((b, w, n), pad_id, jnp.int32), alive_logp_BxW=alive_logp_BxW,
      done_tokens_BxWxN=jnp.full((b, w, n), pad_id, jnp.int32),
      done_scores_BxW=jnp.full((b, w), -jnp.inf), done_lengths_BxW=jnp.zeros((b, w), jnp.int32),
      finished_B=jnp.zeros((b,), bool))
  state = _beam_step(state, jnp.repeat(logits_BxV, w, axis=0), beam, stop_tokens, n)

  def keep_going(state: _BeamState) -> Array:
    return (state.step < n) & ~jnp.all(state.finished_B)

  def step(state: _BeamState) -> _BeamState:
    last_BW = jax.lax.dynamic_slice_in_dim(state.alive_BxWxN, state.step - 1, 1, axis=2).reshape(-1)
    positions_BWx1 = (next_position_BW + state.step - 1)[:, None]
    logits_BWx1xV, cache = decode_apply(params, config, state.cache, last_BW[:, None],
                                        positions_BWx1, kv_mask_BWxS)
    return _beam_step(state._replace(cache=cache), logits_BWx1xV[:, 0], beam, stop_tokens, n)

  state = jax.lax.while_loop(keep_going, step, state)
  return BeamSearchOutput(tokens_BxWxN=state.done_tokens_BxWxN, scores_BxW=state.done_scores_BxW,
                          lengths_BxW=state.done_lengths_BxW)
