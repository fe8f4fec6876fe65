r"""Runs the fine-tuning study (plan: experiments/finetune_methods.py), then its tables and figure.

  python -m experiments.finetune_study --bases=runs/clm_vs_mlm_lr --workdir=runs/finetune_methods

Each fine-tune is a run directory `<workdir>/seed<k>/<base>-<method><size>-lr<rate>` made by
`gptjax.finetune`, so a rerun skips the finished ones and restarts an interrupted one. First the
rate selection (one seed, 4 rates per base and method), then every cell at the chosen rates over
--seeds seeds. It prints the selection grid, then per base the untuned base and every fine-tune's
trainable parameters, rate, response loss and exact match (mean ± standard error over the seeds,
and the exact match's 95% Wilson interval over all the prompts scored), then the size comparison
at matched r/a/P and at matched trainable-parameter count (paired over seeds).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Sequence

import jax
import numpy as np
from absl import app, flags

from experiments import finetune_methods as plan
from experiments import finetune_tables as tables
from experiments.configs import finetune as finetune_config
from gptjax import train
from gptjax.cost import flops
from gptjax.data import load_tokenizer
from gptjax.finetune import exact_match, finetune, sft_data, tasks
from gptjax.model import GPT, GPTConfig
from gptjax.runs import cli, run_dir

FLAGS = flags.FLAGS


def _config(member: plan.Member):
  config = finetune_config.get_config()
  for key, value in member.overrides().items():
    section, _, field = key.rpartition('.')
    (config[section] if section else config)[field] = value
  return config


def _check_bases(bases: str) -> None:
  for base, width in plan.BASES.items():
    path = os.path.join(bases, base)
    if not os.path.isdir(path) or run_dir.final_record(path) is None:
      raise ValueError(f'{path} is not a finished pre-training run; train the bases first: '
                       'python -m launch.sweep --sweep=experiments/sweeps/clm_vs_mlm_lr.py '
                       f'--nofit --workdir={bases}')
    if run_dir.read_config(path).model.d_model != width:
      raise ValueError(f'{path} has d_model {run_dir.read_config(path).model.d_model}, the plan '
                       f'{width}; point --bases at the objective study\'s rate sweep.')


def _train(members: Sequence[plan.Member], bases: str, workdir: str, stage: str) -> None:
  todo = [m for m in members if run_dir.final_record(os.path.join(workdir, m.name)) is None]
  print(f'{stage}: {len(members) - len(todo)} of {len(members)} fine-tunes already finished.',
        flush=True)
  start = time.perf_counter()
  for index, member in enumerate(todo, start=1):
    record = finetune(_config(member), os.path.join(bases, member.base),
                      os.path.join(workdir, member.name))
    elapsed = time.perf_counter() - start
    print(f'[{stage} {index}/{len(todo)}] {member.name}: response loss {record["eval_loss"]:.3f},'
          f' exact match {record["eval_exact_match"]:.3f}; '
          f'{cli.format_duration(elapsed)} so far, ETA '
          f'{cli.format_duration(elapsed / index * (len(todo) - index))}', flush=True)


def _losses(members: Sequence[plan.Member], workdir: str) -> dict[plan.Member, float]:
  finals = {m: run_dir.final_record(os.path.join(workdir, m.name)) for m in members}
  return {m: final['eval_loss'] for m, final in finals.items() if final is not None}


def select_rates(bases: str, workdir: str, train_missing: bool) -> dict[plan.Member, float]:
  """The selection runs' final losses: the starting grids, then each edge extension in turn."""
  selection = plan.selection_members()
  while True:
    if train_missing:
      _train(selection, bases, workdir, 'rate selection')
    losses = _losses(selection, workdir)
    if len(losses) < len(selection):
      raise ValueError(f'{len(selection) - len(losses)} rate-selection fine-tunes under '
                       f'{workdir} are unfinished; run the study without --report_only.')
    more = plan.extensions(losses)
    if not more:
      return losses
    selection += more


def collect(members: Sequence[plan.Member], bases: str, workdir: str) -> list[dict]:
  """One row per finished member: its plan fields and final response loss and exact match."""
  rows = []
  for member in members:
    final = run_dir.final_record(os.path.join(workdir, member.name))
    if final is None:
      continue
    base_config = run_dir.read_config(os.path.join(bases, member.base))
    rows.append({**dataclasses.asdict(member),
                 'base_params': flops.param_counts(GPTConfig.from_run_config(base_config)).total,
                 'trainable': int(final['params_trainable']),
                 'exact_match': final['eval_exact_match'], 'loss': final['eval_loss']})
  return rows


def untuned_rows(bases: str, seeds: int) -> list[dict]:
  """The base models themselves on each seed's validation prompts: response loss (the fine-tuning
  loss on the same rows) and exact match of their greedy generations."""
  rows = []
  for base in plan.BASES:
    base_dir = os.path.join(bases, base)
    config, params = train.load_params(base_dir)
    model_cfg = dataclasses.replace(GPTConfig.from_run_config(config), attention_impl='xla')
    tokenizer = load_tokenizer(base_dir)
    task = finetune_config.get_config()
    eval_fn = jax.jit(lambda p, batch: train.eval_step(p, batch, model=GPT(model_cfg)))
    for seed in range(seeds):
      validation = tasks.synthetic_validation('reverse', task.finetune.eval_examples, seed)
      rows_Nx2xT, kept = sft_data.example_rows(tokenizer, validation, task.data.seq_len,
                                               'validation')
      nll, count, _ = np.asarray(eval_fn(params, rows_Nx2xT))
      rows.append({'base': base, 'method': 'none', 'size': None, 'rate': 0.0, 'seed': seed,
                   'trainable': 0, 'loss': float(nll / count),
                   'exact_match': exact_match(params, model_cfg, tokenizer, kept,
                                              task.data.batch_size)})
  return rows


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  if FLAGS.seeds < 2:
    raise ValueError(f'--seeds={FLAGS.seeds}: a standard error needs 2 or more (3 by default).')
  _check_bases(FLAGS.bases)
  losses = select_rates(FLAGS.bases, FLAGS.workdir, train_missing=not FLAGS.report_only)
  rates = plan.choose_rates(losses)
  print(tables.format_selection(losses, rates), '\n', flush=True)
  members = plan.seed_members(rates, FLAGS.seeds)
  if not FLAGS.report_only:
    _train(members, FLAGS.bases, FLAGS.workdir, 'seeds')
  rows = collect(members, FLAGS.bases, FLAGS.workdir) + untuned_rows(FLAGS.bases, FLAGS.seeds)
  prompts = finetune_config.get_config().finetune.eval_examples
  print(tables.format_table(rows, prompts))
  print()
  print(tables.format_size_comparison(rows))
  out = os.path.join(FLAGS.workdir, 'plots', 'finetune_methods.png')
  tables.plot(rows, out)
  print(f'Figure: {out}')


def define_flags() -> None:
  flags.DEFINE_string('bases', 'runs/clm_vs_mlm_lr',
                      'The directory holding the pre-trained bases.')
  flags.DEFINE_string('workdir', 'runs/finetune_methods', 'Where the fine-tunes go.')
  flags.DEFINE_integer('seeds', 3, 'Seeds per reported cell (0 .. seeds-1).')
  flags.DEFINE_bool('report_only', False, 'Only print the tables and draw the figure.')


if __name__ == '__main__':
  define_flags()
  cli.run(main, 'experiments.finetune_study')
