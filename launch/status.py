"""Where each member of a sweep stands on disk (new, partial, finished, stale, running or broken),
and the table of members, their sizes, tokens and compute that the runner prints before it trains.

Every backend (this machine, SLURM, Cloud TPU VMs) plans from the same survey, so they agree on what
is left to train. A workdir may be a `gs://` URI: its files are read through `gptjax.runs.run_dir`.

  python -m launch.status MEMBER_DIR   exits 0 if the run there is finished by its own config, 1
                                       if not: a SLURM array task asks this before it trains.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Sequence

import ml_collections

import launch
from gptjax.runs import run_dir, workdir_lock
from gptjax.scaling import records


@dataclasses.dataclass(frozen=True)
class Status:
  """Where a member's workdir stands, from its saved config and metrics."""

  state: str  # 'new' | 'partial' | 'finished' | 'stale' | 'running' | 'broken'
  step: int = 0  # the last step with a record
  eval_loss: float | None = None  # the latest eval
  detail: str = ''


def member_status(member_dir: str, config: ml_collections.ConfigDict) -> Status:
  """Finished means a record at the final step with an eval loss. Stale means the workdir was made
  with another config than the member now has: resuming or fitting it would mix two experiments.
  Running means a process (this runner's or another's) holds the member's workdir. Broken means a
  file of the member cannot be read; the detail names it."""
  try:
    return _member_status(member_dir, config)
  except (OSError, ValueError) as error:
    return Status('broken', detail=' '.join(str(error).split()))


def _member_status(member_dir: str, config: ml_collections.ConfigDict) -> Status:
  # The lock is an flock on a local or NFS file: a gs:// workdir is never a local directory.
  holder = workdir_lock.holder(member_dir) if os.path.isdir(member_dir) else None
  if holder is not None:
    return Status('running', detail=f'by {holder.describe()}')
  saved = run_dir.read_config_dict(member_dir) if run_dir.isdir(member_dir) else {}
  differences = run_dir.config_differences(saved, config) if saved else []
  if differences:
    more = f' and {len(differences) - 2} more' if len(differences) > 2 else ''
    return Status('stale', detail='; '.join(differences[:2]) + more)
  if not run_dir.exists(os.path.join(member_dir, run_dir.METRICS_FILE)):
    return Status('partial' if saved else 'new')
  rows = run_dir.read_metrics(member_dir)
  evals = records.eval_records(rows)
  step = max((row.get('step', 0) for row in rows), default=0)
  last_eval = evals[-1][records.EVAL_KEY] if evals else None
  done = any(row.get('step') == config.train.num_steps for row in evals)
  return Status('finished' if done else 'partial', step, last_eval)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One member as every backend sees it: resolved config, plan, workdir and where it stands."""

  member: launch.Member
  config: ml_collections.ConfigDict
  plan: launch.Plan
  directory: str
  status: Status

  @property
  def name(self) -> str:
    return self.member.name

  @property
  def unfinished(self) -> bool:
    """New or partial: a member to (re)start. Stale, broken and running ones are not."""
    return self.status.state in ('new', 'partial')


def survey(base: ml_collections.ConfigDict, members: Sequence[launch.Member], workdir: str,
           method: str = 'full') -> list[Entry]:
  """Each member resolved, planned and its status read from `workdir/<member>`."""
  entries = []
  for member in members:
    config = launch.resolve(base, member)
    directory = os.path.join(workdir, member.name)
    entries.append(Entry(member, config, launch.plan(config, method), directory,
                         member_status(directory, config)))
  return entries


def run_finished(member_dir: str) -> bool:
  """Whether the run in `member_dir` reached its final step with its eval, by its own config."""
  try:
    saved = run_dir.read_config_dict(member_dir) if run_dir.isdir(member_dir) else {}
  except (OSError, ValueError):
    return False  # training it reports the damage, with the fix
  return bool(saved) and member_status(member_dir, ml_collections.ConfigDict(saved)).state == (
      'finished')


def format_table(sweep: Sequence[tuple[launch.Member, launch.Plan, Status]]) -> str:
  """One line per member (size, tokens, steps, learning rate, target and planned compute, status)
  and a total."""
  method = sweep[0][1].method
  n_name = 'N (non-emb)' if method == 'kaplan' else 'N (total)'
  width = max(len(member.name) for member, _, _ in sweep)
  lines = [f'{"member":<{width}} {"d_model":>7} {"layers":>6} {"heads":>5} {n_name:>13} '
           f'{"tokens":>14} {"steps":>7} {"lr":>7} {"C target":>9} {f"C {method}":>9}  status']
  for member, p, status in sweep:
    target = f'{member.budget:.3g}' if member.budget else '-'
    state = status.state + (f' ({status.detail})' if status.detail else '')
    if status.state == 'partial' and status.step:
      state = f'partial (step {status.step})'
    lines.append(f'{member.name:<{width}} {p.d_model:>7} {p.num_layers:>6} {p.num_heads:>5} '
                 f'{p.params:>13,} {p.tokens:>14,} {p.steps:>7} {p.learning_rate:>7.2g} '
                 f'{target:>9} {p.flops:>9.3g}  {state}')
  total = sum(p.flops for _, p, _ in sweep)
  lines.append(f'{len(sweep)} members, {total:.3g} FLOPs ({method}) in all.')
  return '\n'.join(lines)


if __name__ == '__main__':
  if len(sys.argv) != 2:
    print('usage: python -m launch.status MEMBER_DIR', file=sys.stderr)
    sys.exit(2)
  sys.exit(0 if run_finished(sys.argv[1]) else 1)
