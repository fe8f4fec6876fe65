"""Settings resolved for the hardware: the CPU pass split and the attention backend, each logged."""

import functools

import jax
import pytest
from absl import logging

from experiments.configs import base
from gptjax.model.attention import cpu_fused
from gptjax.parallel import hardware, sharding


def test_a_cpu_step_splits_the_batch_into_cache_sized_passes():
  passes = functools.partial(hardware.passes_per_step, budget=1024, batch_shards=1)
  assert passes(16, 128, 1) == 2
  assert passes(16, 256, 1) == 4  # the reference configs: 4 rows of 256 per pass
  assert passes(16, 256, 4) == 4  # 4 accumulation steps of 4 rows, each one pass
  assert passes(4, 100, 1) == 1
  assert passes(3, 2048, 1) == 3  # at least one row per pass
  split = functools.partial(hardware.passes_per_step, budget=1024)
  # Two devices on one host share its caches: 512 tokens each.
  assert split(16, 256, 1, batch_shards=2, host_devices=2) == 4
  # Two hosts with one device each: each host's device gets the whole budget.
  assert split(16, 256, 1, batch_shards=2, host_devices=1) == 2
  # Split over 8 devices of one host, 16 x 256 is 2 rows per device and 128 tokens of budget
  # each: one row per pass, never less, or the devices would each compute every row of a pass
  # smaller than the mesh.
  assert split(16, 256, 1, batch_shards=8, host_devices=8) == 2
  assert split(64, 256, 1, batch_shards=8, host_devices=8) == 8
  assert split(16, 256, 2, batch_shards=1, budget=0) == 2  # off: as configured


@pytest.mark.parametrize('value, platform, expected', [
    ('auto', 'cpu', hardware.CPU_TOKENS_PER_PASS), ('auto', 'gpu', 0), ('auto', 'tpu', 0),
    ('0', 'cpu', 0), ('2048', 'gpu', 2048), (' 512 ', 'cpu', 512)])
def test_tokens_per_pass_resolves_auto_by_platform(value, platform, expected):
  assert hardware.tokens_per_pass(value, platform) == expected


@pytest.mark.parametrize('value', ['fast', '-1', '1e3', ''])
def test_a_bad_tokens_per_pass_names_the_choices(value):
  with pytest.raises(ValueError, match="use 'auto', '0' \\(off\\) or a number of tokens"):
    hardware.tokens_per_pass(value, 'cpu')


def _config(**overrides):
  config = base.get_config()
  config.model.update(d_model=32, num_layers=1, num_heads=2, max_seq_len=256)
  config.data.batch_size, config.data.seq_len = 16, 256
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


@pytest.mark.parametrize('tokens_per_pass, grad_accum, expected', [
    ('auto', 1, 4), ('0', 1, 1), ('0', 2, 2), ('4096', 1, 1), ('256', 2, 16)])
def test_the_run_setup_resolves_the_config_to_a_pass_count_and_logs_it(
    tokens_per_pass, grad_accum, expected, monkeypatch):
  logged = []
  monkeypatch.setattr(logging, 'info', lambda message, *args: logged.append(message % args))
  monkeypatch.setattr(cpu_fused, 'has_wide_vectors', lambda: True)  # an AVX-512 host
  config = _config(**{'train.tokens_per_pass': tokens_per_pass,
                      'train.grad_accum_steps': grad_accum})
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  setup = hardware.resolve(config, mesh)
  assert setup.passes == expected
  assert setup.model.attention_impl == 'cpu_fused'  # float32, head size 16, on a CPU
  assert any(line.startswith('Attention: cpu_fused (') for line in logged)
  split_lines = [line for line in logged if 'sequential passes' in line]
  assert len(split_lines) == (expected != grad_accum)
