"""Evaluating one run: every task at every shot count on its latest checkpoint, into `evals.jsonl`.

A task is a built-in name (`builtin.GENERATION`, `builtin.CHOICE`, `context_tasks.TASKS`) or a
user's file, `gen:PATH` (generation) or `mc:PATH` (multiple choice). Each (task, shots) gives one
record, keyed by the task, the shot count, the checkpoint's step, the example count and the seed,
and carrying that checkpoint's compute and size (tokens seen, FLOPs under both accountings,
parameter counts) and the run's validation loss, so a sweep's curves read nothing else. A record
already in the file is not computed again, so an interrupted evaluation resumes where it stopped.
Shot counts apply to generation tasks; the others are recorded at 0 shots.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Sequence

from absl import logging

from gptjax.data import split_hash
from gptjax.evals import builtin, context_tasks, generation, multiple_choice, task_files
from gptjax.evals.scoring import Scorer, load_scorer
from gptjax.runs import run_dir
from gptjax.train import evaluate as train_evaluate

EVALS_FILE = 'evals.jsonl'
DEFAULT_TASKS = 'position_loss,induction,copy,reverse,add,next_line'
_POOL_FRACTION = 0.25  # of a user's generation file: the demonstrations, by a stable hash
_SCALING_KEYS = ('tokens_seen', 'flops_full', 'flops_kaplan', 'params_total',
                 'params_non_embedding')


@dataclasses.dataclass(frozen=True)
class Task:
  name: str  # the built-in name, or the file's name
  kind: str  # 'generation' | 'choice' | 'context'
  path: str = ''  # a user's file


def parse_tasks(spec: str) -> list[Task]:
  """'copy,mc:my.jsonl' -> Tasks; an unknown name is refused with the list of known ones."""
  out = []
  for item in (s.strip() for s in spec.split(',') if s.strip()):
    kind, _, path = item.partition(':')
    if path and kind in ('gen', 'mc'):
      if not os.path.isfile(path):
        raise ValueError(f'--tasks names {path}, which is not a file.')
      out.append(Task(os.path.basename(path), 'generation' if kind == 'gen' else 'choice', path))
    elif item in builtin.GENERATION:
      out.append(Task(item, 'generation'))
    elif item in builtin.CHOICE:
      out.append(Task(item, 'choice'))
    elif item in context_tasks.TASKS:
      out.append(Task(item, 'context'))
    else:
      known = builtin.GENERATION + builtin.CHOICE + context_tasks.TASKS
      raise ValueError(f'Unknown task {item!r}; choose from {", ".join(known)}, or gen:PATH / '
                       'mc:PATH for a JSONL file of your own.')
  if not out:
    raise ValueError('--tasks is empty; name at least one task.')
  return out


def check_task_files(tasks: Sequence[Task]) -> None:
  """Reads every user task file, so a defect is reported (by line) before any model loads."""
  for task in tasks:
    if task.path:
      (task_files.read_generation if task.kind == 'generation' else task_files.read_choices)(
          task.path)


def parse_shots(spec: str) -> list[int]:
  try:
    shots = sorted({int(s) for s in spec.split(',') if s.strip()})
  except ValueError:
    raise ValueError(f'--shots={spec!r} must be comma-separated whole numbers, e.g. 0,1,4,8.'
                     ) from None
  if not shots or shots[0] < 0:
    raise ValueError(f'--shots={spec!r} must name shot counts of 0 or more.')
  return shots


def read_records(workdir: str) -> list[dict]:
  path = os.path.join(workdir, EVALS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:  # a line cut short by a kill: its record is computed again
        logging.warning('%s: skipping a damaged line.', path)
  return records


def record_key(record: dict) -> tuple:
  return (record['task'], record['shots'], record['step'], record['examples'], record['seed'])


def _checkpoint_fields(scorer: Scorer, workdir: str) -> dict:
  """Compute and size at the checkpoint's step, and the run's validation loss there."""
  at_step = [r for r in run_dir.read_metrics(workdir) if r.get('step') == scorer.step]
  fields = {}
  for record in at_step:
    fields.update({k: record[k] for k in (*_SCALING_KEYS, 'eval_loss') if k in record})
  if not all(k in fields for k in _SCALING_KEYS):
    d = scorer.config.data
    fields.update(train_evaluate.scaling_record(scorer.model_cfg, d.seq_len,
                                                scorer.step * d.batch_size * d.seq_len))
  return fields


def _generation_examples(task: Task, count: int, seed: int):
  if not task.path:
    return builtin.generation_task(task.name, count, pool_size=max(64, count), seed=seed)
  examples = task_files.read_generation(task.path)
  pool = [e for e in examples if split_hash.hash_unit(e.input) < _POOL_FRACTION]
  queries = [e for e in examples if split_hash.hash_unit(e.input) >= _POOL_FRACTION]
  if not queries:
    raise ValueError(f'{task.path}: every example fell in the demonstration pool; give more '
                     'examples.')
  return queries[:count], pool


def _runner(task: Task, scorer: Scorer, workdir: str, count: int, seed: int
            ) -> Callable[[int], dict]:
  """A function of the shot count that evaluates `task`; examples are built once."""
  if task.kind == 'context':
    if task.name == 'position_loss':
      return lambda shots: context_tasks.evaluate_position_loss(scorer, workdir, count)
    return lambda shots: context_tasks.evaluate_induction(scorer, count, seed)
  if task.kind == 'choice':
    examples = (task_files.read_choices(task.path)[:count] if task.path else
                builtin.next_line_task(scorer.config.data, count, seed,
                                       max_chars=min(80, scorer.model_cfg.max_seq_len // 2)))
    return lambda shots: multiple_choice.evaluate(scorer, examples)
  queries, pool = _generation_examples(task, count, seed)
  return lambda shots: generation.evaluate(scorer, queries, pool, shots, seed)


def evaluate_run(workdir: str, tasks: Sequence[Task], shots: Sequence[int], *, examples: int,
                 seed: int, scorer: Scorer | None = None) -> list[dict]:
  """Evaluates what `evals.jsonl` lacks for the run's latest checkpoint; returns the new records."""
  scorer = scorer or load_scorer(workdir)
  done = {record_key(r) for r in read_records(workdir)}
  fields = _checkpoint_fields(scorer, workdir)
  new = []
  for task in tasks:
    counts = shots if task.kind == 'generation' else [0]
    keys = {k: (task.name, k, scorer.step, examples, seed) for k in counts}
    todo = [k for k in counts if keys[k] not in done]
    if not todo:
      continue
    run = _runner(task, scorer, workdir, examples, seed)
    for k in todo:
      start = time.perf_counter()
      record = {'task': task.name, 'kind': task.kind, 'shots': k, 'step': scorer.step,
                'examples': examples, 'seed': seed, **run(k), **fields,
                'eval_time': time.perf_counter() - start}
      run_dir.append_json_line(os.path.join(workdir, EVALS_FILE), record)
      new.append(record)
      logging.info('%s: %s at %d shots: %s', workdir, task.name, k, summary(record))
  return new


def summary(record: dict) -> str:
  keys = ('exact_match', 'target_logprob', 'acc', 'acc_norm', 'icl_score', 'induction_gain')
  return ', '.join(f'{k} {record[k]:.4g}' for k in keys if k in record)
