"""The scalar-headed GPT: its parameters, its reward at the last real token, padding on either side,
and one Bradley-Terry step that ranks a pair the right way round."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_models import random_model

from gptjax.preferences import reward_model, reward_normalisation
from gptjax.preferences.losses import bradley_terry_loss

SMALL = (('vocab_size', 13), ('d_model', 16), ('num_layers', 1), ('num_heads', 4),
         ('max_seq_len', 16), ('init_std', 0.5))  # a large head std: rewards far apart
T = 8


def tiny(scan_layers: bool = False):
  cfg, gpt_params = random_model(0.5, SMALL, (('scan_layers', scan_layers),))
  return cfg, reward_model.attach_scalar_head(gpt_params, cfg, seed=1)


@functools.partial(jax.jit, static_argnames='cfg')
def _scores_and_rewards(params, tokens_BxT, mask_BxT, cfg):
  scores_BxT = reward_model.ScalarHeadGPT(cfg).apply({'params': params}, tokens_BxT, mask_BxT)
  return scores_BxT, reward_model.sequence_scores(scores_BxT, mask_BxT)


def scores_and_rewards(params, cfg, tokens_BxT, mask_BxT) -> tuple[np.ndarray, np.ndarray]:
  """(scores_BxT, rewards_B) in one compiled call per test."""
  out = _scores_and_rewards(params, jnp.asarray(tokens_BxT, jnp.int32),
                            jnp.asarray(mask_BxT, bool), cfg)
  return tuple(np.asarray(x) for x in out)


def padded(rows, side: str, pad_token: int = 0, t: int = T):
  """Token lists -> (tokens_BxT, mask_BxT), padded on `side` with pad_token."""
  tokens, mask = np.full((len(rows), t), pad_token, np.int32), np.zeros((len(rows), t), bool)
  for i, row in enumerate(rows):
    span = slice(0, len(row)) if side == 'right' else slice(t - len(row), t)
    tokens[i, span], mask[i, span] = row, True
  return tokens, mask


ROWS = ([3, 1, 4, 1, 5, 9, 2, 6], [2, 7], [1, 8, 2, 8, 1])  # a full row, a short row, one between


def test_attached_head_matches_the_module_init():
  cfg, params = tiny(False)
  boxed = jax.eval_shape(reward_model.ScalarHeadGPT(cfg).init, jax.random.key(0),
                         jnp.zeros((1, T), jnp.int32), jnp.ones((1, T), bool))['params']
  shapes = jax.tree.map(lambda x: (x.shape, x.dtype), nn.unbox(boxed))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), params) == shapes
  assert boxed['scalar_head']['kernel'].names == reward_model.HEAD_AXES


@pytest.mark.parametrize('scan_layers', [False, True])
def test_padding_does_not_change_a_reward(scan_layers):
  cfg, params = tiny(scan_layers)
  junk = np.random.default_rng(0).integers(0, 13, (len(ROWS), T))
  right, right_mask = padded(ROWS, 'right')
  right_junk = np.where(right_mask, right, junk)
  left, left_mask = padded(ROWS, 'left')
  # The reference has no padding at all: every token real, each row's reward read by hand at its
  # last token (causal attention: what follows cannot change it).
  full_mask = np.ones_like(right_mask)
  scores, batch = scores_and_rewards(
      params, cfg, np.concatenate([right, right_junk, left, right_junk]),
      np.concatenate([right_mask, right_mask, left_mask, full_mask]))
  alone = np.array([scores[3 * len(ROWS) + i, len(row) - 1] for i, row in enumerate(ROWS)])
  np.testing.assert_allclose(batch[:3 * len(ROWS)].reshape(3, len(ROWS)), np.stack([alone] * 3),
                             atol=1e-6)
  assert np.ptp(alone) > 1e-2  # the rows score differently: the comparison is not vacuous


@pytest.mark.parametrize('scan_layers', [False, True])
def test_reward_reads_the_last_real_token(scan_layers):
  cfg, params = tiny(scan_layers)
  tokens, mask = padded([ROWS[2]] * 4, 'right')  # 5 real tokens, then 3 pads
  tokens[1, 6] = 11  # after the last real token: no change
  tokens[2, 4] = 12  # the last real token
  tokens[3, 0] = 12  # the first one, seen through attention
  _, r = scores_and_rewards(params, cfg, tokens, mask)
  assert abs(r[1] - r[0]) < 1e-6
  assert abs(r[2] - r[0]) > 1e-4 and abs(r[3] - r[0]) > 1e-4


def test_position_scores_are_the_rewards_of_each_prefix():
  """A value head reads every position: the score at t is the reward of the prefix ending at t."""
  cfg, params = tiny()
  row = ROWS[0]
  prefixes, prefix_mask = padded([row[:n] for n in range(1, T + 1)], 'right')
  scores, prefix_rewards = scores_and_rewards(params, cfg, prefixes, prefix_mask)
  np.testing.assert_allclose(scores[-1], prefix_rewards, atol=1e-6)  # the last row is all of row


def test_one_bradley_terry_step_lowers_the_loss():
  cfg, params = tiny()
  tokens, mask = padded(ROWS[:2] + ROWS[1:], 'right')  # pairs (row 0 > row 1), (row 1 > row 2)

  def loss(params):
    r_B = reward_model.rewards(params, cfg, tokens, mask)
    return bradley_terry_loss(r_B[:2], r_B[2:])[0]

  @jax.jit
  def sgd_step(params):
    value, grads = jax.value_and_grad(loss)(params)
    return value, jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)

  before, params = sgd_step(params)
  after, _ = sgd_step(params)  # the same compiled step; its loss is that of the updated params
  assert float(after) < float(before) - 1e-3


def test_normalisation_folded_into_the_head_standardises_every_score():
  cfg, params = tiny()
  tokens_BxT = jax.random.randint(jax.random.key(3), (6, T), 0, cfg.vocab_size)
  mask_BxT = jnp.ones((6, T), bool)
  raw_BxT, _ = _scores_and_rewards(params, tokens_BxT, mask_BxT, cfg)
  norm = reward_normalisation.Normalisation(mean=1.7, std=0.3, samples=6)
  folded_BxT, _ = _scores_and_rewards(reward_normalisation.fold_into_head(params, norm),
                                      tokens_BxT, mask_BxT, cfg)
  expected = (np.asarray(raw_BxT, np.float64) - 1.7) / 0.3
  np.testing.assert_allclose(np.asarray(folded_BxT), expected, rtol=1e-4, atol=1e-4)


class _Batches:
  """A sampler stand-in: its 'rollouts' are the score arrays themselves."""

  def __init__(self, scores):
    self.scores = scores

  def batches(self, params, rows, key):
    del params, rows, key
    return iter(self.scores)


def test_normalisation_measures_the_scores_mean_and_spread_and_refuses_a_flat_model():
  scores = [np.array([1.0, 2.0, 4.0]), np.array([-3.0, 0.5, 7.0])]
  norm = reward_normalisation.measure(_Batches(scores), None, None, lambda s: s, seed=0)
  flat = np.concatenate(scores)
  assert norm.samples == 6
  assert norm.mean == pytest.approx(flat.mean()) and norm.std == pytest.approx(flat.std())
  with pytest.raises(ValueError, match='same score'):
    reward_normalisation.measure(_Batches([np.ones(4)]), None, None, lambda s: s, seed=0)
  for bad in (1, -2, 2.5):
    with pytest.raises(ValueError, match='reward_norm_samples'):
      reward_normalisation.check_samples(bad)
