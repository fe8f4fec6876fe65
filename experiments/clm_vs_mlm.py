r"""The objective study (experiments/sweeps/clm_vs_mlm.py): its learning rates, then its table.

  python -m experiments.clm_vs_mlm rates --workdir=runs/clm_vs_mlm_lr
  python -m experiments.clm_vs_mlm table --workdir=runs/clm_vs_mlm [--out=...png]

`rates` reads the rate sweep's finished runs and writes each (objective, d_model)'s rate to
`experiments/sweeps/clm_vs_mlm_rates.json`: the minimum of a parabola in log rate through the best
rate and its neighbours (`experiments.tuning.refined_rate`). `table` prints, per size and objective,
the final eval loss on the predicted tokens and its top-1 accuracy as mean ± standard error over
the seeds, with the training compute (FLOPs spent), and plots both against compute. A member
without its final eval is left out (and the seed count says so).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import tuning  # noqa: E402
from experiments.sweeps import clm_vs_mlm as sweep  # noqa: E402
from gptjax.runs import run_dir, seeds  # noqa: E402
from gptjax.scaling import records  # noqa: E402

# {(objective, d_model): [(config, eval records in step order)] of its finished members}
Cells = dict[tuple[str, int], list[tuple[object, list[dict]]]]


def collect(workdir: str) -> Cells:
  cells: Cells = {}
  for member_dir in records.run_dirs(workdir):
    config = run_dir.read_config(member_dir)
    evals = records.eval_records(run_dir.read_metrics(member_dir))
    if evals and evals[-1]['step'] == config.train.num_steps:
      key = (config.train.objective, config.model.d_model)
      cells.setdefault(key, []).append((config, evals))
  if not cells:
    raise ValueError(f'No finished members under {workdir!r}; run the sweep first.')
  return cells


def choose_rates(cells: Cells) -> dict[str, dict[str, float]]:
  rates: dict[str, dict[str, float]] = {}
  for (objective, width), runs in sorted(cells.items()):
    if len(runs) < 3:
      raise ValueError(f'{objective} d_model={width} has {len(runs)} finished rates; the '
                       'parabola needs 3. Rerun the rate sweep.')
    rate, at_edge = tuning.refined_rate([c.train.learning_rate for c, _ in runs],
                                        [e[-1][records.EVAL_KEY] for _, e in runs])
    rates.setdefault(objective, {})[str(width)] = rate
    print(f'{objective} d_model={width}: rate {rate:.3g}'
          + ('  (at the edge of the grid: widen it there)' if at_edge else ''))
  return rates


def summarise(cells: Cells) -> dict[tuple[str, int], dict]:
  out = {}
  for key, runs in sorted(cells.items()):
    finals = [evals[-1] for _, evals in runs]
    chosen = tuple(config.seed for config, _ in runs)
    out[key] = dict(loss=seeds.SeedSummary(tuple(r[records.EVAL_KEY] for r in finals), chosen),
                    accuracy=seeds.SeedSummary(tuple(r['eval_accuracy'] for r in finals), chosen),
                    compute=finals[0]['flops_full'], rate=runs[0][0].train.learning_rate)
  return out


def format_report(summary: dict[tuple[str, int], dict]) -> str:
  lines = [f'{"objective":<9} {"d_model":>7} {"rate":>8} {"C (spent)":>10} '
           f'{"eval loss":>28} {"accuracy":>28}']
  for (objective, width), cell in summary.items():
    lines.append(f'{objective:<9} {width:>7} {cell["rate"]:>8.3g} {cell["compute"]:>10.3g} '
                 f'{cell["loss"].format(4):>28} {cell["accuracy"].format(3):>28}')
  return '\n'.join(lines)


def plot(cells: Cells, path: str) -> None:
  figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
  for (objective, width), runs in sorted(cells.items()):
    style = '-' if objective == 'clm' else '--'
    evals = [e for _, e in runs]
    compute = [r['flops_full'] for r in evals[0]]
    for axis, key in ((loss_axis, records.EVAL_KEY), (accuracy_axis, 'eval_accuracy')):
      summaries = [seeds.SeedSummary(tuple(e[i][key] for e in evals), ())
                   for i in range(len(compute))]
      axis.errorbar(compute, [s.mean for s in summaries], yerr=[s.sem for s in summaries],
                    fmt=style, marker='o', capsize=2, label=f'{objective} d_model={width}')
  for axis, name in ((loss_axis, 'eval loss on predicted tokens (nats)'),
                     (accuracy_axis, 'top-1 accuracy on predicted tokens')):
    axis.set_xscale('log')
    axis.set_xlabel('training compute C (FLOPs spent)')
    axis.set_ylabel(name + ', mean ± s.e. over seeds')
    axis.grid(alpha=0.3)
  loss_axis.legend(fontsize=7)
  figure.suptitle('Next-token (clm, solid) vs masked-token (mlm, dashed) prediction')
  figure.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  figure.savefig(path, dpi=120)
  plt.close(figure)


FLAGS = flags.FLAGS
COMMANDS = ('rates', 'table')


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'The sweep directory.', required=True)
  flags.DEFINE_string('out', None, 'table: the figure; default <workdir>/plots/clm_vs_mlm.png.')


def main(argv: Sequence[str]) -> int:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'Usage: python -m experiments.clm_vs_mlm {"|".join(COMMANDS)} '
                         '--workdir=DIR')
  try:
    cells = collect(FLAGS.workdir)
    if argv[1] == 'rates':
      path = run_dir.write_atomic(sweep.RATES_FILE, json.dumps(choose_rates(cells), indent=1)
                                  + '\n')
      print(f'Wrote {path}.')
      return 0
  except (ValueError, OSError) as e:
    print(f'Error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  print(format_report(summarise(cells)))
  out = FLAGS.out or os.path.join(FLAGS.workdir, 'plots', 'clm_vs_mlm.png')
  plot(cells, out)
  print(f'Figure: {out}')
  return 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
