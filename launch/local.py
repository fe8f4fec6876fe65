"""The local backend of the sweep runner: each member as its own `python -m gptjax.main` process.

A fresh JAX per run, so a crash, OOM or NaN in one member cannot take the others down. Each
member's output goes to `<member>/log.txt`; the runner prints one board line per progress update
(the finished count, the sweep's ETA fitted from the members' progress, the running members'
progress lines), and Ctrl-C stops the running members with SIGTERM, after which each saves a
checkpoint. `launch.sweep` plans the members and calls `run_jobs`.

Members share one persistent XLA compilation cache (`<workdir>/compile_cache`): members of the same
shape at different budgets compile the same programs (the schedule is an argument of the train
step), and a rerun after an interruption compiles nothing it compiled before. At the end the runner
prints the sweep's efficiency: the model FLOPs it trained (full count) over its wall time, as a
fraction of the matmul peak measured at its start.
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

import launch
from gptjax.runs import RESUME_STATUS, format_duration
from launch.status import member_status

LOG_FILE = 'log.txt'
COMPILE_CACHE_DIR = 'compile_cache'  # in the sweep's workdir, beside the members
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

MAX_RESUMES = 3  # a member stopped more often than this is reported, not started again


@dataclasses.dataclass
class Job:
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
  resumes: int = 0  # how often it was started again after a signal stopped it

  def flops(self, steps: float) -> float:
    return self.plan.flops * steps / self.plan.steps

  @property
  def steps_to_train(self) -> int:
    return self.plan.steps - self.start_step


def _start(job: Job, sweep_path: str, env: dict[str, str]) -> None:
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


def _new_lines(job: Job) -> list[str]:
  with open(os.path.join(job.directory, LOG_FILE), errors='replace') as log:
    log.seek(job.read_offset)
    text = log.read()
  complete = text[:text.rfind('\n') + 1]
  job.read_offset += len(complete.encode(errors='replace'))
  return complete.splitlines()


def _tail(job: Job) -> str:
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

  def __init__(self, jobs: Sequence[Job], total: int, finished_before: int, parallel: int):
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

    def cost(job: Job, steps: float) -> float:
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


def _progress(job: Job, board: _Board) -> None:
  for line in _new_lines(job):
    match = _PROGRESS.search(line)
    if match:
      job.last = (time.monotonic(), int(match.group(2)))
      job.first = job.first or job.last
      print(f'{board.prefix()} {job.member.name}: {match.group(1)}', flush=True)


def _ended(job: Job, board: _Board, code: int) -> str | None:
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


def run_jobs(jobs: Sequence[Job], sweep_path: str, *, parallel: int, total: int,
             finished_before: int, compile_cache: str) -> dict[str, str]:
  """Trains the jobs, `parallel` at a time; returns {member: why it failed} for those that did."""
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [_ROOT, env.get('PYTHONPATH')]))
  if parallel > 1:  # several JAX processes on one GPU must not each grab most of its memory
    env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  env.setdefault('JAX_COMPILATION_CACHE_DIR', compile_cache)
  # A small model's programs compile in well under JAX's default threshold of 1 s for caching.
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
  peak = measure_peak(env)
  board = _Board(jobs, total, finished_before, parallel)
  waiting = sorted(jobs, key=_start_order)
  running, failures = [], {}
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
          if code == RESUME_STATUS and job.resumes < MAX_RESUMES:
            job.resumes += 1  # stopped by a signal after saving (a preemption): resume it
            print(f'{board.prefix()} {job.member.name} was stopped after saving a checkpoint '
                  f'(status {code}); resuming it', flush=True)
            waiting.insert(0, job)
            continue
          why = _ended(job, board, code)
          if why:
            failures[job.member.name] = why
  except KeyboardInterrupt:
    _stop(running)
    raise
  print(throughput_line([job for job in jobs if job.member.name not in failures],
                        time.monotonic() - board.start, peak), flush=True)
  return failures


def _start_order(job: Job) -> tuple[float, int, int]:
  """The largest budgets first, so the sweep does not end on one long member running alone;
  within a budget the first seed of every size before any replica, so that a replica finds its
  programs compiled in the cache instead of compiling them alongside its twin; then the most
  steps (the longest) first."""
  flops = float(f'{job.flops(job.steps_to_train):.1g}')
  return -flops, job.config.seed, -job.steps_to_train


def measure_peak(env: dict[str, str]) -> float | None:
  """The matmul peak (FLOP/s) of the device the members train on, or None if it cannot be measured.

  It runs in a process of its own with the members' environment, so this runner never holds the
  accelerator (or its memory) that the members need.
  """
  code = 'from gptjax.cost import flops; print(flops.measure_matmul_peak(repeats=10))'
  try:
    done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                          timeout=600, check=True)
    return float(done.stdout.split()[-1])
  except (subprocess.SubprocessError, ValueError, IndexError):
    return None


def throughput_line(trained: Sequence[Job], seconds: float, peak: float | None) -> str:
  """The sweep's efficiency: the model FLOPs of the members it trained (full count, attention
  included, from each one's starting step), per second of wall time, against the measured peak.
  Startup, compilation, evaluation and checkpoints all count as time: they are what a sweep of
  small models spends its time on."""
  model_flops = sum(launch.plan(job.config, 'full').flops * job.steps_to_train / job.plan.steps
                    for job in trained)
  rate = model_flops / max(seconds, 1e-9)
  line = (f'Throughput: {model_flops:.3g} model FLOPs (full count) of {len(trained)} member(s) '
          f'in {format_duration(seconds)} = {rate / 1e9:,.1f} GFLOP/s')
  if peak is None:
    return line + ' (the matmul peak could not be measured).'
  return line + f', {100 * rate / peak:.1f}% of the {peak / 1e9:,.1f} GFLOP/s matmul peak measured.'


def _stop(running: Sequence[Job]) -> None:
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
