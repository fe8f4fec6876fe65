r"""Runs a sweep on this machine, a SLURM cluster or Cloud TPU VM slices, then fits and plots its
scaling laws.

  python -m launch.sweep --sweep=experiments/sweeps/cpu_scaling.py --workdir=runs/cpu_scaling \
      [--backend=local|slurm|tpu_vm] [--parallel=N] [--dry_run] [--status] [--commands] \
      [--only=name1,name2] [--fit_only]

One plan for every backend: `launch.status` reads where each member stands in `workdir/<member>`
(new, partial, finished, stale, running, broken), and only new and partial members are started.
Finished members are skipped and unfinished ones resume from their checkpoints; a member another
process is still training (its workdir is locked, e.g. after this runner was killed) is left to it;
a member whose files cannot be read is reported and skipped. `--dry_run` prints the commands the
backend would run. The backends (`launch.slurm`, `launch.tpu_vm` say more):
  local    each member is its own `python -m gptjax.main --config=launch/__init__.py:<sweep file>
           --config.x=y ...` process (`launch.get_config` hands it the sweep's base config): a
           fresh JAX per run, and a crash, OOM or NaN in one member cannot take the others down.
           Its output goes to `workdir/<member>/log.txt`; Ctrl-C stops the running members after
           they save a checkpoint.
  slurm    submits the unfinished members as one job array and returns; `--status` follows it.
  tpu_vm   runs them on existing slices, every host of a slice on the same member.
Then the fits run on the finished members (`launch.fit`): the L(C) frontier power law, IsoFLOP
minima (Chinchilla approach 2), L(N, D) with bootstrap intervals (approach 3), the holdout check of
the largest budget, and the compute-optimal N and D at the largest budget and 10x and 100x it.
Figures go to `workdir/plots`, the numbers to `workdir/fit/fit.json`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Sequence

import ml_collections
import numpy as np
import scipy.optimize
from absl import app, flags

import launch
from gptjax import run_dir
from gptjax.progress import format_duration
from launch import fit, slurm, tpu_vm
from launch import status as status_lib
from launch.status import format_table, member_status

LOG_FILE = 'log.txt'
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROGRESS = re.compile(r'\] (step (\d+)/(\d+) \|.*)$')
_TAIL_LINES = 15
_POLL_S = 0.5
_STOP_GRACE_S = 120  # a member given SIGTERM saves a checkpoint first; give it time to


def member_command(sweep_path: str, member: launch.Member, member_dir: str) -> list[str]:
  config_file = os.path.relpath(launch.__file__)  # its get_config(sweep) is the sweep's base
  return [sys.executable, '-m', 'gptjax.main', f'--config={config_file}:{sweep_path}',
          f'--workdir={member_dir}', *launch.member_flags(member)]


# ---------------------------------------------------------------- running members


@dataclasses.dataclass
class _Job:
  member: launch.Member
  config: ml_collections.ConfigDict
  plan: launch.Plan
  directory: str
  start_step: int  # where this runner starts it (approximately: the last record's step)
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
  spends `startup` seconds before its first line (JAX import, data, compilation). A CPU sweep
  mixes both regimes, so neither FLOPs alone nor steps alone predicts its remaining time.
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
            f'{format_duration(eta)}]')


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
  took = format_duration(time.monotonic() - job.started)
  if code == 0 and status.state == 'finished':
    board.finished += 1
    print(f'{board.prefix()} finished {job.member.name}: eval_loss {status.eval_loss:.4f} '
          f'at C={job.plan.flops:.3g} in {took}', flush=True)
    return None
  if code:
    why = f'exited with status {code}'
  elif status.state in ('stale', 'broken', 'running'):  # e.g. the config schema changed meanwhile
    why = f'exited without an error, but its workdir is now {status.state} ({status.detail})'
  else:
    why = f'exited at step {status.step} of {job.plan.steps} without an error'
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


# ---------------------------------------------------------------- the command


FLAGS = flags.FLAGS
BACKENDS = ('local', 'slurm', 'tpu_vm')
# Flags that only one backend reads; giving one to another backend is a mistake worth naming.
_BACKEND_FLAGS = {'local': ('parallel',), 'slurm': ('max_concurrent', 'segments', 'sbatch_args'),
                  'tpu_vm': ('tpu_names', 'zone', 'project', 'accelerator_type', 'tpu_version',
                             'queued', 'spot', 'recreate', 'fetch_to', 'setup_args')}


def define_flags() -> None:
  """Only when run as a script, so importing this module (tests, notebooks) defines no flags."""
  flags.DEFINE_string('sweep', None, 'Sweep file defining get_sweep().', required=True)
  flags.DEFINE_string('workdir', None, 'Sweep directory: one sub-directory per member '
                      '(gs://BUCKET/PATH with --backend=tpu_vm).', required=True)
  flags.DEFINE_enum('backend', 'local', BACKENDS, 'Where the members train: this machine, a '
                    'SLURM job array, or Cloud TPU VM slices.')
  flags.DEFINE_bool('dry_run', False, 'List the members and their status, and print the commands '
                    'the backend would run; run nothing.')
  flags.DEFINE_bool('status', False, "List the members and their status (with --backend=slurm "
                    "also their jobs' states); run nothing.")
  flags.DEFINE_bool('commands', False, 'Print the gptjax.main command of every unfinished member, '
                    'one per line, for a launcher that runs them itself; run nothing.')
  flags.DEFINE_list('only', [], 'Run only these members (comma-separated names).')
  flags.DEFINE_bool('fit_only', False, 'Run nothing; fit and plot the finished members.')
  flags.DEFINE_string('compute_key', 'flops_kaplan', "'flops_kaplan' | 'flops_full'.")
  flags.DEFINE_integer('n_bootstrap', 100, 'Bootstrap refits for the confidence intervals.')
  flags.DEFINE_integer('parallel', 1, 'local: members trained at once (each is its own process).')
  flags.DEFINE_integer('max_concurrent', 0, "slurm: array tasks running at once (the array's %N); "
                       '0 leaves it to SLURM.')
  flags.DEFINE_integer('segments', 1, 'slurm: back-to-back job arrays, each resuming the members '
                       'the one before left unfinished (time limits, preemption).')
  flags.DEFINE_string('sbatch_args', '', 'slurm: more sbatch options, e.g. '
                      '"--nodes=2 --time=24:00:00 --partition=gpu".')
  flags.DEFINE_list('tpu_names', [], 'tpu_vm: the slices; each trains one member at a time.')
  flags.DEFINE_string('zone', '', 'tpu_vm: the slices\' zone, e.g. us-central2-b.')
  flags.DEFINE_string('project', '', "tpu_vm: Google Cloud project (default: gcloud's).")
  flags.DEFINE_string('accelerator_type', '', 'tpu_vm: e.g. v4-32; lets a lost slice be recreated.')
  flags.DEFINE_string('tpu_version', '', 'tpu_vm: TPU runtime of a recreated slice.')
  flags.DEFINE_bool('queued', False, 'tpu_vm: the slices are queued resources.')
  flags.DEFINE_bool('spot', False, 'tpu_vm: recreate lost slices on spot capacity.')
  flags.DEFINE_integer('recreate', 2, 'tpu_vm: times one member may recreate its lost slice.')
  flags.DEFINE_string('fetch_to', '', 'tpu_vm: where the members\' metrics come back for the fits '
                      '(default: the workdir if mounted here, else runs/<its last component>).')
  flags.DEFINE_string('setup_args', '', 'tpu_vm: more launch/tpu_vm.sh options for setting up a '
                      'recreated slice, e.g. "--repo=GIT_URL --ref=main".')


def _options(backend: str) -> slurm.Options | tpu_vm.Options | None:
  for other, names in _BACKEND_FLAGS.items():
    given = [name for name in names if other != backend and FLAGS[name].present]
    if given:
      raise ValueError(f'--{given[0]} is for --backend={other}, not --backend={backend}.')
  if backend == 'slurm':
    return slurm.Options(FLAGS.max_concurrent, FLAGS.segments,
                         tuple(shlex.split(FLAGS.sbatch_args)))
  if backend == 'tpu_vm':
    return tpu_vm.Options(
        tuple(FLAGS.tpu_names), FLAGS.zone, FLAGS.project, FLAGS.accelerator_type,
        FLAGS.tpu_version, FLAGS.queued, FLAGS.spot, FLAGS.recreate, FLAGS.fetch_to,
        tuple(shlex.split(FLAGS.setup_args)))
  return None


def _report(failures: dict[str, str]) -> None:
  print(f'\n{len(failures)} member(s) failed and are left out of the fits:')
  for name, why in failures.items():
    print(f'  {name}: {why}')
  print('Rerun the same command to retry them (finished members are skipped).')


def run_sweep(sweep_path: str, workdir: str, *, backend: str = 'local',
              options: slurm.Options | tpu_vm.Options | None = None, parallel: int = 1,
              dry_run: bool = False, status: bool = False, commands: bool = False,
              only: Sequence[str] = (), fit_only: bool = False, compute_key: str = 'flops_kaplan',
              n_bootstrap: int = 100) -> int:
  """The whole command; returns the exit status (1 if a member failed, after fitting the rest).

  One plan for every backend: the members' statuses in `workdir` decide what runs. The local and
  tpu_vm backends train and then fit; slurm submits and returns (fit with `fit_only` later)."""
  if backend not in BACKENDS:
    raise ValueError(f'--backend={backend}; choose one of {", ".join(BACKENDS)}.')
  if parallel < 1:
    raise ValueError(f'--parallel={parallel} must be at least 1.')
  method = compute_key.removeprefix('flops_')
  if method not in launch.PARAMS_KEYS:
    raise ValueError(f'--compute_key={compute_key}; use flops_kaplan or flops_full.')
  if backend == 'slurm':
    options = options or slurm.Options()
    slurm.check_workdir(workdir)
  elif backend == 'tpu_vm':
    if options is None:
      raise ValueError('--backend=tpu_vm needs --tpu_names and --zone.')
  elif not run_dir.is_local(workdir):
    raise ValueError(f'--workdir={workdir}: this machine trains in a local directory; a bucket '
                     'workdir is for --backend=tpu_vm, whose workers mount it.')
  if options is not None:
    options.check()
  if not run_dir.is_local(workdir):
    run_dir.exists(workdir)  # an unreachable bucket is one error here, not one per member
  base, members = launch.load_sweep_file(sweep_path)
  names = [m.name for m in members]
  unknown = sorted(set(only) - set(names))
  if unknown:
    raise ValueError(f'--only names {unknown}, which are not in the sweep; its members: {names}.')
  entries = status_lib.survey(base, members, workdir, method)
  selected = [entry for entry in entries if entry.unfinished and (not only or entry.name in only)]
  if commands:  # one per line, for launchers that start members themselves
    for entry in selected:
      print(shlex.join(['python'] + member_command(sweep_path, entry.member, entry.directory)[1:]))
    return 0
  print(format_table([(e.member, e.plan, e.status) for e in entries]), flush=True)
  if backend == 'slurm' and status:
    print('\n' + '\n'.join(slurm.status_lines(entries, workdir)))
  if dry_run:
    if backend == 'local':
      for entry in selected:
        print('+ ' + shlex.join(member_command(sweep_path, entry.member, entry.directory)))
    elif backend == 'slurm':
      slurm.submit(selected, sweep_path, workdir, options, dry_run=True)
    else:
      tpu_vm.run(selected, sweep_path, workdir, options, dry_run=True)
  if dry_run or status:
    return 0

  failures = {e.name: f'its workdir is stale ({e.status.detail}); delete {e.directory} to rerun '
                      'it, or rename the member' for e in entries if e.status.state == 'stale'}
  failures.update({e.name: e.status.detail for e in entries if e.status.state == 'broken'})
  busy = [f'  {e.name}: {e.status.detail}' for e in entries if e.status.state == 'running']
  if busy:
    print(f'{len(busy)} member(s) are being trained by another process; this run leaves them '
          'alone:\n' + '\n'.join(busy), flush=True)
  if backend == 'slurm' and not fit_only:
    submitted = slurm.submit(selected, sweep_path, workdir, options)
    if failures:
      _report(failures)
    return 1 if failures or submitted else 0
  if not fit_only:
    finished = sum(e.status.state == 'finished' for e in entries)
    print(f'{finished} of {len(entries)} members already finished; training {len(selected)}'
          + (f', {parallel} at a time.' if backend == 'local' else '.'), flush=True)
    try:
      if backend == 'local':
        jobs = [_Job(e.member, e.config, e.plan, e.directory, e.status.step) for e in selected]
        failures.update(run_jobs(jobs, sweep_path, parallel=parallel, total=len(entries),
                                 finished_before=finished))
      else:
        failures.update(tpu_vm.run(selected, sweep_path, workdir, options))
    except KeyboardInterrupt:
      return 130
  records_dir = tpu_vm.fetch_dir(workdir, options) if backend == 'tpu_vm' else workdir
  states = {e.name: member_status(os.path.join(records_dir, e.name), e.config).state
            for e in entries}
  finished = [name for name, state in states.items() if state == 'finished']
  unfinished = [name for name in names if name not in finished and name not in failures]
  fit.fit_and_report(records_dir, finished, compute_key=compute_key,
                     params_key=launch.PARAMS_KEYS[method], n_bootstrap=n_bootstrap)
  if unfinished:
    print(f'\n{len(unfinished)} member(s) not trained to the end yet, left out of the fits: '
          f'{", ".join(unfinished)}.')
  if failures:
    _report(failures)
  return 1 if failures else 0


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  try:
    return run_sweep(FLAGS.sweep, os.path.expanduser(FLAGS.workdir), backend=FLAGS.backend,
                     options=_options(FLAGS.backend), parallel=FLAGS.parallel,
                     dry_run=FLAGS.dry_run, status=FLAGS.status, commands=FLAGS.commands,
                     only=FLAGS.only, fit_only=FLAGS.fit_only, compute_key=FLAGS.compute_key,
                     n_bootstrap=FLAGS.n_bootstrap)
  except (ValueError, OSError) as e:  # a bad sweep file or flag, an unreachable tool or bucket
    print(f'Error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  define_flags()
  app.run(main)
