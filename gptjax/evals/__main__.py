r"""Evaluates a run, or every finished member of a sweep, on few-shot and likelihood tasks.

  python -m gptjax.evals --workdir=runs/tiny --tasks=copy,reverse --shots=0,1,4,8
  python -m gptjax.evals --sweep_dir=runs/cpu_scaling     # every member, then the curves

Records go to each run's `evals.jsonl` (`gptjax/evals/run.py`); what is recorded is not computed
again. A sweep also gets `<sweep_dir>/evals/<task>.png` and a table per design budget
(`gptjax/evals/curves.py`). Tasks: docs/evals.md.
"""

import os
from typing import Sequence

from absl import app, flags

from gptjax.evals import curves, run, sweep
from gptjax.runs import cli

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'A run directory to evaluate.')
flags.DEFINE_string('sweep_dir', None, 'A sweep directory: evaluate every finished member.')
flags.DEFINE_string('tasks', run.DEFAULT_TASKS, 'Comma-separated built-in tasks, gen:PATH or '
                    'mc:PATH.')
flags.DEFINE_string('shots', '0,1,4,8', 'Shot counts of the generation tasks.')
flags.DEFINE_integer('examples', 200, 'Examples per task (validation windows and induction '
                     'sequences for the context tasks).')
flags.DEFINE_integer('seed', 0, 'Draws the examples and the demonstrations.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  cli.quiet_libraries()
  if bool(FLAGS.workdir) == bool(FLAGS.sweep_dir):
    raise ValueError('Pass exactly one of --workdir (a run) or --sweep_dir (a sweep).')
  if FLAGS.examples < 2:
    raise ValueError(f'--examples={FLAGS.examples} must be at least 2.')
  tasks, shots = run.parse_tasks(FLAGS.tasks), run.parse_shots(FLAGS.shots)
  run.check_task_files(tasks)
  if FLAGS.workdir:
    for record in run.evaluate_run(FLAGS.workdir, tasks, shots, examples=FLAGS.examples,
                                   seed=FLAGS.seed):
      print(f'{record["task"]} ({record["shots"]} shots): {run.summary(record)}')
    print(f'Records: {os.path.join(FLAGS.workdir, run.EVALS_FILE)}')
    return
  members = sweep.evaluate_sweep(FLAGS.sweep_dir, tasks, shots, examples=FLAGS.examples,
                                 seed=FLAGS.seed)
  rows = [r for r in curves.final_records(members)
          if r['examples'] == FLAGS.examples and r['seed'] == FLAGS.seed]
  print(curves.budget_table(rows))
  for task in dict.fromkeys(r['task'] for r in rows):
    path = os.path.join(FLAGS.sweep_dir, 'evals', f'{task}.png')
    curves.plot_task(rows, task, path)
    print(f'Figure: {path}')


if __name__ == '__main__':
  cli.run(main, 'gptjax.evals')
