"""The math of RL from preferences against float64 loops and closed forms: masked per-token
quantities, GAE, PPO's clipped losses, the KL penalty and its controller, Bradley-Terry and DPO."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.preferences import kl_control, losses as preference_losses, ppo_math
from gptjax.train import masked_tokens, steps

# Jitted once each: one compilation costs less than running the functions op by op.
sequence_logprobs = jax.jit(masked_tokens.sequence_logprobs)
token_entropy = jax.jit(masked_tokens.token_entropy)
masked_whiten = jax.jit(masked_tokens.masked_whiten)
at_last_true = jax.jit(masked_tokens.at_last_true)
gae = jax.jit(ppo_math.gae)  # gamma and lam traced: one compilation serves every value
policy_loss = jax.jit(ppo_math.ppo_policy_loss, static_argnames='clip_eps')
value_loss = jax.jit(ppo_math.value_loss, static_argnames='clip_range')
kl_per_token = jax.jit(kl_control.kl_per_token)
sequence_kl = jax.jit(kl_control.sequence_kl)
shaped_rewards = jax.jit(kl_control.shaped_rewards)
bradley_terry_loss = jax.jit(preference_losses.bradley_terry_loss)
dpo_loss = jax.jit(preference_losses.dpo_loss, static_argnames='beta')

# Ragged right-padded masks: a full row, a one-token row, and two in between.
LENGTHS = (7, 1, 4, 3)
T = 7


def ragged_mask(lengths=LENGTHS, t=T) -> np.ndarray:
  return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


def random_logits(seed=0, shape=(4, T, 11)) -> np.ndarray:
  return np.random.default_rng(seed).normal(0.0, 2.0, shape).astype(np.float32)


def log_softmax64(logits) -> np.ndarray:
  x = np.asarray(logits, np.float64)
  return x - np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1, keepdims=True)) - x.max(
      -1, keepdims=True)


# masked_tokens

def test_sequence_logprobs_are_token_nll_negated_bit_for_bit_and_zero_where_masked():
  logits = random_logits()
  tokens = np.random.default_rng(1).integers(0, 11, (4, T))
  mask = ragged_mask()
  logp = np.asarray(sequence_logprobs(jnp.asarray(logits), jnp.asarray(tokens), mask))
  nll = np.asarray(steps.token_nll(jnp.asarray(logits), jnp.asarray(tokens)))
  np.testing.assert_array_equal(logp[mask], -nll[mask])
  np.testing.assert_array_equal(logp[~mask], 0.0)
  expected = np.take_along_axis(log_softmax64(logits), tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(logp[mask], expected[mask], atol=1e-5)


def test_token_entropy_matches_float64():
  logits = random_logits(2)
  mask = ragged_mask()
  entropy = np.asarray(token_entropy(jnp.asarray(logits), mask))
  logp = log_softmax64(logits)
  expected = -np.sum(np.exp(logp) * logp, -1)
  np.testing.assert_allclose(entropy[mask], expected[mask], atol=1e-5)
  np.testing.assert_array_equal(entropy[~mask], 0.0)


def test_masked_whiten_uses_only_true_entries():
  rng = np.random.default_rng(3)
  x = rng.normal(2.0, 3.0, (4, T)).astype(np.float32)
  mask = ragged_mask()
  junk = np.where(mask, x, 1e6).astype(np.float32)  # padding must not enter the statistics
  white = np.asarray(masked_whiten(jnp.asarray(junk), mask))
  valid = x[mask].astype(np.float64)
  np.testing.assert_allclose(white[mask], (valid - valid.mean()) / valid.std(), atol=1e-5)
  np.testing.assert_array_equal(white[~mask], 0.0)


def test_last_true_handles_ragged_empty_and_interior_masks():
  mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]], bool)
  x = np.arange(16, dtype=np.float32).reshape(4, 4) + 1
  np.testing.assert_array_equal(at_last_true(x, mask), [2.0, 0.0, 11.0, 16.0])


# GAE

def gae_loop(rewards, values, lengths, gamma, lam):
  """The textbook recursion, in float64, row by row over the real tokens only."""
  advantages, returns = np.zeros(rewards.shape), np.zeros(rewards.shape)
  for row, n in enumerate(lengths):
    next_value, next_advantage = 0.0, 0.0
    for t in reversed(range(n)):
      delta = float(rewards[row, t]) + gamma * next_value - float(values[row, t])
      next_advantage = delta + gamma * lam * next_advantage
      next_value = float(values[row, t])
      advantages[row, t] = next_advantage
      returns[row, t] = next_advantage + next_value
  return advantages, returns


@pytest.mark.parametrize('gamma,lam', [(1.0, 0.95), (0.9, 0.7), (0.99, 1.0)])
def test_gae_equals_python_loop_on_ragged_rows(gamma, lam):
  rng = np.random.default_rng(4)
  rewards, values = rng.normal(size=(2, 4, T))
  mask = ragged_mask()
  # Junk after each row's end: it must be neither read nor bootstrapped from.
  rewards, values = np.where(mask, rewards, 1e3), np.where(mask, values, -1e3)
  expected_a, expected_r = gae_loop(rewards, values, LENGTHS, gamma, lam)
  with jax.enable_x64(True):
    a, r = gae(jnp.asarray(rewards), jnp.asarray(values), mask, gamma, lam)
  np.testing.assert_allclose(np.asarray(a), expected_a, atol=1e-6)
  np.testing.assert_allclose(np.asarray(r), expected_r, atol=1e-6)
  a32, _ = gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32), mask, gamma,
               lam)
  np.testing.assert_allclose(np.asarray(a32), expected_a, atol=1e-4)


def test_gae_treats_a_masked_prompt_as_outside_the_episode():
  rng = np.random.default_rng(5)
  rewards, values = rng.normal(size=(2, 1, T))
  mask = np.array([[False, False, True, True, True, False, False]])
  a, _ = gae(jnp.asarray(rewards), jnp.asarray(values), mask, 0.9, 0.8)
  expected, _ = gae_loop(rewards[:, 2:5], values[:, 2:5], (3,), 0.9, 0.8)
  np.testing.assert_allclose(np.asarray(a)[:, 2:5], expected, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(a)[~mask], 0.0)


# PPO losses

def policy_loss64(logp_new, logp_old, adv, mask, eps):
  ratio = np.exp(logp_new - logp_old)
  surrogate = np.minimum(ratio * adv, np.clip(ratio, 1 - eps, 1 + eps) * adv)
  log_ratio = logp_new - logp_old
  return (-surrogate[mask].mean(), ((ratio - 1) - log_ratio)[mask].mean(),
          (np.abs(ratio - 1) > eps)[mask].mean(), ratio[mask].mean())


def test_policy_loss_at_ratio_one_has_no_kl_and_no_clipping():
  rng = np.random.default_rng(6)
  logp = -rng.exponential(size=(4, T)).astype(np.float32)
  adv = rng.normal(size=(4, T)).astype(np.float32)
  mask = ragged_mask()
  loss, metrics = policy_loss(logp, logp, adv, mask, 0.2)
  assert float(metrics['approx_kl']) == 0.0
  assert float(metrics['clip_fraction']) == 0.0
  assert float(metrics['mean_ratio']) == 1.0
  np.testing.assert_allclose(float(loss), -adv[mask].mean(), rtol=1e-6)


def test_policy_loss_matches_float64_reference():
  rng = np.random.default_rng(7)
  logp_old = -rng.exponential(size=(4, T))
  logp_new = logp_old + rng.normal(0.0, 0.3, (4, T))
  adv = rng.normal(size=(4, T))
  mask = ragged_mask()
  loss, metrics = policy_loss(*(jnp.asarray(x, jnp.float32)
                                             for x in (logp_new, logp_old, adv)), mask, 0.2)
  expected = policy_loss64(logp_new, logp_old, adv, mask, 0.2)
  got = (loss, metrics['approx_kl'], metrics['clip_fraction'], metrics['mean_ratio'])
  np.testing.assert_allclose([float(x) for x in got], expected, rtol=1e-5, atol=1e-6)
  assert 0.0 < expected[2] < 1.0  # some tokens clipped and some not: the case is not degenerate


def test_policy_gradient_is_zero_exactly_where_clipping_binds():
  eps = 0.2
  # (ratio, advantage) per token; the first two lie outside the trust region on their binding side.
  cases = [(1.5, 1.0), (0.5, -1.0),  # clipped: no gradient
           (0.5, 1.0), (1.5, -1.0), (1.1, 1.0), (0.9, -1.0)]  # free: a gradient
  ratio, adv = np.array(cases).T[:, None, :]
  logp_old = np.full_like(ratio, -1.0)
  logp_new = logp_old + np.log(ratio)
  mask = np.ones(ratio.shape, bool)

  grad = jax.jit(jax.grad(lambda lp: policy_loss(lp, logp_old, adv, mask, eps)[0]))(
      jnp.asarray(logp_new, jnp.float32))
  grad = np.asarray(grad)[0]
  np.testing.assert_array_equal(grad[:2], 0.0)
  # d/dlogp of -rho * A / n is -rho * A / n for the free tokens.
  np.testing.assert_allclose(grad[2:], -(ratio * adv)[0, 2:] / len(cases), rtol=1e-5)
  assert np.all(grad[2:] != 0.0)


def test_policy_gradient_ignores_masked_tokens():
  logp = jnp.asarray(np.full((1, 3), -1.0), jnp.float32)
  mask = np.array([[True, False, True]])
  grad = jax.jit(jax.grad(lambda lp: policy_loss(lp, logp, jnp.ones((1, 3)), mask, 0.2)[0]))(
      logp)
  np.testing.assert_array_equal(np.asarray(grad), [[-0.5, 0.0, -0.5]])


def test_value_loss_with_and_without_clipping_matches_float64():
  rng = np.random.default_rng(8)
  old, returns = rng.normal(size=(2, 4, T))
  new = old + rng.normal(0.0, 0.5, (4, T))
  mask = ragged_mask()
  c = 0.2
  clipped_new = old + np.clip(new - old, -c, c)
  error, clipped_error = (new - returns) ** 2, (clipped_new - returns) ** 2
  args = [jnp.asarray(x, jnp.float32) for x in (new, old, returns)]

  loss, metrics = value_loss(*args, mask, None)
  np.testing.assert_allclose(float(loss), 0.5 * error[mask].mean(), rtol=1e-5)
  assert float(metrics['value_clip_fraction']) == 0.0
  loss, metrics = value_loss(*args, mask, c)
  np.testing.assert_allclose(float(loss), 0.5 * np.maximum(error, clipped_error)[mask].mean(),
                             rtol=1e-5)
  binds = (clipped_error > error)[mask].mean()
  assert 0.0 < binds < 1.0
  np.testing.assert_allclose(float(metrics['value_clip_fraction']), binds, rtol=1e-6)


# KL penalty

def test_sequence_kl_and_shaped_rewards_equal_a_loop():
  rng = np.random.default_rng(9)
  logp, logp_ref = -rng.exponential(size=(2, 4, T))
  scores = rng.normal(size=4)
  mask = ragged_mask()
  beta = 0.3
  kl = kl_per_token(jnp.asarray(logp), jnp.asarray(logp_ref), mask)
  rewards = np.asarray(shaped_rewards(jnp.asarray(scores, jnp.float32), kl, mask, beta))
  seq_kl = np.asarray(sequence_kl(jnp.asarray(logp), jnp.asarray(logp_ref), mask))

  expected = np.zeros((4, T))
  for row, n in enumerate(LENGTHS):
    for t in range(n):
      expected[row, t] = -beta * (logp[row, t] - logp_ref[row, t])
    expected[row, n - 1] += scores[row]
    np.testing.assert_allclose(seq_kl[row], np.sum(logp[row, :n] - logp_ref[row, :n]), atol=1e-5)
  np.testing.assert_allclose(rewards, expected, atol=1e-5)
  # Undiscounted, a row's rewards sum to its score minus beta times its KL.
  np.testing.assert_allclose(rewards.sum(-1), scores - beta * seq_kl, atol=1e-5)


@pytest.mark.parametrize('kl', [2.0, 5.5, 6.0, 6.3, 20.0])
def test_adaptive_controller_follows_ziegler_formula(kl):
  target, horizon, n, beta = 6.0, 10000.0, 256, 0.1
  error = min(max((kl - target) / target, -0.2), 0.2)
  expected = beta * (1 + error * n / horizon)
  controller = kl_control.KLController.adaptive(beta, target=target, horizon=horizon)
  updated = controller.update(kl, n)
  assert math.isclose(updated.beta, expected, rel_tol=1e-6)
  assert (updated.beta > beta) == (kl > target) and (updated.beta < beta) == (kl < target)
  assert controller.beta == beta  # frozen: update returns a new controller


def test_fixed_controller_never_moves_and_bad_settings_raise():
  controller = kl_control.KLController.fixed(0.05)
  assert controller.update(100.0, 512).beta == 0.05
  with pytest.raises(ValueError, match='target'):
    kl_control.KLController.adaptive(0.1, target=0.0)
  with pytest.raises(ValueError, match='beta'):
    kl_control.KLController.fixed(-1.0)


# Bradley-Terry and DPO

def test_bradley_terry_matches_closed_form_and_swapping_flips_the_margin():
  chosen = np.array([1.0, -0.5, 3.0, 0.2], np.float32)
  rejected = np.array([0.0, 0.5, -1.0, 0.2], np.float32)
  loss, metrics = bradley_terry_loss(jnp.asarray(chosen), jnp.asarray(rejected))
  margin = chosen.astype(np.float64) - rejected
  np.testing.assert_allclose(float(loss), np.mean(np.log1p(np.exp(-margin))), rtol=1e-6)
  assert float(metrics['accuracy']) == (2 + 0.5) / 4  # two right, one wrong, one tie
  swapped_loss, swapped = bradley_terry_loss(jnp.asarray(rejected),
                                                               jnp.asarray(chosen))
  assert float(swapped['margin']) == -float(metrics['margin']) != 0.0
  assert float(swapped['accuracy']) == 1.0 - float(metrics['accuracy'])
  assert float(swapped_loss) > float(loss)


def test_bradley_terry_is_finite_at_huge_margins():
  loss, _ = bradley_terry_loss(jnp.array([0.0, 1000.0]), jnp.array([1000.0, 0.0]))
  np.testing.assert_allclose(float(loss), 500.0, rtol=1e-6)


def test_dpo_at_the_reference_is_log_two_with_zero_rewards():
  logp = jnp.asarray(-np.random.default_rng(10).exponential(5.0, (2, 6)), jnp.float32)
  loss, metrics = dpo_loss(logp[0], logp[1], logp[0], logp[1], beta=0.1)
  assert abs(float(loss) - math.log(2.0)) < 1e-7
  assert float(metrics['reward_chosen']) == 0.0 == float(metrics['reward_rejected'])
  assert float(metrics['accuracy']) == 0.5


def test_dpo_equals_closed_form_in_float64():
  pc, pr, rc, rr = np.array([[-10.0, -3.0], [-12.0, -0.5], [-11.0, -4.0], [-11.5, -2.0]])
  beta = 0.5
  with jax.enable_x64(True):
    loss, metrics = dpo_loss(*map(jnp.asarray, (pc, pr, rc, rr)), beta)
    loss, metrics = float(loss), {k: float(v) for k, v in metrics.items()}
  logits = beta * ((pc - rc) - (pr - rr))  # [0.75, -0.25]: one pair right, one wrong
  expected = np.mean(-np.log(1.0 / (1.0 + np.exp(-logits))))
  assert abs(loss - expected) < 1e-12
  assert abs(metrics['reward_chosen'] - np.mean(beta * (pc - rc))) < 1e-12
  assert abs(metrics['reward_rejected'] - np.mean(beta * (pr - rr))) < 1e-12
  assert metrics['accuracy'] == 0.5


def test_dpo_counts_only_response_tokens():
  rng = np.random.default_rng(11)
  logits = random_logits(12, (4, T, 11))  # rows: policy chosen, policy rejected, ref c, ref r
  tokens = jnp.asarray(rng.integers(0, 11, (4, T)))
  response = np.broadcast_to(np.arange(T) >= 3, (4, T))  # three prompt tokens, then the response

  def loss(logits):
    logp_B = sequence_logprobs(jnp.asarray(logits), tokens, response).sum(-1)
    return float(dpo_loss(*logp_B[:, None], beta=0.1)[0])

  base = loss(logits)
  prompt_changed = logits.copy()
  prompt_changed[0, 1] += rng.normal(0.0, 5.0, 11)
  assert loss(prompt_changed) == base
  response_changed = logits.copy()
  response_changed[0, 4] += rng.normal(0.0, 5.0, 11)
  assert loss(response_changed) != base
