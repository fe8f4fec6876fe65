"""Cached generation against the uncached model: logits, greedy tokens, padding, stops, sampling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_models import random_model

from gptjax.generate.decoding import decode_apply, generate, left_pad, prefill, sample_windowed
from gptjax.generate.sampling import SamplingConfig
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT

PROMPTS = ([1, 2, 3, 4, 5], [6, 7, 8])  # different lengths, so row 1 is left-padded
# Between them: every position encoding, MHA / GQA / MQA, scanned and unrolled layers, tied and
# untied heads, both MLPs and both norms.
VARIANTS = {
    'learned': dict(),
    'sinusoidal_gqa_scan': dict(position='sinusoidal', num_kv_heads=2, scan_layers=True),
    'rope_mqa_untied': dict(position='rope', num_kv_heads=1, tie_embeddings=False, mlp='swiglu',
                            norm='rmsnorm'),
}


def tiny(std: float = 0.5, **overrides) -> tuple[GPTConfig, dict]:
  """A random model; a large std makes its next-token distributions far from uniform."""
  defaults = (('vocab_size', 13), ('d_model', 16), ('num_layers', 2), ('num_heads', 4),
              ('max_seq_len', 32))
  return random_model(std, defaults, tuple(sorted(overrides.items())))


def right_padded(rows: list[np.ndarray], pad_id: int = 0) -> np.ndarray:
  """Causal attention never looks right, so right padding leaves every real position's logits as
  in the unpadded sequence: one uncached forward gives the reference for all rows at once."""
  out = np.full((len(rows), max(len(r) for r in rows)), pad_id, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


@functools.partial(jax.jit, static_argnames='cfg')
def full_forward(params, tokens_BxT, cfg):
  return GPT(cfg).apply({'params': params}, tokens_BxT)


@functools.partial(jax.jit, static_argnames=('cfg', 'n'))
def cached_teacher_forced(params, prompt_BxP, mask_BxP, next_BxN, cfg, n):
  """Prefill, then feed the given tokens one at a time; logits of every step, [B, n + 1, V]."""
  logits_BxV, cache, kv_mask_BxS = prefill(params, cfg, prompt_BxP, mask_BxP, n + 1)
  start_B = mask_BxP.sum(1)

  def step(cache, i_and_token_B):
    i, token_B = i_and_token_B
    logits_Bx1xV, cache = decode_apply(params, cfg, cache, token_B[:, None],
                                       (start_B + i)[:, None], kv_mask_BxS)
    return cache, logits_Bx1xV[:, 0]

  _, steps_NxBxV = jax.lax.scan(step, cache, (jnp.arange(n), next_BxN.T))
  return jnp.concatenate([logits_BxV[:, None], steps_NxBxV.transpose(1, 0, 2)], axis=1)


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.slow
def test_cached_logits_match_full_forward_with_left_padding(variant):
  cfg, params = tiny(**VARIANTS[variant])
  n = 4
  prompt_BxP, mask_BxP = left_pad(PROMPTS)
  next_BxN = np.asarray(jax.random.randint(jax.random.key(1), (2, n), 0, cfg.vocab_size))
  cached_BxStepsxV = cached_teacher_forced(params, prompt_BxP, mask_BxP, next_BxN, cfg, n)
  rows = [np.concatenate([p, nxt]) for p, nxt in zip(PROMPTS, next_BxN)]
  full_BxTxV = full_forward(params, right_padded(rows), cfg)
  for row, prompt in enumerate(PROMPTS):
    # The logits after the prompt and after each fed token: positions len-1 .. len-1+n.
    want = full_BxTxV[row, len(prompt) - 1:len(prompt) + n]
    np.testing.assert_allclose(cached_BxStepsxV[row], want, atol=2e-5, rtol=1e-5)


def uncached_greedy(params, cfg, prompts, n):
  """Reference: recompute every row's whole sequence each step and take the argmax at its end."""
  rows = [list(p) for p in prompts]
  width = max(map(len, prompts)) + n  # one fixed shape, so one compilation
  for _ in range(n):
    buffer = right_padded([np.asarray(r) for r in rows] + [np.zeros(width, np.int32)])[:-1]
    logits_BxTxV = full_forward(params, buffer, cfg)
    for i, r in enumerate(rows):
      r.append(int(np.argmax(logits_BxTxV[i, len(r) - 1])))
  return np.asarray([r[len(p):] for r, p in zip(rows, prompts)])


def test_greedy_equals_argmax_of_uncached_model():
  cfg, params = tiny()
  n = 6
  out = generate(params, *left_pad(PROMPTS), jax.random.key(0), config=cfg, max_new_tokens=n,
                 sampling=SamplingConfig(temperature=0.0))
  np.testing.assert_array_equal(out.tokens_BxN, uncached_greedy(params, cfg, PROMPTS, n))
  np.testing.assert_array_equal(out.lengths_B, [n, n])


def test_temperature_near_zero_is_greedy():
  cfg, params = tiny()
  run = lambda sampling: generate(params, *left_pad(PROMPTS), jax.random.key(3), config=cfg,
                                  max_new_tokens=6, sampling=sampling).tokens_BxN
  np.testing.assert_array_equal(run(SamplingConfig(temperature=1e-4)),
                                run(SamplingConfig(temperature=0.0)))


FLAT = dict(std=0.05)  # a near-uniform model, so different keys give different text
SAMPLED = dict(max_new_tokens=12, sampling=SamplingConfig(temperature=1.0, top_k=8, top_p=0.95))


def test_sampling_is_reproducible_with_a_fixed_key():
  cfg, params = tiny(**FLAT)
  run = lambda seed: np.asarray(generate(params, *left_pad(PROMPTS), jax.random.key(seed),
                                         config=cfg, **SAMPLED).tokens_BxN)
  np.testing.assert_array_equal(run(7), run(7))
  assert not np.array_equal(run(7), run(8))


def test_stop_tokens_end_rows_and_pad_the_rest():
  cfg, params = tiny(**FLAT)
  n = SAMPLED['max_new_tokens']
  kwargs = dict(config=cfg, **SAMPLED)
  free = np.asarray(generate(params, *left_pad(PROMPTS), jax.random.key(5), **kwargs).tokens_BxN)
  stop = int(free[0, 3])
  out = generate(params, *left_pad(PROMPTS), jax.random.key(5), stop_tokens=(stop,), pad_id=-1,
                 **kwargs)
  for row in range(2):
    hits = np.flatnonzero(free[row] == stop)
    length = hits[0] + 1 if hits.size else n
    assert out.lengths_B[row] == length
    np.testing.assert_array_equal(out.tokens_BxN[row, :length], free[row, :length])
    assert np.all(np.asarray(out.tokens_BxN[row, length:]) == -1)


def test_generate_rejects_positions_past_the_learned_table():
  cfg = GPTConfig(vocab_size=13, d_model=16, num_layers=1, num_heads=4, max_seq_len=8)
  # Raised while tracing, before the (here absent) parameters are touched: 5 + 5 - 1 > 8.
  with pytest.raises(ValueError, match='max_seq_len=8'):
    generate({}, *left_pad(PROMPTS), jax.random.key(0), config=cfg, max_new_tokens=5)


def test_left_pad_layout_and_errors():
  tokens, mask = left_pad([[1, 2, 3], [4]], pad_id=9)
  np.testing.assert_array_equal(tokens, [[1, 2, 3], [9, 9, 4]])
  np.testing.assert_array_equal(mask, [[True, True, True], [False, False, True]])
  with pytest.raises(ValueError, match='at least one token'):
    left_pad([[1], []])


def uncached_windowed_greedy(params, cfg, prompt, n):
  """Reference: the argmax of the full forward pass over the context, token by token.

  The context grows by each new token; once it holds more than max_seq_len tokens it is cut to
  its last max_seq_len // 2, so every forward pass sees at most max_seq_len positions. A prompt of
  max_seq_len tokens or more is cut the same way before the first token.
  """
  window = cfg.max_seq_len
  context, new = list(prompt), []
  if len(context) >= window:
    context = context[-(window // 2):]
  while len(new) < n:
    buffer_1xT = np.zeros((1, window), np.int32)  # right-padded to one shape: one compilation
    buffer_1xT[0, :len(context)] = context
    logits_1xTxV = full_forward(params, buffer_1xT, cfg)
    token = int(np.argmax(logits_1xTxV[0, len(context) - 1]))
    context.append(token)
    new.append(token)
    if len(context) > window:
      context = context[-(window // 2):]
  return new


@pytest.mark.parametrize('prompt', [PROMPTS[1], list(range(1, 12))], ids=['short', 'longer'])
def test_sample_windowed_greedy_equals_uncached_sliding_argmax(prompt):
  """All 20 greedy tokens (several slides of a window of 8) equal the uncached reference."""
  cfg, params = tiny(max_seq_len=8, tie_embeddings=False)
  # Larger token and position tables: the greedy choice then varies with the context and the
  # position, so a window cut at the wrong place or a slide one token early changes the tokens.
  params = {**params, 'embed': {'embedding': 4 * params['embed']['embedding']},
            'pos_embed': 8 * params['pos_embed']}
  want = uncached_windowed_greedy(params, cfg, prompt, 20)
  assert len(set(want)) >= 3
  new = sample_windowed(params, cfg, prompt, 20, jax.random.key(0),
                        SamplingConfig(temperature=0.0))
  assert new == want
