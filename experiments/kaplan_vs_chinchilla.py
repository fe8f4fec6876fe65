r"""Why Kaplan's exponent is not Chinchilla's, on the CPU sweep: the exponent a of N_opt ∝ C^a as
each correction is applied in turn (after Porian et al. 2024, figure 1).

  python -m experiments.kaplan_vs_chinchilla --workdir=runs/kaplan_vs_chinchilla --parallel=2 \
      [--default_sweep_dir=runs/cpu_scaling]

Steps, each adding one correction to the one before:
  1. Kaplan: budgets in Kaplan's C (6N + attention, no readout), non-embedding N, untuned
     (beta2 0.95, warmup 5%, the rate rule at the centre of the tuning grid);
  2. budgets in the FLOPs each run spends (still non-embedding N, untuned);
  3. total N (the runs of step 2, refitted);
  4. the tuned warmup fraction;
  5. the tuned beta2;
  6. per-size tuned learning rates: the default sweep (experiments/sweeps/cpu_scaling.py).
Four more 35-member sweeps (steps 1, 2, 4, 5; about 3 minutes each on 2 cores), run with the
sweep runner, so a rerun skips what finished. Prints the table, writes
`<workdir>/kaplan_vs_chinchilla.json` and the figure `<workdir>/kaplan_vs_chinchilla.png`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from absl import app, flags

from gptjax.runs import run_dir
from gptjax.scaling import exponents, records
from launch import sweep as sweep_runner

VARIANTS = 'experiments/sweeps/kaplan_vs_chinchilla'
DEFAULT_SWEEP = 'experiments/sweeps/cpu_scaling.py'
KAPLAN = ('flops_kaplan', 'params_non_embedding')
SPENT_NON_EMBEDDING = ('flops_full', 'params_non_embedding')
FULL = ('flops_full', 'params_total')
# (what the step adds, its sweep, the C and N it is fitted in)
STEPS = (
    ("Kaplan: Kaplan's C, non-embedding N, untuned", 'kaplan_design', KAPLAN),
    ('+ budgets in FLOPs spent', 'flops_spent', SPENT_NON_EMBEDDING),
    ('+ total N', 'flops_spent', FULL),
    ('+ tuned warmup', 'warmup', FULL),
    ('+ tuned beta2', 'beta2', FULL),
    ('+ per-size learning rates (default)', 'default', FULL),
)


def _sweep_path(variant: str) -> str:
  return DEFAULT_SWEEP if variant == 'default' else os.path.join(VARIANTS, f'{variant}.py')


def run_study(workdir: str, parallel: int, default_sweep_dir: str | None,
              n_bootstrap: int) -> list[dict]:
  directories = {}
  for variant in dict.fromkeys(variant for _, variant, _ in STEPS):
    directory = (default_sweep_dir if variant == 'default' and default_sweep_dir
                 else os.path.join(workdir, variant))
    directories[variant] = directory
    print(f'\n== {variant}: {_sweep_path(variant)} in {directory}', flush=True)
    status = sweep_runner.run_sweep(_sweep_path(variant), directory, parallel=parallel,
                                    fit=False)
    if status != 0:
      raise RuntimeError(f'The {variant} sweep did not finish (status {status}); rerun this '
                         'command to resume it.')
  rows = []
  for label, variant, (compute_key, params_key) in STEPS:
    final = records.final_records(records.load_sweep(directories[variant]))
    found = exponents.view(final, compute_key, params_key, n_bootstrap)
    check = exponents.exponent_check(found)
    rows.append(dict(step=label, sweep=variant, compute_key=compute_key, params_key=params_key,
                     estimates={k: list(v) for k, v in found.items()},
                     agree=None if check is None else check['agree'],
                     runs=len(final)))
  return rows


def print_table(rows: Sequence[dict]) -> None:
  print(f'\n{"step":<44} {"C, N":<34} {"approach 1":>20} {"approach 2":>20} {"approach 3":>20}'
        '  agree')
  for row in rows:
    cells = []
    for name in exponents.APPROACHES:
      a, lo, hi = row['estimates'].get(name, (float('nan'),) * 3)
      cells.append(f'{a:.3f} [{lo:.2f}, {hi:.2f}]')
    keys = f"{row['compute_key']}, {row['params_key']}"
    print(f"{row['step']:<44} {keys:<34} " + ' '.join(f'{c:>20}' for c in cells)
          + f"  {'n/a' if row['agree'] is None else 'yes' if row['agree'] else 'no'}")


def plot(rows: Sequence[dict], path: str) -> str:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(9, 4.5))
  for offset, (name, number) in zip((-0.2, 0.0, 0.2), exponents.APPROACHES.items()):
    xs, ys, errors = [], [], [[], []]
    for i, row in enumerate(rows):
      if name in row['estimates']:
        a, lo, hi = row['estimates'][name]
        xs.append(i + offset)
        ys.append(a)
        errors[0].append(max(a - lo, 0.0))
        errors[1].append(max(hi - a, 0.0))
    ax.errorbar(xs, ys, yerr=errors, fmt='o', capsize=3, label=f'approach {number}')
  ax.axhline(0.5, color='grey', lw=0.8, ls='--', label='Chinchilla (≈0.5)')
  ax.axhline(0.73, color='grey', lw=0.8, ls=':', label='Kaplan (0.73)')
  ax.set_xticks(range(len(rows)), [row['step'] for row in rows], rotation=20, ha='right',
                fontsize=8)
  ax.set(ylabel='a in N_opt ∝ C^a (95% interval)', title='The CPU sweep, one correction at a time')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  FLAGS = flags.FLAGS
  try:
    rows = run_study(FLAGS.workdir, FLAGS.parallel, FLAGS.default_sweep_dir, FLAGS.n_bootstrap)
  except (ValueError, OSError, RuntimeError) as e:
    print(f'Error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  print_table(rows)
  path = run_dir.write_atomic(os.path.join(FLAGS.workdir, 'kaplan_vs_chinchilla.json'),
                              json.dumps(rows, indent=1))
  figure = plot(rows, os.path.join(FLAGS.workdir, 'kaplan_vs_chinchilla.png'))
  print(f'Numbers in {path}; figure {figure}.')
  return 0


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Where the study sweeps train (one directory each).',
                      required=True)
  flags.DEFINE_integer('parallel', 2, 'Members trained at once.')
  flags.DEFINE_string('default_sweep_dir', None, 'An already trained default sweep '
                      '(experiments/sweeps/cpu_scaling.py) to reuse for the last step.')
  flags.DEFINE_integer('n_bootstrap', 100, 'Bootstrap refits for each interval.')
  app.run(main)
