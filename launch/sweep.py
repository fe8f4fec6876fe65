r"""Runs a sweep locally, then fits and plots its scaling laws.

  python -m launch.sweep --sweep=experiments/sweeps/cpu_scaling.py --workdir=runs/cpu_scaling \
      [--parallel=N] [--dry_run] [--commands] [--only=name1,name2] [--fit_only]

Each member trains in `workdir/<member>` as its own process, `python -m gptjax.main
--config=launch/__init__.py:<sweep file> --config.x=y ...` (`launch.get_config` hands the sweep's
base config to `gptjax.main`): a fresh JAX per run, and a crash, OOM or NaN in one member cannot
take the others down. Its output goes to `workdir/<member>/log.txt`.

Rerunning the command skips finished members (final step reached, final eval recorded) and resumes
unfinished ones from their checkpoints. Ctrl-C stops the running members after they save a
checkpoint. Then the fits run on the finished members: the L(C) frontier power law, IsoFLOP minima
(Chinchilla approach 2), L(N, D) with bootstrap intervals (approach 3), the holdout check of the
largest budget, and the compute-optimal N and D at the largest budget and 10x and 100x it. Figures
go to `workdir/plots`, the numbers to `workdir/fit/fit.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from typing import Any, Sequence

import ml_collections
import numpy as np
import scipy.optimize
from absl import app, flags, logging

import launch
from experiments import plot_scaling
from gptjax import records, scaling

LOG_FILE = 'log.txt'
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROGRESS = re.compile(r'\] (step (\d+)/(\d+) \|.*)$')
_TAIL_LINES = 15
_POLL_S = 0.5
_STOP_GRACE_S = 120  # a member given SIGTERM saves a checkpoint first; give it time to


def _flag_value(value: Any) -> str:
  return repr(value) if isinstance(value, float) else str(value)


def member_command(sweep_path: str, member: launch.Member, member_dir: str) -> list[str]:
  config_file = os.path.relpath(launch.__file__)  # its get_config(sweep) is the sweep's base
  return [sys.executable, '-m', 'gptjax.main', f'--config={config_file}:{sweep_path}',
          f'--workdir={member_dir}',
          *(f'--config.{key}={_flag_value(value)}' for key, value in member.overrides.items())]


# ---------------------------------------------------------------- where each member stands


@dataclasses.dataclass(frozen=True)
class Status:
  state: str  # 'new' | 'partial' | 'finished' | 'stale'
  step: int = 0  # the last step with a record
  eval_loss: float | None = None  # the latest eval
  detail: str = ''


# Fields that change how a run reports, not what it trains; `vocab_size` is filled in from the
# tokenizer by the train loop. A difference elsewhere makes a member's workdir stale.
_NOT_EXPERIMENT = ('train.log_every', 'train.eval_every', 'train.checkpoint_every',
                   'train.keep_checkpoints', 'train.async_checkpoints', 'model.vocab_size')


def _flat(values: Any, prefix: str = '') -> dict[str, Any]:
  if not isinstance(values, dict) or not values:
    return {prefix: values}
  flat = {}
  for name, child in values.items():
    flat.update(_flat(child, f'{prefix}.{name}' if prefix else name))
  return flat


def config_differences(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """'key: saved -> intended' for every experiment field where a saved config.json differs."""
  intended = _flat(json.loads(config.to_json_best_effort()))  # tuples become lists, as saved
  saved = _flat(saved)
  return [f'{key}: {saved.get(key)!r} -> {intended.get(key)!r}'
          for key in sorted(set(intended) | set(saved))
          if key not in _NOT_EXPERIMENT and saved.get(key) != intended.get(key)]


def member_status(member_dir: str, config: ml_collections.ConfigDict) -> Status:
  """Finished means a record at the final step with an eval loss. Stale means the workdir was made
  with another config than the member now has: resuming or fitting it would mix two experiments."""
  saved = records.load_config(member_dir) if os.path.isdir(member_dir) else {}
  differences = config_differences(saved, config) if saved else []
  if differences:
    more = f' and {len(differences) - 2} more' if len(differences) > 2 else ''
    return Status('stale', detail='; '.join(differences[:2]) + more)
  if not os.path.exists(os.path.join(member_dir, records.METRICS_FILE)):
    return Status('partial' if saved else 'new')
  rows = records.load_run(member_dir)
  evals = records.eval_records(rows)
  step = max((row.get('step', 0) for row in rows), default=0)
  last_eval = evals[-1][records.EVAL_KEY] if evals else None
  done = any(row.get('step') == config.train.num_steps for row in evals)
  return Status('finished' if done else 'partial', step, last_eval)


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'


def format_table(sweep: Sequence[tuple[launch.Member, launch.Plan, Status]]) -> str:
  method = sweep[0][1].method
  n_name = 'N (non-emb)' if method == 'kaplan' else 'N (total)'
  width = max(len(member.name) for member, _, _ in sweep)
  lines = [f'{"member":<{width}} {"d_model":>7} {"layers":>6} {"heads":>5} {n_name:>13} '
           f'{"tokens":>14} {"steps":>7} {"lr":>7} {"C target":>9} {f"C {method}":>9}  status']
  for member, p, status in sweep:
    target = f'{member.budget:.3g}' if member.budget else '-'
    state = status.state + (f' ({status.detail})' if status.detail else '')
    if status.state == 'partial' and status.step:
      state = f'partial (step {status.step})'
    lines.append(f'{member.name:<{width}} {p.d_model:>7} {p.num_layers:>6} {p.num_heads:>5} '
                 f'{p.params:>13,} {p.tokens:>14,} {p.steps:>7} {p.learning_rate:>7.2g} '
                 f'{target:>9} {p.flops:>9.3g}  {state}')
  total = sum(p.flops for _, p, _ in sweep)
  lines.append(f'{len(sweep)} members, {total:.3g} FLOPs ({method}) in all.')
  return '\n'.join(lines)


# ---------------------------------------------------------------- running members


@dataclasses.dataclass
class _Job:
  member: launch.Member
  config: ml_collections.ConfigDict
  plan: launch.Plan
  directory: str
  start_step: int  # where this session starts it (approximately: the last record's step)
  state: str = 'waiting'  # 'waiting' | 'running' | 'ended'
  process: subprocess.Popen | None = None
  log_offset: int = 0  # where this attempt's output starts in log.txt
  read_offset: int = 0
  started: float = 0.0
  first: tuple[float, int] | None = None  # (time, step) of its first progress line
  last: tuple[float, int] | None = None  # and of its latest

  def flops(self, steps: float) -> float:
    return self.plan.flops * steps / self.plan.steps


def _start(job: _Job, sweep_path: str, env: dict[str, str]) -> None:
  os.makedirs(job.directory, exist_ok=True)
  command = member_command(sweep_path, job.member, job.directory)
  log_path = os.path.join(job.directory, LOG_FILE)
  with open(log_path, 'a') as log:
    log.write(f'==== {time.strftime("%Y-%m-%d %H:%M:%S")} {shlex.join(command)}\n')
    job.log_offset = job.read_offset = log.tell()
    # A session of its own: Ctrl-C reaches only the runner, which then stops members with SIGTERM
    # so that they save a checkpoint instead of dying mid-step.
    job.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
  job.started = time.monotonic()
  job.state = 'running'


def _new_lines(job: _Job) -> list[str]:
  with open(os.path.join(job.directory, LOG_FILE), errors='replace') as log:
    log.seek(job.read_offset)
    text = log.read()
  complete = text[:text.rfind('\n') + 1]
  job.read_offset += len(complete.encode(errors='replace'))
  return complete.splitlines()


def _tail(job: _Job) -> str:
  with open(os.path.join(job.directory, LOG_FILE), errors='replace') as log:
    log.seek(job.log_offset)
    lines = log.read().splitlines()[-_TAIL_LINES:]
  return '\n'.join('    ' + line for line in lines)


class _Board:
  """Counts, and the sweep's ETA from a time model fitted to the progress lines seen so far.

  A step costs `per_step` seconds (dispatch, input pipeline: what the tiny models of a CPU sweep
  are bound by) plus `per_flop` seconds per FLOP (what large models are bound by), and a member
  spends `startup` seconds before its first line (JAX import, data, compilation). FLOPs alone, or
  steps alone, misjudged the CPU sweep's remaining time by 2-3x.
  """

  def __init__(self, jobs: Sequence[_Job], total: int, finished_before: int, parallel: int):
    self.jobs, self.total, self.finished, self.parallel = jobs, total, finished_before, parallel
    self.start = time.monotonic()

  def eta(self) -> float | None:
    timed = [job for job in self.jobs if job.first and job.last[0] > job.first[0]]
    if not timed:
      return None
    steps = np.array([job.last[1] - job.first[1] for job in timed], np.float64)
    work_JxC = np.stack([steps, [job.flops(s) for job, s in zip(timed, steps)]], axis=1)
    scale_C = work_JxC.max(axis=0)
    seconds = np.array([job.last[0] - job.first[0] for job in timed])
    per_step, per_flop = scipy.optimize.nnls(work_JxC / scale_C, seconds)[0] / scale_C

    def cost(job: _Job, steps: float) -> float:
      return per_step * steps + per_flop * job.flops(steps)

    startup = max(0.0, float(np.mean([job.first[0] - job.started - cost(job, job.first[1] -
                                                                        job.start_step)
                                       for job in timed])))
    left = [job for job in self.jobs if job.state != 'ended']
    seconds_left = sum(cost(job, job.plan.steps - (job.last[1] if job.last else job.start_step))
                       + (startup if job.state == 'waiting' else 0.0) for job in left)
    return seconds_left / max(min(self.parallel, len(left)), 1)

  def prefix(self) -> str:
    eta = self.eta()
    if eta is None:
      return f'[{self.finished}/{self.total} done, ETA ?]'
    elapsed = time.monotonic() - self.start
    return (f'[{self.finished}/{self.total} done, {100 * elapsed / (elapsed + eta):3.0f}% ETA '
            f'{_duration(eta)}]')


def _progress(job: _Job, board: _Board) -> None:
  for line in _new_lines(job):
    match = _PROGRESS.search(line)
    if match:
      job.last = (time.monotonic(), int(match.group(2)))
      job.first = job.first or job.last
      print(f'{board.prefix()} {job.member.name}: {match.group(1)}', flush=True)


def _ended(job: _Job, board: _Board, code: int) -> str | None:
  """Reports a member that exited; returns why it failed, or None if it finished."""
  job.state = 'ended'
  status = member_status(job.directory, job.config)
  took = _duration(time.monotonic() - job.started)
  if code == 0 and status.state == 'finished':
    board.finished += 1
    print(f'{board.prefix()} finished {job.member.name}: eval_loss {status.eval_loss:.4f} '
          f'at C={job.plan.flops:.3g} in {took}', flush=True)
    return None
  why = (f'exited with status {code}' if code else
         f'exited at step {status.step} of {job.plan.steps} without an error')
  print(f'{board.prefix()} FAILED {job.member.name}: {why} after {took}; the end of '
        f'{job.directory}/{LOG_FILE}:\n{_tail(job)}', flush=True)
  return why


def run_jobs(jobs: Sequence[_Job], sweep_path: str, *, parallel: int, total: int,
             finished_before: int) -> dict[str, str]:
  """Trains the jobs, `parallel` at a time; returns {member: why it failed} for those that did."""
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [_ROOT, env.get('PYTHONPATH')]))
  if parallel > 1:  # several JAX processes on one GPU must not each grab most of its memory
    env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  board = _Board(jobs, total, finished_before, parallel)
  waiting, running, failures = list(jobs), [], {}
  try:
    while waiting or running:
      while waiting and len(running) < parallel:
        job = waiting.pop(0)
        _start(job, sweep_path, env)
        running.append(job)
        print(f'{board.prefix()} started {job.member.name} ({job.plan.steps} steps, '
              f'C={job.plan.flops:.3g}); log: {job.directory}/{LOG_FILE}', flush=True)
      time.sleep(_POLL_S)
      for job in list(running):
        _progress(job, board)
        code = job.process.poll()
        if code is not None:
          running.remove(job)
          why = _ended(job, board, code)
          if why:
            failures[job.member.name] = why
  except KeyboardInterrupt:
    _stop(running)
    raise
  return failures


def _stop(running: Sequence[_Job]) -> None:
  print(f'\nInterrupted: stopping {len(running)} running member(s); each saves a checkpoint '
        'first. Rerun the same command to resume.', flush=True)
  for job in running:
    job.process.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + _STOP_GRACE_S
  for job in running:
    try:
      job.process.wait(max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
      job.process.kill()


# ---------------------------------------------------------------- fits, allocation, figures

FIT_DIR, PLOTS_DIR = 'fit', 'plots'
_SCALE_UPS = (1, 10, 100)


def _snapshot(workdir: str, finished: Sequence[str]) -> str:
  """Copies the finished members' metrics files to `workdir/fit/records/<member>/`.

  The fits and `plot_scaling.make_plots` both read this directory, so the figures show exactly what
  was fitted, and a half-trained member's last eval never poses as a final IsoFLOP point.
  """
  target = os.path.join(workdir, FIT_DIR, 'records')
  shutil.rmtree(target, ignore_errors=True)
  for name in finished:
    os.makedirs(os.path.join(target, name))
    shutil.copy(os.path.join(workdir, name, records.METRICS_FILE),
                os.path.join(target, name, records.METRICS_FILE))
  return target


def _count(x: float) -> str:
  return f'{x:,.0f}' if x < 1e12 else f'{x:.3g}'


def _interval(fit: Any, name: str) -> str:
  lo, hi = fit.intervals.get(name, (float('nan'),) * 2)
  return f'[{lo:.4g}, {hi:.4g}]'


def _fit_power_law(rows, final, keys, n_bootstrap) -> dict[str, Any]:
  del final, n_bootstrap
  frontier = scaling.compute_frontier(records.column(rows, keys['compute_key']),
                                      records.column(rows, records.EVAL_KEY))
  law = scaling.fit_power_law_with_floor(frontier.compute, frontier.loss)
  print(f'L(C) on the frontier ({len(frontier.loss)} of {len(rows)} eval points): '
        f'L = {law.E:.4f} + {law.A:.4g}·C^-{law.alpha:.4f}')
  if law.E < 1e-6 * frontier.loss.min():
    print('  The floor E sits at its bound 0: over this range the loss falls at least as fast as '
          'a pure power law, so E is not measured; larger budgets would pin it.')
  return {'law': law, 'E': law.E, 'A': law.A, 'alpha': law.alpha}


def _fit_isoflop(rows, final, keys, n_bootstrap) -> dict[str, Any]:
  del rows
  result = scaling.isoflop_minima(final, n_bootstrap=n_bootstrap, **keys)
  print('IsoFLOP minima (Chinchilla approach 2; parabola in log N per budget):')
  sizes = records.column(final, keys['params_key'])
  outside = []
  for c, n, d, l, index in zip(result.budgets, result.n_opt, result.d_opt, result.loss_min,
                               result.groups):
    lo, hi = sizes[index].min(), sizes[index].max()
    where = '' if lo <= n <= hi else f'  <- outside the sizes trained, N in [{lo:,.0f}, {hi:,.0f}]'
    print(f'  C={c:.3g}: N_opt={_count(n)}  D_opt={_count(d)}  D/N={d / n:.3g}  L_min={l:.4f}'
          f'{where}')
    outside += [f'{c:.3g}'] if where else []
  if outside:
    print(f'  The minima at C={", ".join(outside)} are extrapolated, not measured: add model sizes '
          'on the side of the minimum so each IsoFLOP curve turns up on both ends.')
  lo, hi = result.n_exponent_ci
  print(f'  N_opt ∝ C^{result.n_exponent:.3f} [{lo:.3f}, {hi:.3f}], D_opt ∝ C^'
        f'{result.d_exponent:.3f} ({100 * result.level:.0f}% bootstrap over runs)')
  return {'result': result, 'budgets': result.budgets.tolist(), 'n_opt': result.n_opt.tolist(),
          'd_opt': result.d_opt.tolist(), 'loss_min': result.loss_min.tolist(),
          'n_exponent': result.n_exponent, 'n_exponent_ci': [lo, hi]}


def _fit_chinchilla(rows, final, keys, n_bootstrap) -> dict[str, Any]:
  del rows
  law = scaling.fit_chinchilla(records.column(final, keys['params_key']),
                               records.column(final, 'tokens_seen'),
                               records.column(final, records.EVAL_KEY), n_bootstrap=n_bootstrap)
  print(f'L(N, D) (approach 3, final evals): L = {law.E:.4f} + {law.A:.4g}/N^{law.alpha:.4f} + '
        f'{law.B:.4g}/D^{law.beta:.4f}')
  if law.intervals:
    print('  95% bootstrap: ' + ', '.join(f'{name} {_interval(law, name)}'
                                         for name in scaling.CHINCHILLA_PARAMS))
  print(f'  N_opt ∝ C^{law.n_exponent:.3f} {_interval(law, "n_exponent")}, D_opt ∝ C^'
        f'{law.d_exponent:.3f} {_interval(law, "d_exponent")}')
  return {'law': law, **{name: getattr(law, name) for name in scaling.CHINCHILLA_PARAMS},
          'n_exponent': law.n_exponent, 'intervals': dict(law.intervals)}


def _fit_holdout(rows, final, keys, n_bootstrap) -> dict[str, Any]:
  """Fits both laws without any record of the largest budget's members, then predicts them.

  Like `scaling.holdout_extrapolation`, except that L(C) is fitted to the frontier of every eval of
  the other members (as the main L(C) fit is), not only their final ones: with 3-4 budgets the final
  evals alone leave too few frontier points for a 3-parameter law.
  """
  del n_bootstrap
  compute = records.column(final, keys['compute_key'])
  groups = scaling.group_budgets(compute)
  if len(groups) < 3:
    raise ValueError(f'Holding out one budget needs at least 3 budgets, found {len(groups)}; '
                     'add compute budgets to the sweep.')
  held = [final[i] for i in groups[-1]]
  held_runs = {row['run'] for row in held}
  rest_rows = [row for row in rows if row['run'] not in held_runs]
  rest_final = [row for row in final if row['run'] not in held_runs]
  frontier = scaling.compute_frontier(records.column(rest_rows, keys['compute_key']),
                                      records.column(rest_rows, records.EVAL_KEY))
  power_law = scaling.fit_power_law_with_floor(frontier.compute, frontier.loss)
  law = scaling.fit_chinchilla(*(records.column(rest_final, key) for key in (
      keys['params_key'], 'tokens_seen', records.EVAL_KEY)))
  n, d, loss = (records.column(held, key) for key in (keys['params_key'], 'tokens_seen',
                                                       records.EVAL_KEY))
  budget = float(np.exp(np.mean(np.log(compute[groups[-1]]))))
  h = scaling.HoldoutResult(budget=budget, measured_best_loss=float(loss.min()),
                            power_law_prediction=float(power_law.predict(budget)),
                            run_params=n, run_loss=loss, run_prediction=law.predict(n, d))
  print(f'Holdout (fitted without the {len(held)} members at C={budget:.3g}, then predicted): '
        f'best loss there {h.measured_best_loss:.4f}, L(C) predicted '
        f'{h.power_law_prediction:.4f} ({100 * h.power_law_relative_error:+.2f}%); L(N, D) '
        f'worst member error {100 * h.max_run_relative_error:.2f}%')
  return {'budget': h.budget, 'measured_best_loss': h.measured_best_loss,
          'power_law_prediction': h.power_law_prediction,
          'power_law_relative_error': h.power_law_relative_error,
          'max_run_relative_error': h.max_run_relative_error}


def _allocation(fits: dict[str, Any], largest: float) -> list[dict[str, float]]:
  """N_opt and D_opt at the largest budget trained and 10x, 100x it, from each law available."""
  table = []
  print('Compute-optimal allocation (D = C / (6 N)):')
  for scale in _SCALE_UPS:
    c = largest * scale
    row, parts = {'compute': c}, []
    if 'isoflop' in fits:
      n = float(fits['isoflop']['result'].predict_n_opt(c))
      row.update(isoflop_n_opt=n, isoflop_d_opt=c / (6 * n))
      parts.append(f'approach 2: N={_count(n)} D={_count(c / (6 * n))}')
    if 'chinchilla' in fits:
      law = fits['chinchilla']['law']
      n, d = (float(x) for x in law.compute_optimal(c))
      row.update(chinchilla_n_opt=n, chinchilla_d_opt=d, chinchilla_loss=float(law.predict(n, d)))
      parts.append(f'approach 3: N={_count(n)} D={_count(d)} L={row["chinchilla_loss"]:.4f}')
    if 'power_law' in fits:
      row['power_law_loss'] = float(fits['power_law']['law'].predict(c))
      parts.append(f'L(C)={row["power_law_loss"]:.4f}')
    label = 'largest budget' if scale == 1 else f'{scale}x'
    print(f'  C={c:.3g} ({label}): ' + ('; '.join(parts) or 'no law fitted'))
    table.append(row)
  return table


_STAGES = (('power_law', _fit_power_law), ('isoflop', _fit_isoflop),
           ('chinchilla', _fit_chinchilla), ('holdout', _fit_holdout))


def fit_and_report(workdir: str, finished: Sequence[str], *, compute_key: str = 'flops_kaplan',
                   params_key: str = 'params_non_embedding', n_bootstrap: int = 100
                   ) -> dict[str, Any]:
  """Every fit the finished members support, printed; a fit they cannot support is skipped with
  the scaling module's reason. Writes `fit/fit.json` and the figures; returns the numbers."""
  if not finished:
    print('\nNo finished members: nothing to fit yet. Run the sweep (without --fit_only).')
    return {}
  keys = {'compute_key': compute_key, 'params_key': params_key}
  snapshot = _snapshot(workdir, finished)
  rows = records.load_sweep(snapshot)
  final = records.final_records(rows)
  print(f'\nFits on {len(finished)} finished members (C: {compute_key}, N: {params_key}, '
        f'D: tokens_seen, L: {records.EVAL_KEY}):')
  fits: dict[str, Any] = {}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    for name, stage in _STAGES:
      try:
        fits[name] = stage(rows, final, keys, n_bootstrap)
      except ValueError as e:
        print(f'No {name} fit: {e}')
    allocation = _allocation(fits, float(records.column(final, compute_key).max()))
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # make_plots logs its own, final-evals-only, fit summary
    try:
      paths = plot_scaling.make_plots(snapshot, os.path.join(workdir, PLOTS_DIR),
                                      n_bootstrap=n_bootstrap, **keys)
      print('Figures: ' + ', '.join(paths))
    except ValueError as e:
      print(f'No figures: {e}')
    finally:
      logging.set_verbosity(verbosity)
  for message in dict.fromkeys(str(w.message) for w in caught):
    print(f'  note: {message}')
  summary = {name: {k: v for k, v in fit.items() if k not in ('law', 'result')}
             for name, fit in fits.items()}
  summary.update(members=list(finished), allocation=allocation, **keys)
  path = os.path.join(workdir, FIT_DIR, 'fit.json')
  with open(path, 'w') as f:
    json.dump(summary, f, indent=1, default=float)
  print(f'Numbers in {path}.')
  return summary


# ---------------------------------------------------------------- the command


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Only when run as a script, so importing this module (tests, notebooks) defines no flags."""
  flags.DEFINE_string('sweep', None, 'Sweep file defining get_sweep().', required=True)
  flags.DEFINE_string('workdir', None, 'Sweep directory: one sub-directory per member.',
                      required=True)
  flags.DEFINE_integer('parallel', 1, 'Members trained at once (each is its own process).')
  flags.DEFINE_bool('dry_run', False, 'List the members and their status; run nothing.')
  flags.DEFINE_bool('commands', False, 'Print the gptjax.main command of every unfinished member, '
                    'one per line, for a launcher that runs them itself; run nothing.')
  flags.DEFINE_list('only', [], 'Run only these members (comma-separated names).')
  flags.DEFINE_bool('fit_only', False, 'Run nothing; fit and plot the finished members.')
  flags.DEFINE_string('compute_key', 'flops_kaplan', "'flops_kaplan' | 'flops_full'.")
  flags.DEFINE_integer('n_bootstrap', 100, 'Bootstrap refits for the confidence intervals.')


def run_sweep(sweep_path: str, workdir: str, *, parallel: int = 1, dry_run: bool = False,
              commands: bool = False, only: Sequence[str] = (), fit_only: bool = False,
              compute_key: str = 'flops_kaplan', n_bootstrap: int = 100) -> int:
  """The whole command; returns the exit status (1 if a member failed, after fitting the rest)."""
  if parallel < 1:
    raise ValueError(f'--parallel={parallel} must be at least 1.')
  method = compute_key.removeprefix('flops_')
  if method not in launch.PARAMS_KEYS:
    raise ValueError(f'--compute_key={compute_key}; use flops_kaplan or flops_full.')
  base, members = launch.load_sweep_file(sweep_path)
  names = [m.name for m in members]
  unknown = sorted(set(only) - set(names))
  if unknown:
    raise ValueError(f'--only names {unknown}, which are not in the sweep; its members: {names}.')
  jobs = []
  for member in members:
    config = launch.resolve(base, member)
    directory = os.path.join(workdir, member.name)
    status = member_status(directory, config)
    jobs.append((_Job(member, config, launch.plan(config, method), directory, status.step), status))
  if commands:  # one per line, for launchers that start members themselves (multi-host, SLURM)
    for job, status in jobs:
      if status.state in ('new', 'partial') and (not only or job.member.name in only):
        print(shlex.join(['python'] + member_command(sweep_path, job.member, job.directory)[1:]))
    return 0
  print(format_table([(job.member, job.plan, status) for job, status in jobs]), flush=True)
  if dry_run:
    return 0

  failures = {job.member.name: f'its workdir is stale ({status.detail}); delete {job.directory} '
                               'to rerun it, or rename the member'
              for job, status in jobs if status.state == 'stale'}
  if not fit_only:
    to_run = [job for job, status in jobs if status.state in ('new', 'partial')
              and (not only or job.member.name in only)]
    finished = sum(status.state == 'finished' for _, status in jobs)
    print(f'{finished} of {len(jobs)} members already finished; training {len(to_run)}, '
          f'{parallel} at a time.', flush=True)
    try:
      failures.update(run_jobs(to_run, sweep_path, parallel=parallel, total=len(jobs),
                               finished_before=finished))
    except KeyboardInterrupt:
      return 130
  states = {job.member.name: member_status(job.directory, job.config).state for job, _ in jobs}
  finished = [name for name, state in states.items() if state == 'finished']
  unfinished = [name for name in names if name not in finished and name not in failures]
  fit_and_report(workdir, finished, compute_key=compute_key,
                 params_key=launch.PARAMS_KEYS[method], n_bootstrap=n_bootstrap)
  if unfinished:
    print(f'\n{len(unfinished)} member(s) not trained to the end yet, left out of the fits: '
          f'{", ".join(unfinished)}.')
  if failures:
    print(f'\n{len(failures)} member(s) failed and are left out of the fits:')
    for name, why in failures.items():
      print(f'  {name}: {why}')
    print('Rerun the same command to retry them (finished members are skipped).')
  return 1 if failures else 0


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  try:
    return run_sweep(FLAGS.sweep, os.path.expanduser(FLAGS.workdir), parallel=FLAGS.parallel,
                     dry_run=FLAGS.dry_run, commands=FLAGS.commands, only=FLAGS.only,
                     fit_only=FLAGS.fit_only, compute_key=FLAGS.compute_key,
                     n_bootstrap=FLAGS.n_bootstrap)
  except (ValueError, FileNotFoundError) as e:  # a bad sweep file or flag: the message says it all
    print(f'Error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  define_flags()
  app.run(main)
