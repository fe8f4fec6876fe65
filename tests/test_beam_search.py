"""Beam search: one beam is greedy, wide beams match exhaustive search, scores are true log-probs."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.beam_search import BeamSearchConfig, _beam_step, _BeamState, beam_search, length_penalty
from gptjax.generate import generate, left_pad
from gptjax.model import GPT, GPTConfig
from gptjax.sampling import SamplingConfig

PROMPTS = ([1, 2, 3], [4])


def tiny(**overrides) -> tuple[GPTConfig, dict]:
  return _tiny(tuple(sorted(overrides.items())))


@functools.lru_cache(maxsize=None)
def _tiny(overrides: tuple) -> tuple[GPTConfig, dict]:
  overrides = dict(overrides)
  cfg = GPTConfig(**{**dict(vocab_size=13, d_model=16, num_layers=2, num_heads=4, max_seq_len=16,
                            init_std=0.5), **overrides})
  params = jax.jit(GPT(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params']
  return cfg, params


@functools.partial(jax.jit, static_argnames='cfg')
def sequence_logprobs(params, prompt_P, continuations_CxN, cfg):
  """log p(continuation | prompt) per new token, [C, N], from the uncached model (no padding)."""
  c, n = continuations_CxN.shape
  tokens_CxT = jnp.concatenate([jnp.broadcast_to(prompt_P, (c, prompt_P.size)), continuations_CxN], 1)
  logp_CxTxV = jax.nn.log_softmax(GPT(cfg).apply({'params': params}, tokens_CxT))
  logp_CxNxV = logp_CxTxV[:, prompt_P.size - 1:-1]
  return jnp.take_along_axis(logp_CxNxV, continuations_CxN[:, :, None], axis=2)[:, :, 0]


def true_scores(params, cfg, prompt, tokens_WxN, lengths_W, beam):
  logp_WxN = np.asarray(sequence_logprobs(params, np.asarray(prompt, np.int32),
                                          np.asarray(tokens_WxN, np.int32), cfg))
  totals = [logp_WxN[i, :lengths_W[i]].sum() for i in range(len(lengths_W))]
  return np.asarray(totals) / np.asarray(length_penalty(np.asarray(lengths_W), beam))


def test_one_beam_equals_greedy():
  cfg, params = tiny()
  prompt_BxP, mask_BxP = left_pad(PROMPTS)
  # A token greedy emits early in both rows, so both end before max_new_tokens.
  kw = dict(config=cfg, max_new_tokens=8, stop_tokens=(8,))
  greedy = generate(params, prompt_BxP, mask_BxP, jax.random.key(0),
                    sampling=SamplingConfig(temperature=0.0), **kw)
  beams = beam_search(params, prompt_BxP, mask_BxP, beam=BeamSearchConfig(num_beams=1), **kw)
  np.testing.assert_array_equal(beams.tokens_BxWxN[:, 0], greedy.tokens_BxN)
  np.testing.assert_array_equal(beams.lengths_BxW[:, 0], greedy.lengths_B)
  assert np.all(np.asarray(greedy.lengths_B) < 8)


def exhaustive_best(params, cfg, prompt, n, stop, beam, top):
  """Scores every finished sequence of at most n tokens (ending at its first stop token)."""
  v = cfg.vocab_size
  all_CxN = np.asarray(list(itertools.product(range(v), repeat=n)), np.int32)
  logp_CxN = np.asarray(sequence_logprobs(params, np.asarray(prompt, np.int32), all_CxN, cfg))
  found = {}
  for seq, logp in zip(all_CxN, logp_CxN):
    hits = [i for i, tok in enumerate(seq) if tok in stop]
    length = hits[0] + 1 if hits else n
    score = logp[:length].sum() / float(length_penalty(length, beam))
    found[tuple(seq[:length])] = score
  return sorted(found.items(), key=lambda item: -item[1])[:top]


@pytest.mark.parametrize('stop, beam', [
    ((0,), BeamSearchConfig(num_beams=25, alpha=0.6)),
    ((0, 2), BeamSearchConfig(num_beams=25, alpha=1.5, length_penalty='simple')),
])
def test_wide_beam_matches_exhaustive_search(stop, beam):
  # With V = 5 and 3 new tokens, 25 = V^2 beams keep every prefix alive, so the search is exact.
  cfg, params = tiny(vocab_size=5, init_std=0.3)
  n = 3
  out = beam_search(params, *left_pad(PROMPTS), config=cfg, max_new_tokens=n, beam=beam,
                    stop_tokens=stop, pad_id=-1)
  for row, prompt in enumerate(PROMPTS):
    want = exhaustive_best(params, cfg, prompt, n, stop, beam, top=beam.num_beams)
    got_scores = np.asarray(out.scores_BxW[row])
    np.testing.assert_allclose(got_scores[:len(want)], [s for _, s in want], rtol=1e-5, atol=1e-5)
    best_length = int(out.lengths_BxW[row, 0])
    assert tuple(np.asarray(out.tokens_BxWxN[row, 0, :best_length])) == want[0][0]
    assert np.all(np.asarray(out.tokens_BxWxN[row, 0, best_length:]) == -1)


@pytest.mark.parametrize('beam', [BeamSearchConfig(num_beams=3),
                                  BeamSearchConfig(num_beams=4, alpha=1.0, early_stopping=True)])
def test_scores_are_the_true_logprobs_of_the_returned_sequences(beam):
  # A wrong cache reorder would score a hypothesis with another beam's history.
  cfg, params = tiny(position='rope', num_kv_heads=2, scan_layers=True)
  out = beam_search(params, *left_pad(PROMPTS), config=cfg, max_new_tokens=7, beam=beam,
                    stop_tokens=(3,))
  for row, prompt in enumerate(PROMPTS):
    lengths_W = np.asarray(out.lengths_BxW[row])
    want_W = true_scores(params, cfg, prompt, out.tokens_BxWxN[row], lengths_W, beam)
    np.testing.assert_allclose(out.scores_BxW[row], want_W, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(np.asarray(out.scores_BxW[row])) <= 0)
    assert len(set(tuple(np.asarray(t[:l])) for t, l in zip(out.tokens_BxWxN[row], lengths_W))) == \
        beam.num_beams


def one_step(beam: BeamSearchConfig) -> bool:
  """Step t=1 of a row whose pool is full ([-1, -2]) and whose alive beams are at -3 and -4."""
  state = _BeamState(step=jnp.array(1), cache={}, alive_BxWxN=jnp.ones((1, 2, 5), jnp.int32),
                     alive_logp_BxW=jnp.array([[-3.0, -4.0]]),
                     done_tokens_BxWxN=jnp.zeros((1, 2, 5), jnp.int32),
                     done_scores_BxW=jnp.array([[-1.0, -2.0]]),
                     done_lengths_BxW=jnp.ones((1, 2), jnp.int32), finished_B=jnp.array([False]))
  logits_BWxV = jnp.zeros((2, 3))  # uniform: each extension costs log 3
  return bool(_beam_step(state, logits_BWxV, beam, (0,), max_new_tokens=5).finished_B[0])


def test_exact_stopping_rule():
  # alpha = 0: the best alive (-3 - log 3) can never beat the worst finished (-2): stop.
  assert one_step(BeamSearchConfig(num_beams=2))
  # alpha = 2 ('simple'): at length 5 it would score (-3 - log 3) / 25 > -2: keep going.
  assert not one_step(BeamSearchConfig(num_beams=2, alpha=2.0, length_penalty='simple'))
  # Hugging Face's heuristic stops on a full pool regardless.
  assert one_step(BeamSearchConfig(num_beams=2, alpha=2.0, length_penalty='simple',
                                   early_stopping=True))


def test_length_penalties():
  np.testing.assert_allclose(length_penalty(7, BeamSearchConfig(alpha=0.6)), (12 / 6) ** 0.6)
  np.testing.assert_allclose(length_penalty(7, BeamSearchConfig(alpha=0.6, length_penalty='simple')),
                             7 ** 0.6)
  with pytest.raises(ValueError, match="length_penalty='x'"):
    BeamSearchConfig(length_penalty='x')
  with pytest.raises(ValueError, match='num_beams=0'):
    BeamSearchConfig(num_beams=0)
