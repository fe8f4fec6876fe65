"""The preference study's tables and figure, from each policy run's evaluations.

An evaluation samples the same held-out prompts with the same keys at every step of a run (the
keys follow the run's seed), so a run's curve is its policy's path through (KL to the SFT policy,
gold reward); step 0 is the SFT policy itself. A cell is a run's settings; its runs differ by seed.
Everything reported is the last evaluation, or a point of the curve fixed in advance (a KL level,
the half-way step), never the best along the way: a maximum over noisy evaluations is biased up.
Spreads are standard errors over seeds (`gptjax.runs.seeds.SeedSummary`); differences within a
run (gold above the SFT policy, the second half's change) are paired by seed.
"""

from __future__ import annotations

import collections
import math
import os
from typing import Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from gptjax.cost import flops  # noqa: E402
from gptjax.model import GPTConfig  # noqa: E402
from gptjax.preferences import pairs as preference_pairs  # noqa: E402
from gptjax.runs import run_dir, seeds  # noqa: E402

GOLD, KL, PROXY = 'eval_gold_reward', 'eval_kl', 'eval_reward'
KL_LEVELS = (2.0, 4.0, 8.0)  # nats per response at which cells are compared


def curve(workdir: str) -> list[dict]:
  """A run's evaluations in step order."""
  return sorted((r for r in run_dir.read_metrics(workdir) if GOLD in r), key=lambda r: r['step'])


def cells(curves: dict) -> dict[str, list[tuple]]:
  """{cell: [(run, curve), ...] in seed order}, cells in the order of their first run."""
  grouped = collections.defaultdict(list)
  for run, points in curves.items():
    grouped[run.cell].append((run, points))
  return {cell: sorted(group, key=lambda item: item[0].seed) for cell, group in grouped.items()}


def _summary(group, value) -> seeds.SeedSummary:
  return seeds.SeedSummary(tuple(float(value(points)) for _, points in group),
                           tuple(run.seed for run, _ in group))


def _pm(summary: seeds.SeedSummary, digits: int = 3) -> str:
  return f'{summary.mean:.{digits}f} ± {summary.sem:.{digits}f}'


def _interval(summary: seeds.SeedSummary) -> str:
  lo, hi = summary.interval
  return f'[{lo:+.3f}, {hi:+.3f}]'


def format_reward_models(rms: dict[str, str], bases: str, trunks: dict[str, str],
                         pairs: str) -> str:
  """Each reward model's trunk size and final held-out accuracy, with its Wilson interval over the
  held-out pairs (a tie counts half, so the count is rounded)."""
  path = preference_pairs.pairs_path(pairs)
  lines = ['Reward models (one each, seed 0; accuracy on the held-out pairs):',
           f'  {"trunk":<6} {"parameters":>10} {"pairs held out":>14} {"loss":>7} '
           f'{"accuracy [95% Wilson]":>24}']
  for key, rm in rms.items():
    config = run_dir.read_config(os.path.join(bases, trunks[key]))
    held_out = len(preference_pairs.split_pairs(preference_pairs.read_pairs(path),
                                                run_dir.read_config(rm).preferences.eval_fraction,
                                                path)[1])
    final = [r for r in run_dir.read_metrics(rm) if 'eval_accuracy' in r][-1]
    lo, hi = seeds.binomial_interval(round(final['eval_accuracy'] * held_out), held_out)
    lines.append(f'  {key:<6} {flops.param_counts(GPTConfig.from_run_config(config)).total:>10,} '
                 f'{held_out:>14} {final["eval_loss"]:>7.3f} '
                 f'{final["eval_accuracy"]:>8.3f} [{lo:.3f}, {hi:.3f}]')
  return '\n'.join(lines)


def format_finals(curves: dict) -> str:
  """Per cell, at the last evaluation: KL, gold reward, its gain over the SFT policy (paired by
  seed, with the t interval) and PPO's proxy reward."""
  grouped = cells(curves)
  count = max(len(group) for group in grouped.values())
  lines = [f'Last evaluation, mean ± se over seeds ({count} seeds; gold and KL on the held-out '
           'prompts):',
           f'  {"cell":<22} {"steps":>5} {"KL (nats)":>14} {"gold":>14} '
           f'{"gold - SFT [95%]":>32} {"proxy":>14}']
  for cell, group in grouped.items():
    gain = _summary(group, lambda c: c[-1][GOLD] - c[0][GOLD])
    proxy = _pm(_summary(group, lambda c: c[-1][PROXY])) if PROXY in group[0][1][-1] else '-'
    lines.append(f'  {cell:<22} {group[0][1][-1]["step"]:>5} '
                 f'{_pm(_summary(group, lambda c: c[-1][KL]), 2):>14} '
                 f'{_pm(_summary(group, lambda c: c[-1][GOLD])):>14} '
                 f'{_pm(gain):>14} {_interval(gain):>17} {proxy:>14}')
  # Every run of a seed evaluates the same SFT policy with the same keys at step 0: one value each.
  per_seed = {run.seed: points[0][GOLD] for run, points in curves.items()}
  sft = seeds.SeedSummary(tuple(per_seed.values()), tuple(per_seed))
  lines.append(f'  SFT policy (step 0, one value per seed): gold {_pm(sft)}')
  return '\n'.join(lines)


def gold_at_kl(points: Sequence[dict], level: float) -> float:
  """The gold reward where the curve first reaches KL `level`, linear between evaluations; NaN if
  it never does."""
  for a, b in zip(points, points[1:]):
    if a[KL] <= level <= b[KL]:
      share = 0.0 if b[KL] == a[KL] else (level - a[KL]) / (b[KL] - a[KL])
      return a[GOLD] + share * (b[GOLD] - a[GOLD])
  return math.nan


def format_matched_kl(curves: dict) -> str:
  """Every cell's gold reward at each KL level, over the seeds whose curve reaches it."""
  lines = ['Gold reward at matched KL (mean ± se over the seeds that reach it):',
           '  ' + f'{"cell":<22}' + ''.join(f'{f"KL {level:g}":>22}' for level in KL_LEVELS)]
  for cell, group in cells(curves).items():
    entries = []
    for level in KL_LEVELS:
      values = [gold_at_kl(points, level) for _, points in group]
      reached = [(run.seed, v) for (run, _), v in zip(group, values) if not math.isnan(v)]
      if len(reached) < 2:
        entries.append(f'{len(reached)}/{len(group)} reach it')
        continue
      summary = seeds.SeedSummary(tuple(v for _, v in reached), tuple(s for s, _ in reached))
      entries.append(f'{_pm(summary)} ({len(reached)}/{len(group)})')
    lines.append('  ' + f'{cell:<22}' + ''.join(f'{entry:>22}' for entry in entries))
  return '\n'.join(lines)


def second_half(points: Sequence[dict], key: str) -> float:
  """The change of `key` from the evaluation half-way through the run to the last one."""
  middle = points[-1]['step'] // 2
  at_middle = next(p for p in points if p['step'] >= middle)
  return points[-1][key] - at_middle[key]


def format_over_optimisation(curves: dict) -> str:
  """For each PPO cell, how gold and proxy reward moved over the run's second half, paired by
  seed: over-optimisation is the proxy rising while the gold falls."""
  lines = ['Second half of each PPO run (last evaluation minus the half-way one; 95% t interval):',
           f'  {"cell":<22} {"KL change":>14} {"gold change":>32} {"proxy change":>32}']
  for cell, group in cells(curves).items():
    if PROXY not in group[0][1][-1]:
      continue
    changes = [_summary(group, lambda c, key=key: second_half(c, key)) for key in (KL, GOLD, PROXY)]
    lines.append(f'  {cell:<22} {_pm(changes[0], 2):>14} '
                 + ' '.join(f'{_pm(c):>14} {_interval(c):>17}' for c in changes[1:]))
  return '\n'.join(lines)


def plot(curves: dict, path: str) -> None:
  """Gold reward (left) and, for PPO, the proxy reward (right) against KL: every seed's curve
  thin, each cell's last evaluation as its mean ± se over seeds."""
  figure, (gold_axis, proxy_axis) = plt.subplots(1, 2, figsize=(13, 5))
  colors = plt.get_cmap('tab10')
  for i, (cell, group) in enumerate(cells(curves).items()):
    style = '-' if cell.startswith('ppo') else '--'
    keys = [(gold_axis, GOLD)] + ([(proxy_axis, PROXY)] if PROXY in group[0][1][-1] else [])
    for axis, key in keys:
      for _, points in group:
        axis.plot([p[KL] for p in points], [p[key] for p in points], style, linewidth=0.8,
                  alpha=0.45, color=colors(i % 10))
      kl = _summary(group, lambda c: c[-1][KL])
      value = _summary(group, lambda c, key=key: c[-1][key])
      axis.errorbar([kl.mean], [value.mean], xerr=[kl.sem], yerr=[value.sem], marker='o',
                    markersize=7, capsize=3, color=colors(i % 10), label=cell)
  gold_axis.set_ylabel('gold reward (count_e_20) of held-out samples')
  proxy_axis.set_ylabel("reward model's normalised score (PPO's proxy)")
  for axis in (gold_axis, proxy_axis):
    axis.set_xlabel('KL(policy || SFT policy), nats per response')
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
  figure.suptitle('PPO (solid) and DPO (dashed) from the SFT policy: each seed a thin curve, '
                  'the last evaluation as mean ± se')
  figure.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  figure.savefig(path, dpi=120)
  plt.close(figure)
