"""Evaluating every finished member of a sweep, with progress, skipping what is recorded.

A member is a run directory under the sweep directory whose latest evaluation record is at its
last step (`train.num_steps`). Each member's evaluations go to its own `evals.jsonl`
(`gptjax/evals/run.py`), so a sweep evaluation killed half-way resumes at the member and record
it stopped at; members with everything recorded are passed over without loading a checkpoint.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from gptjax.evals import run
from gptjax.runs import cli, run_dir


def finished_members(sweep_dir: str) -> list[str]:
  """Run directories under `sweep_dir` whose training reached its last step, in name order."""
  if not os.path.isdir(sweep_dir):
    raise ValueError(f'--sweep_dir={sweep_dir} is not a directory.')
  members = [os.path.join(sweep_dir, name) for name in sorted(os.listdir(sweep_dir))
             if run_dir.final_record(os.path.join(sweep_dir, name)) is not None]
  if not members:
    raise ValueError(f'{sweep_dir} holds no finished runs; train the sweep first.')
  return members


def _is_recorded(member: str, tasks: Sequence[run.Task], shots: Sequence[int], examples: int,
                 seed: int) -> bool:
  """Whether every (task, shots) is recorded at the member's last step (its final checkpoint)."""
  step = run_dir.read_config(member).train.num_steps
  done = {run.record_key(r) for r in run.read_records(member)}
  return all((task.name, k, step, examples, seed) in done for task in tasks
             for k in (shots if task.kind == 'generation' else [0]))


def evaluate_sweep(sweep_dir: str, tasks: Sequence[run.Task], shots: Sequence[int], *,
                   examples: int, seed: int) -> list[str]:
  """Evaluates every finished member; returns the members' directories."""
  members = finished_members(sweep_dir)
  todo = [m for m in members if not _is_recorded(m, tasks, shots, examples, seed)]
  print(f'{len(members)} finished members, {len(members) - len(todo)} already evaluated.',
        flush=True)
  start = time.perf_counter()
  for index, member in enumerate(todo, start=1):
    new = run.evaluate_run(member, tasks, shots, examples=examples, seed=seed)
    elapsed = time.perf_counter() - start
    print(f'[{index}/{len(todo)}] {os.path.basename(member)}: {len(new)} records; '
          f'{cli.format_duration(elapsed)} so far, ETA '
          f'{cli.format_duration(elapsed / index * (len(todo) - index))}', flush=True)
  return members
