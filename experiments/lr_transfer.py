r"""The table and figure of a learning-rate transfer sweep (experiments/sweeps/mup_lr_transfer.py).

  python -m experiments.lr_transfer --workdir=runs/mup_lr [--out=runs/mup_lr/plots/lr_transfer.png]

Reads each member's config (parametrisation, d_model, peak learning rate, seed) and its final eval
loss, prints the mean over seeds of every (width, log2 learning rate) per parametrisation, and
each width's best log2 rate: the grid's argmin of the means and, between grid points, the vertex of
a parabola through the argmin and its two neighbours, with a 95% bootstrap interval of that vertex
over the seeds (each resample draws whole seeds, every rate's run of a drawn seed together). A
member without its final eval (diverged, failed or unfinished) is left out, and a rate missing at
every seed is shown as '-'. The figure is the mean final loss against log2 rate, one line per
width.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from absl import app, flags

from gptjax.runs import run_dir
from gptjax.scaling import plots, records

# {parametrization: {d_model: {learning_rate: {seed: final eval loss}}}}
Losses = dict[str, dict[int, dict[float, dict[int, float]]]]
LEVEL = 0.95


def collect(workdir: str) -> Losses:
  losses: Losses = {}
  for member_dir in records.run_dirs(workdir):
    config = run_dir.read_config(member_dir)
    evals = records.eval_records(run_dir.read_metrics(member_dir))
    if not evals or evals[-1]['step'] != config.train.num_steps:
      continue
    by_lr = losses.setdefault(config.model.parametrization, {}).setdefault(
        config.model.d_model, {})
    by_lr.setdefault(config.train.learning_rate, {})[config.seed] = (
        float(evals[-1][records.EVAL_KEY]))
  if not losses:
    raise ValueError(f'No finished members under {workdir!r}; run the sweep first.')
  return losses


def best_log2_lr(by_lr: dict[float, float]) -> tuple[float, float]:
  """(grid argmin, parabola vertex) of the loss in log2 learning rate."""
  log2_lrs = sorted(math.log2(lr) for lr in by_lr)
  loss = np.array([by_lr[2.0**k] for k in log2_lrs])
  i = int(np.argmin(loss))
  if 0 < i < len(loss) - 1 and log2_lrs[i + 1] - log2_lrs[i - 1] == 2:
    a, b, _ = np.polyfit(log2_lrs[i - 1:i + 2], loss[i - 1:i + 2], 2)
    return log2_lrs[i], -b / (2 * a)
  return log2_lrs[i], float(log2_lrs[i])


def means(losses: Losses) -> dict[str, dict[int, dict[float, float]]]:
  """The mean over seeds of each (parametrisation, width, rate)."""
  return {name: {width: {lr: float(np.mean(list(by_seed.values())))
                         for lr, by_seed in by_lr.items()}
                 for width, by_lr in by_width.items()}
          for name, by_width in losses.items()}


def best_interval(by_lr: dict[float, dict[int, float]], n_resamples: int = 1000,
                  seed: int = 0) -> tuple[float, float]:
  """The `LEVEL` bootstrap interval of the best log2 rate's parabola vertex over whole seeds;
  (nan, nan) with fewer than 2 seeds run at every rate."""
  seeds = sorted(set.intersection(*(set(by_seed) for by_seed in by_lr.values())))
  if len(seeds) < 2:
    return float('nan'), float('nan')
  rng = np.random.default_rng(seed)
  vertices = []
  for _ in range(n_resamples):
    drawn = rng.choice(seeds, len(seeds))
    vertices.append(best_log2_lr({lr: float(np.mean([by_seed[s] for s in drawn]))
                                  for lr, by_seed in by_lr.items()})[1])
  tail = 50 * (1 - LEVEL)
  lo, hi = np.percentile(vertices, [tail, 100 - tail])
  return float(lo), float(hi)


def format_report(losses: Losses) -> str:
  lines = []
  mean_losses = means(losses)
  for name, by_width in mean_losses.items():
    log2_lrs = sorted({round(math.log2(lr)) for by_lr in by_width.values() for lr in by_lr})
    seeds = sorted({s for by_lr in losses[name].values() for by_seed in by_lr.values()
                    for s in by_seed})
    lines.append(f'\n{name}: final eval loss per width (rows) and log2 peak learning rate, mean '
                 f'over {len(seeds)} seed(s)')
    lines.append(f'{"d_model":>7} ' + ''.join(f'{k:>7}' for k in log2_lrs)
                 + f'   best (interpolated) [{100 * LEVEL:.0f}% over seeds]  loss there ± s.e.')
    for width, by_lr in sorted(by_width.items()):
      cells = ''.join(f'{by_lr[2.0**k]:7.3f}' if 2.0**k in by_lr else f'{"-":>7}'
                      for k in log2_lrs)
      grid, vertex = best_log2_lr(by_lr)
      lo, hi = best_interval(losses[name][width])
      at_best = list(losses[name][width][2.0**grid].values())
      sem = np.std(at_best, ddof=1) / math.sqrt(len(at_best)) if len(at_best) > 1 else math.nan
      lines.append(f'{width:>7} {cells}   {grid:>4.0f} ({vertex:.2f}) [{lo:.2f}, {hi:.2f}]  '
                   f'{by_lr[2.0**grid]:.3f} ± {sem:.3f}')
    grids = [best_log2_lr(by_lr)[0] for _, by_lr in sorted(by_width.items())]
    lines.append(f'  best log2 learning rate moves by {max(grids) - min(grids):.0f} factor(s) of 2 '
                 f'from d_model {min(by_width)} to {max(by_width)}')
  return '\n'.join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'The sweep directory.', required=True)
  flags.DEFINE_string('out', None, 'The figure; default <workdir>/plots/lr_transfer.png.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  losses = collect(FLAGS.workdir)
  print(format_report(losses))
  out = FLAGS.out or os.path.join(FLAGS.workdir, 'plots', 'lr_transfer.png')
  os.makedirs(os.path.dirname(out), exist_ok=True)
  print('Wrote', plots.plot_lr_transfer(means(losses), out))


if __name__ == '__main__':
  define_flags()
  app.run(main)
