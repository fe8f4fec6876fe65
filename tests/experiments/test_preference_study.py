"""The preference study's plan and tables: last evaluations (never the best), gold reward at
matched KL, the second half's change paired by seed."""

import math

import numpy as np
import pytest

from experiments import preference_study as study
from experiments import preference_tables as tables


def _points(kls, golds, proxies=None, every=10):
  points = []
  for i, (kl, gold) in enumerate(zip(kls, golds)):
    point = {'step': i * every, tables.KL: kl, tables.GOLD: gold}
    if proxies is not None:
      point[tables.PROXY] = proxies[i]
    points.append(point)
  return points


def test_the_plan_covers_each_series_at_every_seed_with_beta_zero_run_longest():
  runs = study.plan(seeds=3, ppo_steps=80, dpo_steps=150)
  cells = {run.cell for run in runs}
  assert {f'ppo_rm_d64_beta{b:g}' for b in study.PPO_BETAS} <= cells
  assert {f'ppo_rm_{d}_beta{study.SIZE_BETA:g}' for d in study.REWARD_TRUNKS} <= cells
  assert {f'dpo_beta{b:g}' for b in study.DPO_BETAS} <= cells
  assert len(runs) == 3 * len(cells) and len({run.name for run in runs}) == len(runs)
  assert {run.steps for run in runs if run.kind == 'ppo' and run.beta == 0} == {160}
  assert [run.seed for run in runs] == sorted(run.seed for run in runs)


def test_gold_at_kl_interpolates_where_the_curve_first_reaches_the_level():
  points = _points([0.0, 1.0, 5.0, 3.0, 9.0], [0.2, 0.3, 0.5, 0.4, 0.6])
  assert tables.gold_at_kl(points, 3.0) == pytest.approx(0.3 + 0.2 * 2 / 4)
  assert tables.gold_at_kl(points, 9.0) == pytest.approx(0.6)
  assert math.isnan(tables.gold_at_kl(points, 10.0))


def _curves(cell_points):
  return {study.PolicyRun('ppo', 0.0, seed, 40, 'd64'): points
          for seed, points in enumerate(cell_points)}


def test_the_finals_report_the_last_evaluation_not_the_best():
  peaked = _points([0, 4, 8, 9, 10], [0.2, 0.6, 0.5, 0.45, 0.4], [0, 1, 2, 3, 4])
  other = _points([0, 3, 7, 9, 12], [0.1, 0.5, 0.4, 0.35, 0.3], [0, 1, 2, 3, 5])
  text = tables.format_finals(_curves([peaked, other]))
  row = next(line for line in text.splitlines() if 'ppo_rm_d64_beta0 ' in line)
  gains = np.array([0.4 - 0.2, 0.3 - 0.1])
  assert f'{0.35:.3f} ± {np.std([0.4, 0.3], ddof=1) / np.sqrt(2):.3f}' in row
  assert f'{gains.mean():.3f} ± {gains.std(ddof=1) / np.sqrt(2):.3f}' in row
  assert '0.550' not in row  # the mean of the peaks is not reported


def test_the_second_half_is_paired_by_seed_and_shows_a_proxy_gold_split():
  falling_gold = _points([0, 2, 4, 6, 8], [0.2, 0.5, 0.6, 0.5, 0.4], [0, 1, 2, 3, 4])
  assert tables.second_half(falling_gold, tables.GOLD) == pytest.approx(0.4 - 0.6)
  assert tables.second_half(falling_gold, tables.PROXY) == pytest.approx(4 - 2)
  text = tables.format_over_optimisation(_curves([falling_gold, falling_gold]))
  assert '-0.200 ± 0.000' in text and '2.000 ± 0.000' in text
