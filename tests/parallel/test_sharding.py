"""Meshes, rules and sharded steps on 8 simulated CPU devices (see conftest.py)."""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from experiments.configs import base
from gptjax.parallel import hardware, sharding
from gptjax.train import loop, optim


def _config(data=1, fsdp=1, tensor=1, **model):
  config = base.get_config()
  m = config.model
  m.vocab_size, m.d_model, m.num_layers, m.num_heads, m.max_seq_len = 64, 64, 2, 8, 16
  for key, value in model.items():
    m[key] = value
  config.data.seq_len, config.data.batch_size = 16, 8
  config.train.num_steps, config.train.warmup_steps, config.train.learning_rate = 10, 0, 3e-3
  config.train.schedule = 'constant'
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = data, fsdp, tensor
  return config


def test_mesh_shape_fills_the_wildcard_and_refuses_mismatches():
  mesh_config = ml_collections.ConfigDict({'data': -1, 'fsdp': 2, 'tensor': 1})
  assert sharding.resolve_mesh_shape(mesh_config, 8) == (4, 2, 1)
  with pytest.raises(ValueError, match='needs 4 devices but 8 are available'):
    sharding.resolve_mesh_shape(ml_collections.ConfigDict({'data': 2, 'fsdp': 2, 'tensor': 1}), 8)
  with pytest.raises(ValueError, match='Only one mesh axis may be -1'):
    sharding.resolve_mesh_shape(ml_collections.ConfigDict({'data': -1, 'fsdp': -1, 'tensor': 1}), 8)
  with pytest.raises(ValueError, match='does not divide 8'):
    sharding.resolve_mesh_shape(ml_collections.ConfigDict({'data': -1, 'fsdp': 3, 'tensor': 1}), 8)


def test_parameter_shardings_follow_the_rules():
  config = _config(data=2, fsdp=2, tensor=2)
  mesh = sharding.make_mesh(config.mesh)
  state, shardings = loop.create_train_state(config, mesh, sharding.logical_rules(config.mesh))
  params = shardings.params
  assert params['embed']['embedding'].spec == P('tensor', 'fsdp')
  assert params['block_0']['attn']['query']['kernel'].spec == P('fsdp', 'tensor', None)
  assert params['block_0']['mlp']['down']['kernel'].spec == P('tensor', 'fsdp')
  assert params['final_norm']['scale'].spec == P('fsdp')
  # Adam's moments are sharded like the parameters they track (FSDP shards optimizer state too).
  mu = shardings.opt_state[1][0].mu
  assert mu['block_0']['mlp']['up']['kernel'].spec == P('fsdp', 'tensor')
  kernel = state.params['block_0']['mlp']['up']['kernel']
  assert kernel.addressable_shards[0].data.shape == (32, 128)  # [64/fsdp, 256/tensor]


def test_shapes_that_do_not_divide_the_mesh_are_refused():
  config = _config(tensor=8, num_heads=4)
  mesh = sharding.make_mesh(config.mesh)
  with pytest.raises(ValueError, match=r"does not divide over mesh axes \('tensor',\) of size 8"):
    loop.create_train_state(config, mesh, sharding.logical_rules(config.mesh))
  with pytest.raises(ValueError, match='batch_size=12 must be divisible'):
    sharding.check_batch_divisible(12, sharding.make_mesh(_config(data=8).mesh))


def _one_step(config, devices):
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.logical_rules(config.mesh)
  state, shardings = loop.create_train_state(config, mesh, rules)
  jit_train, _ = loop.jit_steps(config, hardware.resolve(config, mesh), mesh, rules, shardings)
  batch = np.random.default_rng(0).integers(0, 64, (8, 17)).astype(np.int32)
  global_batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  grad_norms = []
  for _ in range(2):
    state, metrics = jit_train(state, global_batch, optim.schedule_numbers(config.train))
    grad_norms.append(float(metrics['grad_norm']))
  return float(metrics['train_loss']), grad_norms, jax.device_get(state.params)


@pytest.fixture(scope='module')
def single_device_result():
  return _one_step(_config(), jax.devices()[:1])


@pytest.mark.parametrize('mesh', [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 1, 8), (2, 4, 1)])
@pytest.mark.slow
def test_sharded_steps_equal_the_single_device_step(mesh, single_device_result):
  """Loss, gradient norms and parameters after two AdamW steps match one device's.

  Clipping and Adam's normalisation would hide a gradient off by a constant factor (a sum over
  devices where a mean belongs) from the parameters; the gradient norms show it.
  """
  loss, grad_norms, params = _one_step(_config(*mesh), jax.devices())
  ref_loss, ref_grad_norms, ref_params = single_device_result
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(grad_norms, ref_grad_norms, rtol=1e-5)
  assert all(np.isfinite(grad_norms)) and min(grad_norms) > 0
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
