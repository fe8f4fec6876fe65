"""Token selection: exact top-k / top-p masks, draw frequencies, greedy and config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.generate.sampling import (SamplingConfig, filter_logits, select_tokens, top_k_mask,
                                      top_p_mask)

PROBS_V = np.array([0.05, 0.4, 0.1, 0.25, 0.2])  # sorted: 1 (.4), 3 (.25), 4 (.2), 2 (.1), 0 (.05)
LOGITS_1xV = jnp.log(jnp.asarray(PROBS_V, jnp.float32))[None]


@pytest.mark.parametrize('k, kept', [(1, {1}), (2, {1, 3}), (3, {1, 3, 4}), (5, set(range(5))),
                                     (9, set(range(5)))])
def test_top_k_mask_is_exact(k, kept):
  assert set(np.flatnonzero(top_k_mask(LOGITS_1xV, k)[0])) == kept


def test_top_k_mask_keeps_ties_with_the_kth():
  logits_1xV = jnp.array([[3.0, 1.0, 2.0, 2.0, 0.0]])
  assert set(np.flatnonzero(top_k_mask(logits_1xV, 2)[0])) == {0, 2, 3}


# Cumulative mass in sorted order: .4, .65, .85, .95, 1.0 (thresholds chosen away from them).
@pytest.mark.parametrize('p, kept', [(0.1, {1}), (0.39, {1}), (0.5, {1, 3}), (0.7, {1, 3, 4}),
                                     (0.9, {1, 3, 4, 2}), (0.97, set(range(5))),
                                     (1.0, set(range(5)))])
def test_top_p_mask_is_the_smallest_set_reaching_p(p, kept):
  assert set(np.flatnonzero(top_p_mask(LOGITS_1xV, p)[0])) == kept


def test_top_p_mask_works_row_by_row():
  logits_2xV = jnp.concatenate([LOGITS_1xV, LOGITS_1xV[:, ::-1]], axis=0)
  mask_2xV = np.asarray(top_p_mask(logits_2xV, 0.5))
  np.testing.assert_array_equal(mask_2xV[0], [False, True, False, True, False])
  np.testing.assert_array_equal(mask_2xV[1], mask_2xV[0][::-1])


def test_filter_applies_temperature_then_top_k_then_top_p_on_the_survivors():
  # Top-2 leaves {1: .4, 3: .25} -> renormalised {1: .615, 3: .385}; top_p=0.6 keeps token 1 only
  # (on the unfiltered distribution it would keep {1, 3}).
  out_1xV = filter_logits(LOGITS_1xV, SamplingConfig(temperature=1.0, top_k=2, top_p=0.6))
  assert set(np.flatnonzero(np.isfinite(out_1xV[0]))) == {1}
  scaled_1xV = filter_logits(LOGITS_1xV, SamplingConfig(temperature=2.0))
  np.testing.assert_allclose(scaled_1xV, LOGITS_1xV / 2.0, rtol=1e-6)


def draw(config: SamplingConfig, n: int = 20000) -> np.ndarray:
  logits_NxV = jnp.broadcast_to(LOGITS_1xV, (n, PROBS_V.size))
  tokens = jax.jit(select_tokens, static_argnums=2)(logits_NxV, jax.random.key(0), config)
  return np.bincount(np.asarray(tokens), minlength=PROBS_V.size) / n


@pytest.mark.parametrize('config, allowed', [
    (SamplingConfig(top_k=2), [1, 3]),
    (SamplingConfig(top_p=0.7), [1, 3, 4]),
    (SamplingConfig(temperature=0.5, top_k=3, top_p=0.9), [1, 3, 4]),
])
def test_draws_never_leave_the_filter_and_follow_the_renormalised_distribution(config, allowed):
  freq_V = draw(config)
  assert set(np.flatnonzero(freq_V)) <= set(allowed)
  want_V = np.zeros_like(PROBS_V)
  want_V[allowed] = PROBS_V[allowed] ** (1.0 / config.temperature)
  want_V /= want_V.sum()
  # 20000 draws: the standard error of a frequency is at most 0.0036; allow about 4 of them.
  np.testing.assert_allclose(freq_V, want_V, atol=0.015)


def test_unfiltered_draws_follow_the_softmax():
  np.testing.assert_allclose(draw(SamplingConfig()), PROBS_V, atol=0.015)


def test_greedy_and_low_temperature_pick_the_argmax():
  logits_BxV = jax.random.normal(jax.random.key(1), (64, 50))
  want_B = np.argmax(logits_BxV, axis=-1)
  np.testing.assert_array_equal(select_tokens(logits_BxV, None, SamplingConfig(temperature=0.0)),
                                want_B)
  cold = select_tokens(logits_BxV, jax.random.key(2), SamplingConfig(temperature=1e-4))
  np.testing.assert_array_equal(cold, want_B)


def test_same_key_same_draws():
  config = SamplingConfig(temperature=1.3, top_k=4)
  logits_BxV = jax.random.normal(jax.random.key(1), (32, 20))
  a = select_tokens(logits_BxV, jax.random.key(5), config)
  np.testing.assert_array_equal(a, select_tokens(logits_BxV, jax.random.key(5), config))
  assert not np.array_equal(a, select_tokens(logits_BxV, jax.random.key(6), config))


@pytest.mark.parametrize('kwargs, match', [(dict(temperature=-1.0), 'temperature=-1.0'),
                                           (dict(top_k=-2), 'top_k=-2'),
                                           (dict(top_p=0.0), 'top_p=0.0'),
                                           (dict(top_p=1.5), 'top_p=1.5')])
def test_config_rejects_bad_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    SamplingConfig(**kwargs)
