"""Learning-rate schedules and the weight-decay mask."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import base
from gptjax.train import optim


def _train_config(**overrides):
  t = base.get_config().train
  t.num_steps, t.warmup_steps, t.learning_rate, t.min_lr_ratio = 1000, 100, 1e-3, 0.1
  for key, value in overrides.items():
    t[key] = value
  return t


def test_cosine_schedule_warms_up_linearly_then_decays_to_the_floor():
  schedule = optim.learning_rate_schedule(_train_config())
  assert float(schedule(0)) == 0.0
  assert float(schedule(50)) == pytest.approx(5e-4)
  assert float(schedule(100)) == pytest.approx(1e-3)
  # cosine from the peak to 10% of it over steps 100..1000
  expected_550 = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + np.cos(np.pi * 450 / 900))
  assert float(schedule(550)) == pytest.approx(expected_550, rel=1e-4)
  assert float(schedule(1000)) == pytest.approx(1e-4)


@pytest.mark.parametrize('warmup, total, floor', [(100, 1000, 0.1), (0, 50, 0.0), (7, 8, 0.5)])
def test_cosine_schedule_equals_optax_and_its_traced_numbers_give_the_same(warmup, total, floor):
  """The schedule is written out so its numbers can be traced; optax's own cosine is the reference,
  and a jitted schedule built on `schedule_numbers` as an argument gives the same values."""
  config = _train_config(warmup_steps=warmup, num_steps=total, min_lr_ratio=floor)
  reference = optax.warmup_cosine_decay_schedule(0.0, 1e-3, warmup, total, end_value=1e-3 * floor)
  steps = np.arange(total + 20)
  ours = np.array([float(optim.learning_rate_schedule(config)(s)) for s in steps])
  np.testing.assert_allclose(ours, [float(reference(s)) for s in steps], rtol=1e-5, atol=1e-12)  # float32 rounding
  traced = jax.jit(lambda numbers, s: optim.learning_rate_schedule(config, numbers)(s))
  np.testing.assert_allclose([float(traced(optim.schedule_numbers(config), s)) for s in steps],
                             ours, rtol=1e-6, atol=1e-12)


def test_constant_and_inverse_sqrt_schedules():
  constant = optim.learning_rate_schedule(_train_config(schedule='constant'))
  assert float(constant(500)) == pytest.approx(1e-3)
  inv = optim.learning_rate_schedule(_train_config(schedule='inverse_sqrt'))
  assert float(inv(100)) == pytest.approx(1e-3)
  assert float(inv(400)) == pytest.approx(1e-3 * np.sqrt(100 / 400), rel=1e-4)


def test_bad_schedule_is_refused():
  with pytest.raises(ValueError, match='schedule'):
    optim.learning_rate_schedule(_train_config(schedule='linear'))
  with pytest.raises(ValueError, match='warmup_steps'):
    optim.learning_rate_schedule(_train_config(warmup_steps=1000))


def test_weight_decay_skips_norms_and_biases():
  params = {'block': {'attn_norm': {'scale': jnp.ones(4), 'bias': jnp.zeros(4)},
                      'mlp': {'up': {'kernel': jnp.ones((4, 4)), 'bias': jnp.ones(4)}}},
            'embed': {'embedding': jnp.ones((8, 4))}}
  mask = optim.decay_mask(params)
  assert mask['block']['mlp']['up']['kernel'] and mask['embed']['embedding']
  assert not mask['block']['attn_norm']['scale'] and not mask['block']['mlp']['up']['bias']
  # with zero gradients only decayed leaves move
  t = _train_config(warmup_steps=0, schedule='constant', weight_decay=0.5, grad_clip=0.0)
  tx = optim.make_optimizer(t)
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(updates['block']['mlp']['up']['kernel']).sum()) > 0
  assert float(jnp.abs(updates['block']['attn_norm']['scale']).sum()) == 0
