"""Beam search: 1 beam is greedy, wide beams match exhaustive search, scores are true log-probs."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_models import random_model

from gptjax.generate.beam_search import (BeamSearchConfig, _beam_step, _BeamState, beam_search,
                                         length_penalty)
from gptjax.generate.decoding import generate, left_pad
from gptjax.generate.sampling import SamplingConfig
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT

PROMPTS = ([1, 2, 3], [4])


def tiny(std: float = 0.5, **overrides) -> tuple[GPTConfig, dict]:
  """A random model; a large std makes its next-token distributions far from uniform."""
  defaults = (('vocab_size', 13), ('d_model', 16), ('num_layers', 1), ('num_heads', 4),
              ('max_seq_len', 16))
  return random_model(std, defaults, tuple(sorted(overrides.items())))


@functools.partial(jax.jit, static_argnames='cfg')
def _next_token_logprobs(params, tokens_RxT, cfg):
  """log p(token t | tokens before t) for t >= 1, [R, T - 1], from the uncached model."""
  logp_RxTxV = jax.nn.log_softmax(GPT(cfg).apply({'params': params}, tokens_RxT))
  return jnp.take_along_axis(logp_RxTxV[:, :-1], tokens_RxT[:, 1:, None], axis=2)[:, :, 0]


def continuation_logprobs(params, cfg, pairs) -> list[np.ndarray]:
  """Per-token log p of each (prompt, continuation) pair's continuation, in one batched call.

  Rows are right-padded: causal attention never looks right, so padding changes nothing before it.
  """
  rows = [np.concatenate([prompt, continuation]) for prompt, continuation in pairs]
  tokens_RxT = np.zeros((len(rows), max(map(len, rows))), np.int32)
  for i, row in enumerate(rows):
    tokens_RxT[i, :len(row)] = np.maximum(row, 0)
  logp_RxT1 = np.asarray(_next_token_logprobs(params, tokens_RxT, cfg))
  return [logp_RxT1[i, len(p) - 1:len(p) - 1 + len(c)] for i, (p, c) in enumerate(pairs)]


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


def exhaustive_best(params, cfg, n, stop, beam, top):
  """Per prompt, the `top` best finished sequences of at most n tokens (ending at a first stop)."""
  all_CxN = np.asarray(list(itertools.product(range(cfg.vocab_size), repeat=n)), np.int32)
  logps = continuation_logprobs(params, cfg, [(p, c) for p in PROMPTS for c in all_CxN])
  best = []
  for row in range(len(PROMPTS)):
    found = {}
    for seq, logp_N in zip(all_CxN, logps[row * len(all_CxN):]):
      hits = [i for i, tok in enumerate(seq) if tok in stop]
      length = hits[0] + 1 if hits else n
      found[tuple(seq[:length])] = logp_N[:length].sum() / float(length_penalty(length, beam))
    best.append(sorted(found.items(), key=lambda item: -item[1])[:top])
  return best


@pytest.mark.parametrize('stop, beam', [
    ((0,), BeamSearchConfig(num_beams=25, alpha=0.6)),
    ((0, 2), BeamSearchConfig(num_beams=25, alpha=1.5, length_penalty='simple')),
])
def test_wide_beam_matches_exhaustive_search(stop, beam):
  # With V = 5 and 3 new tokens, 25 = V^2 beams keep every prefix alive, so the search is exact.
  cfg, params = tiny(std=0.3, vocab_size=5)
  n = 3
  out = beam_search(params, *left_pad(PROMPTS), config=cfg, max_new_tokens=n, beam=beam,
                    stop_tokens=stop, pad_id=-1)
  for row, want in enumerate(exhaustive_best(params, cfg, n, stop, beam, top=beam.num_beams)):
    got_scores = np.asarray(out.scores_BxW[row])
    np.testing.assert_allclose(got_scores[:len(want)], [s for _, s in want], rtol=1e-5, atol=1e-5)
    best_length = int(out.lengths_BxW[row, 0])
    assert tuple(np.asarray(out.tokens_BxWxN[row, 0, :best_length])) == want[0][0]
    assert np.all(np.asarray(out.tokens_BxWxN[row, 0, best_length:]) == -1)


@pytest.mark.parametrize('beam', [BeamSearchConfig(num_beams=3),
                                  BeamSearchConfig(num_beams=4, alpha=1.0, early_stopping=True)])
@pytest.mark.slow
def test_scores_are_the_true_logprobs_of_the_returned_sequences(beam):
  # A wrong cache reorder would score a hypothesis with another beam's history.
  cfg, params = tiny(position='rope', num_kv_heads=2, scan_layers=True, num_layers=2)
  out = beam_search(params, *left_pad(PROMPTS), config=cfg, max_new_tokens=7, beam=beam,
                    stop_tokens=(3,))
  tokens_BxWxN, lengths_BxW = np.asarray(out.tokens_BxWxN), np.asarray(out.lengths_BxW)
  pairs = [(p, tokens_BxWxN[row, i, :lengths_BxW[row, i]]) for row, p in enumerate(PROMPTS)
           for i in range(beam.num_beams)]
  totals_BxW = np.asarray([lp.sum() for lp in continuation_logprobs(params, cfg, pairs)])
  want_BxW = totals_BxW.reshape(lengths_BxW.shape) / np.asarray(length_penalty(lengths_BxW, beam))
  np.testing.assert_allclose(out.scores_BxW, want_BxW, rtol=1e-5, atol=1e-5)
  assert np.all(np.diff(np.asarray(out.scores_BxW), axis=1) <= 0)
  for row in range(len(PROMPTS)):  # W distinct hypotheses
    assert len({tuple(pairs[row * beam.num_beams + i][1]) for i in range(beam.num_beams)}) == \
        beam.num_beams


def one_step(beam: BeamSearchConfig) -> bool:
  """Step t=1 of a row whose pool is full ([-1, -2]) and whose alive beams are at -3 and -4."""
  state = _BeamState(step=jnp.array(1), cache={}, alive_BxWxN=jnp.ones((1, 2, 5), jnp.int32),
                     alive_logp_BxW=jnp.array([[-3.0, -4.0]]),
                     done_tokens_BxWxN=jnp.zeros((1, 2, 5), jnp.int32),
                     done_scores_BxW=jnp.array([[-1.0, -2.0]]),
                     done_lengths_BxW=jnp.ones((1, 2), jnp.int32), finished_B=jnp.array([False]))
  logits_BWxV = jnp.zeros((2, 3))  # uniform: each extension costs log 3
  step = jax.jit(_beam_step, static_argnums=(2, 3, 4))
  return bool(step(state, logits_BWxV, beam, (0,), 5).finished_B[0])


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
  simple = BeamSearchConfig(alpha=0.6, length_penalty='simple')
  np.testing.assert_allclose(length_penalty(7, simple), 7 ** 0.6)
  with pytest.raises(ValueError, match="length_penalty='x'"):
    BeamSearchConfig(length_penalty='x')
  with pytest.raises(ValueError, match='num_beams=0'):
    BeamSearchConfig(num_beams=0)
