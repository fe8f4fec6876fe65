"""The tuning choices the CPU scaling sweep reads: the optimizer setting with the least mean excess
loss, the learning rate at a parabola's minimum, and the tuning file's checks."""

import json

import numpy as np
import pytest

import launch
from experiments import tuning
from experiments.sweeps import cpu_scaling, cpu_tuning_lr, cpu_tuning_optimizer


def test_the_optimizer_setting_with_the_least_mean_excess_wins():
  """0.95 is best at one size by a little, 0.99 close everywhere: 0.99 has less mean excess. A
  setting missing at some size cannot be compared: it is passed over, and sets no size's best."""
  runs = [dict(d_model=d, b2=b2, warmup_fraction=0.05, loss=loss) for d, b2, loss in (
      (12, 0.95, 2.50), (12, 0.99, 2.51), (24, 0.95, 2.40), (24, 0.99, 2.30),
      (48, 0.95, 2.30), (48, 0.99, 2.20), (48, 0.999, 2.00))]
  chosen = tuning.choose_optimizer(runs)
  assert (chosen['b2'], chosen['warmup_fraction']) == (0.99, 0.05)
  assert chosen['mean_excess'][(0.99, 0.05)] == pytest.approx((0.01 + 0 + 0) / 3)
  assert (0.999, 0.05) not in chosen['mean_excess']


def test_the_rate_is_the_minimum_of_a_parabola_in_log_rate():
  rates = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]
  true_log = np.log(3e-3)
  losses = [2.0 + 0.1 * (np.log(r) - true_log) ** 2 for r in rates]
  rate, at_edge = tuning.refined_rate(rates, losses)
  assert rate == pytest.approx(3e-3, rel=1e-6) and not at_edge
  rate, at_edge = tuning.refined_rate(rates, [3.0, 2.8, 2.6, 2.5, 2.45])  # falls to the edge
  assert at_edge and rate == pytest.approx(1.6e-2)
  with pytest.raises(ValueError, match='d_model=8 has 2 finished rates'):
    tuning.choose_rates([dict(d_model=8, learning_rate=r, loss=2.0) for r in (1e-3, 2e-3)])


def test_the_scaling_sweep_reads_its_rates_beta2_and_warmup_from_the_tuning_file():
  base, members = launch.load_sweep_file(cpu_scaling.__file__)
  chosen = tuning.read_tuning()
  assert base.train.b2 == chosen['b2']
  assert set(chosen['learning_rate']) == {str(d) for d in cpu_scaling.d_models()}
  for member in members:
    config = launch.resolve(base, member)
    assert config.train.learning_rate == chosen['learning_rate'][str(config.model.d_model)]
    fraction = config.train.warmup_steps / config.train.num_steps
    assert fraction == pytest.approx(chosen['warmup_fraction'], abs=1 / config.train.num_steps)


def test_the_tuning_sweeps_train_each_size_at_one_of_its_own_budgets():
  _, members = launch.load_sweep_file(cpu_tuning_lr.__file__)
  assert len(members) == len(cpu_scaling.d_models()) * len(cpu_tuning_lr.FACTORS)
  for member in members:
    d_model = member.overrides['model.d_model']
    assert d_model in cpu_scaling.BUDGETS[member.budget]
  _, members = launch.load_sweep_file(cpu_tuning_optimizer.__file__)
  b2s = {member.overrides['train.b2'] for member in members}
  assert b2s == set(cpu_tuning_optimizer.B2S)


def test_a_missing_tuning_file_names_the_commands_that_write_it(tmp_path):
  with pytest.raises(FileNotFoundError, match='run the tuning sweeps'):
    tuning.read_tuning(str(tmp_path / 'none.json'))
  path = tmp_path / 'tuning.json'
  path.write_text(json.dumps({'b2': 0.99, 'warmup_fraction': 0.3}))
  assert tuning.read_tuning(str(path), stages=('optimizer',))['b2'] == 0.99
  with pytest.raises(ValueError, match='no lr choices yet; run the .*cpu_tuning_lr.py sweep'):
    tuning.read_tuning(str(path), stages=('optimizer', 'lr'))


def test_a_warmup_at_the_edge_of_its_grid_is_flagged():
  runs = [dict(d_model=12, b2=0.95, warmup_fraction=w, loss=2.0 - w) for w in (0.02, 0.05, 0.3)]
  assert tuning.choose_optimizer(runs)['warmup_at_grid_edge']
  runs[1]['loss'] = 1.0
  assert not tuning.choose_optimizer(runs)['warmup_at_grid_edge']


def test_the_mup_sweep_scales_attention_by_the_proxy_head_dim():
  """The proxy (d_model 8) has 2 heads of 4: head_dim grows to 12 at d_model 24 and stays 12 at 48,
  where the heads double, so the attention factor is sqrt(4/12) at both, not 1/sqrt(m)."""
  from experiments.sweeps import cpu_tuning_mup  # pylint: disable=import-outside-toplevel
  from gptjax.model import GPTConfig  # pylint: disable=import-outside-toplevel
  base, members = launch.load_sweep_file(cpu_tuning_mup.__file__)
  factors = {}
  for member in members:
    cfg = GPTConfig.from_run_config(launch.resolve(base, member))
    factors[cfg.d_model] = cfg.attention_mult
  assert factors == pytest.approx({8: 1.0, 24: (4 / 12) ** 0.5, 48: (4 / 12) ** 0.5})
