r"""Runs the fine-tuning study (experiments/finetune_methods.py), then its table and figure.

  python -m experiments.finetune_study --bases=runs/clm_vs_mlm_lr --workdir=runs/finetune_methods

Each fine-tune is a run directory `<workdir>/<base>-<method><size>` made by `gptjax.finetune`, so
a rerun skips the finished ones and resumes an interrupted one. The table gives, per base and run,
the trainable parameters, the final response loss and the exact-match accuracy of greedy
generations on the task's validation prompts, next to the base model's own accuracy before
fine-tuning. The figure plots the response loss (which moves long before exact match does) against
trainable parameters (one panel per base size, one line per method) and against base size (each
method at its largest budget).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import finetune_methods as study  # noqa: E402
from experiments.configs import finetune as finetune_config  # noqa: E402
from gptjax import train
from gptjax.cost import flops
from gptjax.data import load_tokenizer  # noqa: E402
from gptjax.finetune import exact_match, finetune, tasks  # noqa: E402
from gptjax.model import GPTConfig  # noqa: E402
from gptjax.runs import cli, run_dir, seeds
from gptjax.scaling import records

FLAGS = flags.FLAGS


def _finished(run: str) -> dict | None:
  """The final eval record of a finished fine-tune, or None."""
  if not os.path.exists(os.path.join(run, run_dir.CONFIG_FILE)):
    return None
  config = run_dir.read_config(run)
  evals = records.eval_records(run_dir.read_metrics(run))
  return evals[-1] if evals and evals[-1]['step'] == config.train.num_steps else None


def _base_accuracy(base_dir: str) -> float:
  """Exact match of the pre-trained model itself on the task's validation prompts."""
  config, params = train.load_params(base_dir)
  task_config = finetune_config.get_config()
  validation = tasks.synthetic_validation('reverse', task_config.finetune.eval_examples,
                                          task_config.seed)
  model_cfg = dataclasses.replace(GPTConfig.from_run_config(config), attention_impl='xla')
  return exact_match(params, model_cfg, load_tokenizer(base_dir), validation,
                     task_config.data.batch_size)


def run_all(bases: str, workdir: str) -> None:
  plan = study.members()
  for base in study.BASES:
    if _finished_base(os.path.join(bases, base)) is None:
      raise ValueError(f'{os.path.join(bases, base)} is not a finished pre-training run; train the '
                       'bases first: python -m launch.sweep '
                       '--sweep=experiments/sweeps/clm_vs_mlm_lr.py --nofit --workdir=' + bases)
  for index, (base, name, overrides) in enumerate(plan, start=1):
    run = os.path.join(workdir, name)
    if _finished(run) is not None:
      continue
    config = finetune_config.get_config()
    for key, value in overrides.items():
      section, field = key.split('.')
      config[section][field] = value
    start = time.perf_counter()
    record = finetune(config, os.path.join(bases, base), run)
    print(f'[{index}/{len(plan)}] {name}: exact match {record["eval_exact_match"]:.3f}, response '
          f'loss {record["eval_loss"]:.3f}, {int(record["params_trainable"]):,} trainable, '
          f'{time.perf_counter() - start:.0f}s', flush=True)


def _finished_base(base_dir: str) -> dict | None:
  return _finished(base_dir) if os.path.isdir(base_dir) else None


def collect(bases: str, workdir: str) -> list[dict]:
  rows = []
  for base, name, overrides in study.members():
    final = _finished(os.path.join(workdir, name))
    if final is None:
      continue
    base_config = run_dir.read_config(os.path.join(bases, base))
    rows.append({'base': base, 'run': name, 'method': overrides['finetune.method'],
                 'base_params': flops.param_counts(GPTConfig.from_run_config(base_config)).total,
                 'trainable': int(final['params_trainable']),
                 'exact_match': final['eval_exact_match'], 'loss': final['eval_loss']})
  if not rows:
    raise ValueError(f'No finished fine-tunes under {workdir}; run the study first.')
  return rows


def _match(rate: float, prompts: int) -> str:
  """'0.480 [0.419, 0.541]': the rate and its 95% Wilson interval over `prompts` prompts."""
  lo, hi = seeds.binomial_interval(round(rate * prompts), prompts)
  return f'{rate:.3f} [{lo:.3f}, {hi:.3f}]'


def format_table(rows: Sequence[dict], base_accuracy: dict[str, float], prompts: int) -> str:
  """One line per fine-tune (and per base before tuning); exact match with its 95% interval over
  the `prompts` validation prompts, one seed each."""
  lines = [f'{"run":<28} {"base params":>11} {"trainable":>10} {"response loss":>13} '
           f'{"exact match [95% interval]":>27}']
  for base in study.BASES:
    if base in base_accuracy:
      lines.append(f'{base + " (no tuning)":<28} {"":>11} {0:>10} {"":>13} '
                   f'{_match(base_accuracy[base], prompts):>27}')
    for row in (r for r in rows if r['base'] == base):
      lines.append(f'{row["run"]:<28} {row["base_params"]:>11,} {row["trainable"]:>10,} '
                   f'{row["loss"]:>13.4f} {_match(row["exact_match"], prompts):>27}')
  return '\n'.join(lines)


def plot(rows: Sequence[dict], path: str) -> None:
  bases = [b for b in study.BASES if any(r['base'] == b for r in rows)]
  figure, axes = plt.subplots(1, len(bases) + 1, figsize=(4.2 * (len(bases) + 1), 4))
  methods = ['full'] + [m for m, _, _ in study.METHODS]
  for axis, base in zip(axes, bases):
    for method in methods:
      points = sorted((r['trainable'], r['loss']) for r in rows
                      if r['base'] == base and r['method'] == method)
      if points:
        axis.plot(*zip(*points), marker='o', label=method)
    axis.set_xscale('log')
    axis.set_title(f'base {base}')
    axis.set_xlabel('trainable parameters')
    axis.set_ylabel('response loss (nats/token)')
    axis.set_yscale('log')
    axis.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  size_axis = axes[-1]
  for method in methods:
    largest = {}
    for r in rows:
      if r['method'] == method and r['trainable'] >= largest.get(r['base'], {}).get('trainable', -1):
        largest[r['base']] = r
    points = sorted((r['base_params'], r['loss']) for r in largest.values())
    if points:
      size_axis.plot(*zip(*points), marker='o', label=method)
  size_axis.set_xscale('log')
  size_axis.set_title('largest budget per method')
  size_axis.set_xlabel('base model parameters')
  size_axis.set_ylabel('response loss (nats/token)')
  size_axis.set_yscale('log')
  size_axis.grid(alpha=0.3)
  figure.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  figure.savefig(path, dpi=120)
  plt.close(figure)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  if not FLAGS.report_only:
    run_all(FLAGS.bases, FLAGS.workdir)
  rows = collect(FLAGS.bases, FLAGS.workdir)
  accuracy = {base: _base_accuracy(os.path.join(FLAGS.bases, base)) for base in study.BASES
              if _finished_base(os.path.join(FLAGS.bases, base))}
  print(format_table(rows, accuracy, finetune_config.get_config().finetune.eval_examples))
  out = os.path.join(FLAGS.workdir, 'plots', 'finetune_methods.png')
  plot(rows, out)
  print(f'Figure: {out}')


def define_flags() -> None:
  flags.DEFINE_string('bases', 'runs/clm_vs_mlm_lr',
                      'The directory holding the pre-trained bases.')
  flags.DEFINE_string('workdir', 'runs/finetune_methods', 'Where the fine-tunes go.')
  flags.DEFINE_bool('report_only', False, 'Only print the table and draw the figure.')


if __name__ == '__main__':
  define_flags()
  cli.run(main, 'experiments.finetune_study')

