r"""The table and figure of the objective study (experiments/sweeps/clm_vs_mlm.py).

  python -m experiments.clm_vs_mlm --workdir=runs/clm_vs_mlm [--out=runs/clm_vs_mlm/plots/...png]

Reads each member's config (objective, d_model) and its eval records, prints per size and
objective the final eval loss on the predicted tokens, its top-1 accuracy, the validation unigram
entropy both must beat, and the training compute; the figure plots eval loss and accuracy against
compute (Kaplan's C), one line per objective. A member without its final eval is left out.
"""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from absl import app, flags  # noqa: E402

from gptjax.runs import cli, run_dir
from gptjax.scaling import records  # noqa: E402

# {objective: {d_model: [eval records, in step order]}}
Curves = dict[str, dict[int, list[dict]]]


def collect(workdir: str) -> Curves:
  curves: Curves = {}
  for member_dir in records.run_dirs(workdir):
    config = run_dir.read_config(member_dir)
    evals = records.eval_records(run_dir.read_metrics(member_dir))
    if evals and evals[-1]['step'] == config.train.num_steps:
      curves.setdefault(config.train.objective, {})[config.model.d_model] = evals
  if not curves:
    raise ValueError(f'No finished members under {workdir!r}; run the sweep first.')
  return curves


def format_report(curves: Curves) -> str:
  lines = [f'{"objective":<9} {"d_model":>7} {"C (Kaplan)":>11} {"eval loss":>9} '
           f'{"accuracy":>8}']
  for objective, by_width in sorted(curves.items()):
    for width, evals in sorted(by_width.items()):
      last = evals[-1]
      lines.append(f'{objective:<9} {width:>7} {last["flops_kaplan"]:>11.3g} '
                   f'{last[records.EVAL_KEY]:>9.4f} {last["eval_accuracy"]:>8.3f}')
  return '\n'.join(lines)


def plot(curves: Curves, path: str) -> None:
  figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
  for objective, by_width in sorted(curves.items()):
    style = '-' if objective == 'clm' else '--'
    for width, evals in sorted(by_width.items()):
      compute = [r['flops_kaplan'] for r in evals]
      label = f'{objective} d_model={width}'
      loss_axis.plot(compute, [r[records.EVAL_KEY] for r in evals], style, marker='o', label=label)
      accuracy_axis.plot(compute, [r['eval_accuracy'] for r in evals], style, marker='o',
                         label=label)
  for axis, name in ((loss_axis, 'eval loss on predicted tokens (nats)'),
                     (accuracy_axis, 'top-1 accuracy on predicted tokens')):
    axis.set_xscale('log')
    axis.set_xlabel('training compute C (FLOPs, Kaplan)')
    axis.set_ylabel(name)
    axis.grid(alpha=0.3)
  loss_axis.legend(fontsize=7)
  figure.suptitle('Next-token (clm, solid) vs masked-token (mlm, dashed) prediction')
  figure.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  figure.savefig(path, dpi=120)
  plt.close(figure)


FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'The sweep directory.', required=True)
  flags.DEFINE_string('out', None, 'The figure; default <workdir>/plots/clm_vs_mlm.png.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  curves = collect(FLAGS.workdir)
  print(format_report(curves))
  out = FLAGS.out or os.path.join(FLAGS.workdir, 'plots', 'clm_vs_mlm.png')
  plot(curves, out)
  print(f'Figure: {out}')


if __name__ == '__main__':
  define_flags()
  cli.run(main, 'experiments.clm_vs_mlm')
