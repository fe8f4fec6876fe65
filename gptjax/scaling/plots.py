r"""Scaling figures from a sweep's records: `python -m gptjax.scaling plots --sweep_dir=runs/x`.

Writes PNGs to --out_dir (default <sweep_dir>/plots):
  loss_vs_compute.png   every run's eval loss against compute, the frontier and the fitted L(C)
  isoflops.png          final loss against N per compute budget, parabolas and their minima
  n_opt.png             N_opt against C with the power-law fit and its bootstrap band
  training_curves.png   eval loss against tokens seen, one line per run
A figure whose fit the sweep cannot support (one budget, too few points) is skipped with a warning
naming what is missing; the rest are still drawn. The fits are also logged, with the holdout check.

Two more figures take plain tables, not sweep records: `plot_coord_check` (muP's coordinate check,
`gptjax.scaling.mup_check`) and `plot_lr_transfer` (final loss against learning rate per width,
`experiments/lr_transfer.py`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import matplotlib
matplotlib.use('Agg')  # files only; no display needed on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from gptjax.scaling import holdout, isoflop, laws, records as records_lib, replicas  # noqa: E402

Rows = Sequence[Mapping[str, Any]]
COLORMAP = 'viridis'


def _by_run(rows: Rows) -> dict[str, list[Mapping[str, Any]]]:
  runs: dict[str, list[Mapping[str, Any]]] = {}
  for row in rows:
    runs.setdefault(row['run'], []).append(row)
  return runs


def _size_colors(rows: Rows, params_key: str) -> tuple[LogNorm, Any]:
  sizes = records_lib.column(rows, params_key)
  norm = LogNorm(sizes.min(), max(sizes.max(), sizes.min() * 1.01))
  return norm, plt.get_cmap(COLORMAP)


def _save(fig: plt.Figure, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def plot_loss_vs_compute(rows: Rows, path: str, *, compute_key: str = 'flops_full',
                         params_key: str = 'params_total', loss_key: str = 'eval_loss') -> str:
  """Each run's curve coloured by size, the frontier of the finished runs (their final evals; a
  mid-schedule eval is not what a run of that length reaches), and L(C) fitted to it."""
  norm, cmap = _size_colors(rows, params_key)
  fig, ax = plt.subplots(figsize=(7, 5))
  for run_rows in _by_run(rows).values():
    c, l = (records_lib.column(run_rows, k) for k in (compute_key, loss_key))
    ax.plot(c, l, color=cmap(norm(run_rows[0][params_key])), alpha=0.6, lw=1)
  compute, loss = replicas.best_per_budget(records_lib.final_records(rows), compute_key, loss_key)
  ax.plot(compute, loss, 'k.', ms=8, label="frontier of finished runs (each budget's best)")
  try:
    fit = laws.fit_power_law_with_floor(compute, loss)
    grid = np.geomspace(compute.min(), compute.max() * 10, 200)
    ax.plot(grid, fit.predict(grid), 'r--',
            label=f'L = {fit.E:.3f} + {fit.A:.3g}·C^-{fit.alpha:.3f}')
  except ValueError as e:
    logging.warning('No L(C) fit on the loss-vs-compute plot: %s', e)
  ax.set(xscale='log', xlabel=f'compute ({compute_key}, FLOPs)', ylabel=loss_key,
         title='Loss vs compute')
  fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=params_key)
  ax.legend()
  return _save(fig, path)


def plot_isoflops(final: Rows, result: isoflop.IsoFLOPResult, path: str, *,
                  params_key: str = 'params_total', loss_key: str = 'eval_loss') -> str:
  """Final loss against N for each budget (every run, and the mean of a size's seeds), with the
  fitted parabola and its minimum."""
  run_n, run_l = records_lib.column(final, params_key), records_lib.column(final, loss_key)
  n, l = result.cells.params, result.cells.loss
  norm = LogNorm(result.budgets.min(), max(result.budgets.max(), result.budgets.min() * 1.01))
  cmap = plt.get_cmap('plasma')
  fig, ax = plt.subplots(figsize=(7, 5))
  for budget, index, coef, n_opt, l_min in zip(result.budgets, result.groups, result.parabolas,
                                               result.n_opt, result.loss_min):
    color = cmap(norm(budget) * 0.85)
    for k in index:
      ax.plot(run_n[result.cells.runs[k]], run_l[result.cells.runs[k]], '.', color=color, ms=3,
              alpha=0.5)
    ax.plot(n[index], l[index], 'o', color=color, ms=4)
    log_grid = np.linspace(np.log(n[index].min()), np.log(n[index].max()), 100)
    ax.plot(np.exp(log_grid), np.polyval(coef, log_grid), '-', color=color, lw=1,
            label=f'C = {budget:.2g}')
    ax.plot(n_opt, l_min, '*', color=color, ms=12, mec='k')
  ax.set(xscale='log', xlabel=params_key, ylabel=f'final {loss_key}',
         title='IsoFLOP curves (stars: parabola minima)')
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_n_opt(result: isoflop.IsoFLOPResult, path: str) -> str:
  """N_opt per budget, the fitted N_opt ∝ C^a extrapolated 10x, and its bootstrap band."""
  grid = np.geomspace(result.budgets.min() / 2, result.budgets.max() * 10, 100)
  fig, ax = plt.subplots(figsize=(7, 5))
  lo_a, hi_a = result.n_exponent_ci
  ax.plot(result.budgets, result.n_opt, 'ko', label='IsoFLOP minima')
  ax.plot(grid, result.predict_n_opt(grid), 'b-',
          label=f'N_opt ∝ C^{result.n_exponent:.3f} [{lo_a:.3f}, {hi_a:.3f}]')
  if len(result.bootstrap):
    lo, hi = result.n_opt_band(grid)
    ax.fill_between(grid, lo, hi, color='b', alpha=0.2,
                    label=f'{100 * result.level:.0f}% bootstrap band')
  ax.set(xscale='log', yscale='log', xlabel='compute C (FLOPs)', ylabel='N_opt (parameters)',
         title='Compute-optimal model size')
  ax.legend()
  return _save(fig, path)


def plot_training_curves(rows: Rows, path: str, *, tokens_key: str = 'tokens_seen',
                         params_key: str = 'params_total',
                         loss_key: str = 'eval_loss') -> str:
  norm, cmap = _size_colors(rows, params_key)
  fig, ax = plt.subplots(figsize=(7, 5))
  for run_rows in _by_run(rows).values():
    ax.plot(records_lib.column(run_rows, tokens_key), records_lib.column(run_rows, loss_key),
            color=cmap(norm(run_rows[0][params_key])), alpha=0.7, lw=1)
  ax.set(xscale='log', xlabel=tokens_key, ylabel=loss_key, title='Training curves')
  fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=params_key)
  return _save(fig, path)


def make_plots(sweep_dir: str, out_dir: str, *, compute_key: str = 'flops_full',
               params_key: str = 'params_total', n_bootstrap: int = 200) -> list[str]:
  """Every figure the sweep supports; returns the paths written."""
  os.makedirs(out_dir, exist_ok=True)
  rows = records_lib.load_sweep(sweep_dir)
  final = records_lib.final_records(rows)
  keys = dict(params_key=params_key)
  written = [
      plot_loss_vs_compute(rows, os.path.join(out_dir, 'loss_vs_compute.png'),
                           compute_key=compute_key, **keys),
      plot_training_curves(rows, os.path.join(out_dir, 'training_curves.png'), **keys),
  ]
  try:
    result = isoflop.isoflop_minima(final, compute_key=compute_key,
                                    n_bootstrap=n_bootstrap, **keys)
  except ValueError as e:
    logging.warning('No IsoFLOP figures: %s', e)
    return written
  lo, hi = result.n_exponent_ci
  logging.info('IsoFLOP: N_opt ∝ C^%.3f [%.3f, %.3f]; D_opt ∝ C^%.3f', result.n_exponent, lo, hi,
               result.d_exponent)
  written += [plot_isoflops(final, result, os.path.join(out_dir, 'isoflops.png'), **keys),
              plot_n_opt(result, os.path.join(out_dir, 'n_opt.png'))]
  try:
    result = holdout.holdout_extrapolation(rows, compute_key=compute_key, **keys)
    logging.info('Holdout at C=%.3g: best loss %.4f, L(C) predicted %.4f (%+.2f%%; NaN without '
                 'an L(C) fit); L(N, D) worst run error %.2f%%', result.budget,
                 result.measured_best_loss, result.power_law_prediction,
                 100 * result.power_law_relative_error, 100 * result.max_run_relative_error)
  except ValueError as e:
    logging.warning('No holdout check: %s', e)
  return written


def plot_coord_check(result: Mapping[str, Mapping[int, Sequence[Mapping[str, float]]]],
                     path: str) -> str:
  """Mean |activation| against width, one panel per (parametrisation, step), one line per layer:
  flat lines are what muP promises (`gptjax.scaling.mup_check`)."""
  names = list(result)
  steps = len(next(iter(result[names[0]].values())))
  fig, axes = plt.subplots(len(names), steps, figsize=(3.2 * steps, 3.0 * len(names)),
                           sharex=True, squeeze=False)
  for row, name in zip(axes, names):
    widths = sorted(result[name])
    layers = list(result[name][widths[0]][0])
    colors = plt.get_cmap(COLORMAP)(np.linspace(0, 0.9, len(layers)))
    for t, ax in enumerate(row):
      for layer, color in zip(layers, colors):
        values = [result[name][w][t][layer] for w in widths]
        ax.plot(widths, values, 'o-', color=color, ms=3, lw=1, label=layer)
      ax.set(xscale='log', yscale='log', title=f'{name}, step {t}')
      ax.set_xticks(widths, [str(w) for w in widths])
      ax.minorticks_off()
    row[0].set_ylabel('mean |activation|')
  for ax in axes[-1]:
    ax.set_xlabel('d_model')
  axes[0][-1].legend(fontsize=6, loc='center left', bbox_to_anchor=(1.0, 0.5))
  return _save(fig, path)


def plot_lr_transfer(losses: Mapping[str, Mapping[int, Mapping[float, float]]], path: str) -> str:
  """Final loss against log2 learning rate, one line per width, one panel per parametrisation;
  a star marks each width's best rate. Under muP the stars should line up vertically."""
  names = list(losses)
  widths = sorted({w for by_width in losses.values() for w in by_width})
  norm = LogNorm(min(widths), max(max(widths), min(widths) * 1.01))
  cmap = plt.get_cmap(COLORMAP)
  fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), sharey=True,
                           squeeze=False)
  for ax, name in zip(axes[0], names):
    for width, by_lr in sorted(losses[name].items()):
      lrs = sorted(by_lr)
      log2_lr, loss = np.log2(lrs), np.array([by_lr[lr] for lr in lrs])
      color = cmap(norm(width) * 0.9)
      ax.plot(log2_lr, loss, 'o-', color=color, ms=3, lw=1, label=f'd_model {width}')
      finite = np.isfinite(loss)
      if finite.any():
        best = np.nanargmin(np.where(finite, loss, np.nan))
        ax.plot(log2_lr[best], loss[best], '*', color=color, ms=12, mec='k')
    ax.set(xlabel='log2 peak learning rate', ylabel='final eval loss', title=name)
    ax.legend(fontsize=8)
  finite_losses = [v for p in losses.values() for b in p.values() for v in b.values()
                   if np.isfinite(v)]
  if finite_losses:  # diverged runs would stretch the axis: show at most 3 nats above the best
    axes[0][0].set_ylim(min(finite_losses) - 0.05, min(max(finite_losses), min(finite_losses) + 3))
  return _save(fig, path)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Called only when run as a script, so importing this module (tests, notebooks, a sweep
  launcher with its own --sweep_dir) defines no global flags."""
  flags.DEFINE_string('sweep_dir', None, 'Directory with one sub-directory (workdir) per run.',
                      required=True)
  flags.DEFINE_string('out_dir', None, 'Where the PNGs go; default <sweep_dir>/plots.')
  flags.DEFINE_string('compute_key', 'flops_full', "'flops_full' (FLOPs spent) | 'flops_kaplan'.")
  flags.DEFINE_string('params_key', 'params_total',
                      "'params_total' (Chinchilla's N) | 'params_non_embedding' (Kaplan's).")
  flags.DEFINE_integer('n_bootstrap', 200, 'Bootstrap refits for the N_opt(C) band.')


def main(argv: Sequence[str]) -> None:
  del argv
  out_dir = FLAGS.out_dir or os.path.join(FLAGS.sweep_dir, 'plots')
  for path in make_plots(FLAGS.sweep_dir, out_dir, compute_key=FLAGS.compute_key,
                         params_key=FLAGS.params_key, n_bootstrap=FLAGS.n_bootstrap):
    logging.info('Wrote %s', path)
