"""The reconciliation study's sweeps differ from the default sweep in exactly the correction each
step names, and its table and figure come out of its rows."""

import os

import pytest

import launch
from experiments import kaplan_vs_chinchilla as study
from experiments import tuning
from experiments.sweeps import cpu_tuning_lr


def _configs(variant):
  base, members = launch.load_sweep_file(study._sweep_path(variant))  # pylint: disable=protected-access
  return {m.name: (m, launch.resolve(base, m)) for m in members}


@pytest.fixture(scope='module')
def sweeps():
  return {variant: _configs(variant) for _, variant, _ in study.STEPS}


def test_each_step_changes_one_thing(sweeps):
  chosen = tuning.read_tuning()
  default = sweeps['default']
  for variant, members in sweeps.items():
    assert set(members) == set(default), variant  # the same sizes and budgets throughout
  for name, (member, config) in default.items():
    d_model = config.model.d_model
    settings = {}
    for variant, members in sweeps.items():
      m, c = members[name]
      settings[variant] = (launch.plan(c).flops / m.budget, c.train.b2,
                           round(c.train.warmup_steps / c.train.num_steps, 2),
                           c.train.learning_rate)
    spent_ratio = launch.plan(sweeps['kaplan_design'][name][1]).flops / member.budget
    assert spent_ratio > 1.15  # designed in Kaplan's C, it spends more than the budget
    for variant in ('flops_spent', 'warmup', 'beta2', 'default'):
      assert settings[variant][0] == pytest.approx(1.0, abs=0.05)
    untuned_rate = cpu_tuning_lr.centre_rate(d_model)
    assert settings['flops_spent'][1:] == (0.95, 0.05, untuned_rate)
    assert settings['warmup'][1:] == (0.95, round(chosen['warmup_fraction'], 2), untuned_rate)
    assert settings['beta2'][1:] == (chosen['b2'], round(chosen['warmup_fraction'], 2),
                                     untuned_rate)
    assert settings['default'][3] == chosen['learning_rate'][str(d_model)]


def test_the_table_and_figure_come_from_the_rows(tmp_path, capsys):
  rows = [dict(step=label, sweep=variant, compute_key=keys[0], params_key=keys[1],
               estimates={'isoflop': [0.6 - 0.02 * i, 0.5, 0.7],
                          'chinchilla': [0.55, 0.3, 0.8]}, agree=True, runs=35)
          for i, (label, variant, keys) in enumerate(study.STEPS)]
  study.print_table(rows)
  out = capsys.readouterr().out
  assert "Kaplan: Kaplan's C, non-embedding N, untuned" in out and '0.600 [0.50, 0.70]' in out
  assert out.count('nan [nan, nan]') == len(rows)  # approach 1 missing from every row
  path = study.plot(rows, str(tmp_path / 'study.png'))
  assert os.path.getsize(path) > 10_000
