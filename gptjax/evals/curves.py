"""A sweep's evaluations as curves: each metric against compute and against validation loss.

One point per member and shot count, at the member's final checkpoint. Against compute the
frontier per shot count is drawn: the best value any member reached for at most that compute
(Kaplan et al.'s compute-efficient frontier, for an ability instead of the loss). Generation
tasks draw exact match and the target's log-likelihood side by side, so a jump in one can be read
against the other. The table gives, per design budget, the member with the lowest validation loss
(the compute-optimal one), with the mean ± standard error over its seeds where it has replicas.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gptjax.evals import run  # noqa: E402
from gptjax.runs import run_dir, seeds  # noqa: E402
from gptjax.scaling import records as scaling_records  # noqa: E402

METRICS = {'position_loss': ('icl_score', 'loss'),
           'induction': ('induction_gain', 'loss_second_copy'),
           'generation': ('exact_match', 'target_logprob'),
           'choice': ('acc', 'acc_norm')}
LOWER_IS_BETTER = {'icl_score', 'loss', 'loss_second_copy'}
_REPLICA = re.compile(r'_s\d+$')  # a sweep's extra seeds: `<design>_s1`, `<design>_s2`


def metrics_of(record: dict) -> tuple[str, ...]:
  return METRICS[record['task'] if record['kind'] == 'context' else record['kind']]


def final_records(members: Sequence[str]) -> list[dict]:
  """Each member's records at its last step (the latest of each task, shot count, example count
  and seed), with the member's name and design."""
  rows = []
  for member in members:
    step = run_dir.read_config(member).train.num_steps
    latest = {}
    for record in run.read_records(member):
      if record['step'] == step:
        latest[(record['task'], record['shots'], record['examples'], record['seed'])] = record
    name = os.path.basename(member)
    rows += [{**r, 'member': name, 'design': _REPLICA.sub('', name)} for r in latest.values()]
  return rows


def frontier(compute: np.ndarray, values: np.ndarray, higher_is_better: bool
             ) -> tuple[np.ndarray, np.ndarray]:
  """The best value reached at or below each compute, as points in compute order."""
  order = np.argsort(compute)
  best = (np.maximum if higher_is_better else np.minimum).accumulate(values[order])
  return compute[order], best


def plot_task(rows: Sequence[dict], task: str, path: str) -> None:
  """Two rows of panels (against compute, against validation loss), one column per metric."""
  rows = [r for r in rows if r['task'] == task]
  metrics = metrics_of(rows[0])
  figure, axes = plt.subplots(2, len(metrics), figsize=(5.5 * len(metrics), 8.5), squeeze=False)
  colors = plt.get_cmap('viridis')
  shot_counts = sorted({r['shots'] for r in rows})
  for column, metric in enumerate(metrics):
    for i, shots in enumerate(shot_counts):
      picked = [r for r in rows if r['shots'] == shots and metric in r]
      compute = np.array([r['flops_full'] for r in picked])
      values = np.array([r[metric] for r in picked])
      color = colors(i / max(1, len(shot_counts) - 1))
      label = f'{shots} shots' if rows[0]['kind'] == 'generation' else None
      axes[0][column].scatter(compute, values, s=14, alpha=0.6, color=color, label=label)
      axes[0][column].step(*frontier(compute, values, metric not in LOWER_IS_BETTER),
                           where='post', color=color, linewidth=1.2)
      with_loss = [(r['eval_loss'], r[metric]) for r in picked if 'eval_loss' in r]
      if with_loss:
        axes[1][column].scatter(*zip(*with_loss), s=14, alpha=0.6, color=color, label=label)
    axes[0][column].set_xscale('log')
    axes[0][column].set_xlabel('training compute (FLOPs spent)')
    axes[1][column].set_xlabel('validation loss (nats/token)')
    axes[1][column].invert_xaxis()
    for row in (0, 1):
      axes[row][column].set_ylabel(metric)
      axes[row][column].grid(alpha=0.3)
      if label:
        axes[row][column].legend(fontsize=7)
  figure.suptitle(f'{task}: every member (points) and the frontier per shot count (lines)')
  figure.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  figure.savefig(path, dpi=110)
  plt.close(figure)


def budget_table(rows: Sequence[dict]) -> str:
  """Per task, shot count and design budget: the compute-optimal design's metrics, mean ± se over
  its seeds (a lone seed shows no ±)."""
  lines = []
  by_cell = collections.defaultdict(list)
  for r in rows:
    budget = scaling_records.design_budget(r['member'])
    if budget is not None:
      by_cell[(r['task'], r['shots'], budget)].append(r)
  for task in dict.fromkeys(r['task'] for r in rows):
    metrics = metrics_of(next(r for r in rows if r['task'] == task))
    lines.append(f'{task}: ' + ', '.join(metrics) + ' of each budget\'s lowest-loss design')
    for (t, shots, budget), cell in sorted(by_cell.items(), key=lambda kv: (kv[0][1], kv[0][2])):
      if t != task:
        continue
      designs = collections.defaultdict(list)
      for r in cell:
        designs[r['design']].append(r)
      best = min(designs.values(), key=lambda rs: np.mean([r.get('eval_loss', np.inf) for r in rs]))
      values = []
      for metric in metrics:
        summary = seeds.SeedSummary(tuple(r[metric] for r in best), tuple(range(len(best))))
        values.append(f'{metric} {summary.mean:.4f}' +
                      (f' ± {summary.sem:.4f}' if len(best) > 1 else ''))
      lines.append(f'  {shots} shots  C {budget:.0e}  {best[0]["design"]:<14} '
                   f'({len(best)} seed{"s" if len(best) > 1 else ""})  ' + '  '.join(values))
  return '\n'.join(lines)
