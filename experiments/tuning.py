r"""Per-size hyperparameters for the CPU scaling sweep, measured at its own budgets.

Tuning sweeps run in order, each followed by this command, which reads its finished runs and
writes what it chose into `experiments/sweeps/cpu_tuning.json`, the file `cpu_scaling.py` reads:

  python -m launch.sweep --sweep=experiments/sweeps/cpu_tuning_optimizer.py \
      --workdir=runs/cpu_tuning_optimizer --parallel=2 --nofit
  python -m experiments.tuning optimizer --workdir=runs/cpu_tuning_optimizer
  python -m launch.sweep --sweep=experiments/sweeps/cpu_tuning_lr.py \
      --workdir=runs/cpu_tuning_lr --parallel=2 --nofit
  python -m experiments.tuning lr --workdir=runs/cpu_tuning_lr
  python -m launch.sweep --sweep=experiments/sweeps/cpu_tuning_mup.py \
      --workdir=runs/cpu_tuning_mup --parallel=2 --nofit
  python -m experiments.tuning mup --workdir=runs/cpu_tuning_mup

`optimizer`: AdamW's beta2 and the warmup fraction (Porian et al. 2024 find beta2 = 0.95 harmful
at small batches, and warmup length a cause of the Kaplan/Chinchilla gap), chosen on a grid at
three sizes, each trained at a budget where it sits mid-curve: the pair with the least mean excess
loss over each size's best. `lr`: the peak learning rate of every size of the grid, trained at a
budget near the middle of its budgets, on a grid of factors of 2; the rate is the minimum of a
parabola in log rate through the best grid point and its two neighbours (an edge of the grid is
kept as it is and flagged: the grid should be widened there). `mup`: whether muP's one rate
serves every width at least as well as those per-size SP rates (recorded; the sweep would switch
only if it did).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

import numpy as np
from absl import app, flags

import launch
from gptjax.runs import run_dir
from gptjax.scaling import records

TUNING_FILE = os.path.join(os.path.dirname(__file__), 'sweeps', 'cpu_tuning.json')
STAGES = {'optimizer': 'experiments/sweeps/cpu_tuning_optimizer.py',
          'lr': 'experiments/sweeps/cpu_tuning_lr.py',
          'mup': 'experiments/sweeps/cpu_tuning_mup.py'}


STAGE_KEYS = {'optimizer': ('b2', 'warmup_fraction'), 'lr': ('learning_rate', 'lr_runs'),
              'mup': ('mup',)}


def read_tuning(path: str = TUNING_FILE, stages: Sequence[str] = ()) -> dict[str, Any]:
  """The tuning file's choices; a clear error naming the stage whose choices are missing, of
  `stages` (those the caller needs)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist; run the tuning sweeps (python -m '
                            'experiments.tuning --help says how).')
  with open(path) as f:
    tuning = json.load(f)
  for stage in stages:
    if not all(key in tuning for key in STAGE_KEYS[stage]):
      raise ValueError(f'{path} has no {stage} choices yet; run the {STAGES[stage]} sweep and '
                       f'then python -m experiments.tuning {stage} --workdir=<its workdir>.')
  return tuning


def tuning_member(base, d_model: int, num_heads: int, budget: float, *, learning_rate: float,
                  b2: float, warmup_fraction: float, tag: str) -> launch.Member:
  """One tuning run: the IsoFLOP member of this size and budget (FLOPs spent), with beta2 set and
  `tag` added to its name."""
  size = launch.Size(d_model=d_model, num_layers=2, num_heads=num_heads,
                     learning_rate=learning_rate)
  (member,) = launch.isoflop_members(base, {budget: [size]}, method='full',
                                     warmup_fraction=warmup_fraction, num_evals=2,
                                     checkpoints=1, log_lines=4)
  return launch.Member(f'{member.name}_{tag}', {**member.overrides, 'train.b2': b2},
                       budget=member.budget)


def _finished_runs(sweep_path: str, workdir: str) -> list[dict[str, Any]]:
  """Each finished member's settings and final eval loss; unfinished members are named and left
  out."""
  base, members = launch.load_sweep_file(sweep_path)
  final = {row['run']: row for row in records.final_records(records.load_sweep(workdir))}
  runs, missing = [], []
  for member in members:
    config = launch.resolve(base, member)
    row = final.get(member.name)
    if row is None or row.get('step') != config.train.num_steps:
      missing.append(member.name)
      continue
    runs.append(dict(name=member.name, d_model=config.model.d_model, budget=member.budget,
                     learning_rate=config.train.learning_rate, b2=config.train.b2,
                     warmup_fraction=round(config.train.warmup_steps / config.train.num_steps, 2),
                     steps=config.train.num_steps, loss=float(row[records.EVAL_KEY])))
  if missing:
    print(f'{len(missing)} member(s) not finished, left out: {", ".join(missing)}')
  if not runs:
    raise ValueError(f'No finished member of {sweep_path} under {workdir}; run the sweep first.')
  return runs


def choose_optimizer(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """The (b2, warmup fraction) with the least mean excess loss over each size's best run, among
  the settings that finished at every size."""
  losses: dict[tuple[float, float], dict[int, float]] = {}
  for run in runs:
    losses.setdefault((run['b2'], run['warmup_fraction']), {})[run['d_model']] = run['loss']
  sizes = {run['d_model'] for run in runs}
  complete = {key: by_size for key, by_size in losses.items() if set(by_size) == sizes}
  if not complete:
    raise ValueError('No (b2, warmup) setting finished at every size; rerun the sweep.')
  best = {d: min(by_size[d] for by_size in complete.values()) for d in sizes}
  excess = {key: float(np.mean([by_size[d] - best[d] for d in sizes]))
            for key, by_size in complete.items()}
  (b2, warmup), _ = min(excess.items(), key=lambda item: item[1])
  warmups = sorted({w for _, w in complete})
  edge = len(warmups) > 2 and warmup in (warmups[0], warmups[-1])
  return dict(b2=b2, warmup_fraction=warmup, mean_excess=excess, warmup_at_grid_edge=edge)


def refined_rate(rates: Sequence[float], losses: Sequence[float]) -> tuple[float, bool]:
  """(rate, at_edge): the minimum of a parabola in log rate through the best grid point and its
  neighbours, kept between those neighbours; the best grid point itself at an edge of the grid."""
  order = np.argsort(rates)
  log_r, loss = np.log(np.asarray(rates, float)[order]), np.asarray(losses, float)[order]
  i = int(np.argmin(loss))
  if i == 0 or i == len(loss) - 1:
    return float(np.exp(log_r[i])), True
  c2, c1, _ = np.polyfit(log_r[i - 1:i + 2], loss[i - 1:i + 2], 2)
  x = -c1 / (2 * c2) if c2 > 0 else log_r[i]
  return float(np.exp(np.clip(x, log_r[i - 1], log_r[i + 1]))), False


def choose_rates(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
  rates, edges = {}, []
  for d in sorted({run['d_model'] for run in runs}):
    mine = [run for run in runs if run['d_model'] == d]
    if len(mine) < 3:
      raise ValueError(f'd_model={d} has {len(mine)} finished rates; the parabola needs 3.')
    rate, at_edge = refined_rate([r['learning_rate'] for r in mine], [r['loss'] for r in mine])
    rates[str(d)] = rate
    edges += [d] if at_edge else []
  return dict(learning_rate=rates, rate_at_grid_edge=edges)


def compare_mup(mup_runs: Sequence[dict[str, Any]], sp_runs: Sequence[dict[str, Any]]
                ) -> dict[str, Any]:
  """Per width, muP's best rate and loss against the best SP loss of the rate tuning at the same
  size and budget. muP earns its place on the grid only if one rate is best at every width and
  it is at least as good as SP's tuned rates everywhere."""
  widths = {}
  for d in sorted({run['d_model'] for run in mup_runs}):
    mine = [run for run in mup_runs if run['d_model'] == d]
    best = min(mine, key=lambda run: run['loss'])
    sp = [run['loss'] for run in sp_runs
          if run['d_model'] == d and run['budget'] == best['budget']]
    if not sp:
      raise ValueError(f'The SP rate tuning has no run of d_model={d} at C={best["budget"]:g}; '
                       'rerun the lr stage first.')
    widths[str(d)] = dict(best_rate=best['learning_rate'], loss=best['loss'], sp_loss=min(sp))
  one_rate = len({w['best_rate'] for w in widths.values()}) == 1
  as_good = all(w['loss'] <= w['sp_loss'] for w in widths.values())
  return dict(widths=widths, one_rate=one_rate, as_good=as_good, adopted=one_rate and as_good)


def _print_table(runs: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
  print('  '.join(f'{c:>15}' for c in columns + ('loss',)))
  for run in sorted(runs, key=lambda r: tuple(r[c] for c in columns)):
    print('  '.join(f'{run[c]:>15g}' for c in columns) + f'  {run["loss"]:>15.4f}')


def update_tuning(stage: str, workdir: str, path: str = TUNING_FILE) -> dict[str, Any]:
  runs = _finished_runs(STAGES[stage], workdir)
  tuning = read_tuning(path) if os.path.isfile(path) else {}
  if stage == 'optimizer':
    chosen = choose_optimizer(runs)
    _print_table(runs, ('d_model', 'b2', 'warmup_fraction'))
    print(f"Chosen: b2={chosen['b2']}, warmup {chosen['warmup_fraction']:.0%} of each run's steps")
    if chosen['warmup_at_grid_edge']:
      print('The warmup is at the edge of the grid (widen it there).')
    tuning.update(b2=chosen['b2'], warmup_fraction=chosen['warmup_fraction'],
                  optimizer_runs=runs)
  elif stage == 'mup':
    mup = compare_mup(runs, read_tuning(path, stages=('lr',))['lr_runs'])
    _print_table(runs, ('d_model', 'learning_rate'))
    for d, w in mup['widths'].items():
      print(f"d_model {d}: muP best {w['loss']:.4f} at rate {w['best_rate']:g}; SP tuned best "
            f"{w['sp_loss']:.4f}")
    print(f"One muP rate best at every width: {mup['one_rate']}; at least as good as SP "
          f"everywhere: {mup['as_good']}. " + ('The sweep should use muP.' if mup['adopted'] else
                                               'The sweep stays in SP with per-size rates.'))
    tuning.update(mup={**mup, 'runs': runs})
  else:
    chosen = choose_rates(runs)
    _print_table(runs, ('d_model', 'learning_rate'))
    print('Chosen rates: ' + ', '.join(f'd_model {d}: {r:.3g}'
                                       for d, r in chosen['learning_rate'].items()))
    if chosen['rate_at_grid_edge']:
      print(f"At the edge of the grid (widen it there): d_model {chosen['rate_at_grid_edge']}")
    tuning.update(chosen, lr_runs=runs)
  run_dir.write_atomic(path, json.dumps(tuning, indent=1) + '\n')
  print(f'Wrote {path}.')
  return tuning


def main(argv: Sequence[str]) -> int:
  if len(argv) != 2 or argv[1] not in STAGES:
    raise app.UsageError(f'Usage: python -m experiments.tuning {"|".join(STAGES)} --workdir=DIR')
  try:
    update_tuning(argv[1], flags.FLAGS.workdir)
  except (ValueError, OSError) as e:
    print(f'Error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, "The tuning sweep's workdir.", required=True)
  app.run(main)
