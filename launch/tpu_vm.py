"""Cloud TPU VM slices: a sweep's unfinished members one after another on a slice, or on several
slices at once (one member each), through `launch/tpu_vm.sh`; every host of a slice runs the same
member.

  python -m launch.sweep --sweep=experiments/sweeps/tpu_scaling.py --workdir=gs://BUCKET/runs/tpu \
      --backend=tpu_vm --tpu_names=sweep-a,sweep-b --zone=us-central2-b \
      [--accelerator_type=v4-32 --queued --spot] [--fetch_to=runs/tpu]

The slices exist already (`launch/tpu_vm.sh ... --steps=create,setup`). Each member trains in
`workdir/<member>` on storage every worker sees: a gs:// bucket, which tpu_vm.sh mounts with
gcsfuse, or a shared mount. The runner reads where each member stands from there (a bucket
through `gptjax.runs.run_dir`), and copies each member's config and metrics back to `--fetch_to` for
the fits. When a run fails and its slice is no longer READY (preempted, deleted), the slice is
deleted and created again as it was made (`--accelerator_type`, `--queued`, `--spot`) and the
member resumes from its checkpoint; a run that fails on a healthy slice is the member's own failure
and is reported like a local one.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import shlex
import subprocess
import threading
import time
from typing import Sequence

import launch
from gptjax.runs import RESUME_STATUS, run_dir
from launch.status import Entry, member_status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = 'launch/tpu_vm.sh'
LOG_FILE = 'tpu_vm.log'  # in each member's directory under the fetch directory
_TAIL_LINES = 15


@dataclasses.dataclass(frozen=True)
class Options:
  names: tuple[str, ...]  # the slices; each runs one member at a time
  zone: str
  project: str = ''
  accelerator_type: str = ''  # needed to recreate a preempted slice
  version: str = ''  # TPU runtime for a recreated slice; tpu_vm.sh's default if empty
  queued: bool = False  # the slices are queued resources
  spot: bool = False
  recreate: int = 2  # times one member may recreate its slice (or resume there) before it fails
  fetch_to: str = ''  # where the metrics come back; see fetch_dir
  setup_args: tuple[str, ...] = ()  # more tpu_vm.sh options for a recreated slice's setup

  def check(self) -> None:
    if not self.names:
      raise ValueError('--backend=tpu_vm needs --tpu_names=NAME[,NAME...]: the slices to run on '
                       '(create them with launch/tpu_vm.sh --steps=create,setup).')
    if len(set(self.names)) != len(self.names):
      raise ValueError(f'--tpu_names={",".join(self.names)} names a slice twice.')
    if not self.zone:
      raise ValueError('--backend=tpu_vm needs --zone, e.g. --zone=us-central2-b.')
    if self.recreate < 0:
      raise ValueError(f'--recreate={self.recreate} must be 0 or more.')


def fetch_dir(workdir: str, options: Options) -> str:
  """Where the fits read the members' metrics: `--fetch_to`, else a mounted workdir itself, else
  runs/<the workdir's last component> for a bucket."""
  if options.fetch_to:
    return options.fetch_to
  return workdir if run_dir.is_local(workdir) else os.path.join('runs', os.path.basename(
      workdir.rstrip('/')))


def repo_path(sweep_path: str) -> str:
  """The sweep file relative to the repository: the slices run a copy of it, not this machine's."""
  relative = os.path.relpath(os.path.abspath(sweep_path), ROOT)
  if relative.startswith('..'):
    raise ValueError(f'--sweep={sweep_path} is outside the repository; the slices run a copy of '
                     'the repository, so keep the sweep file in it (e.g. experiments/sweeps/).')
  return relative


def _slice(options: Options, name: str) -> list[str]:
  return [SCRIPT, f'--name={name}', f'--zone={options.zone}',
          *([f'--project={options.project}'] if options.project else [])]


def run_command(options: Options, name: str, sweep: str, entry: Entry, fetch_to: str) -> list[str]:
  """tpu_vm.sh running one member on every worker of slice `name`, then fetching its metrics
  into `fetch_to/<member>` (no fetch if `fetch_to` is empty: the fits read the workdir)."""
  return [*_slice(options, name), f'--steps={"run,fetch" if fetch_to else "run"}',
          f'--config={launch.CONFIG_FILE}:{sweep}', f'--workdir={entry.directory}',
          *([f'--fetch-to={os.path.join(fetch_to, entry.name)}'] if fetch_to else []),
          '--', *launch.member_flags(entry.member)]


def recreate_commands(options: Options, name: str, workdir: str) -> list[list[str]]:
  """Deleting what is left of slice `name`, then creating and setting it up again (the setup
  mounts a gs:// workdir on every worker)."""
  queued = ['--queued'] if options.queued else []
  return [[*_slice(options, name), *queued, '--steps=', '--delete'],
          [*_slice(options, name), f'--accelerator-type={options.accelerator_type}',
           *([f'--version={options.version}'] if options.version else []), *queued,
           *(['--spot'] if options.spot else []), '--steps=create,setup', f'--workdir={workdir}',
           *options.setup_args]]


def describe_command(options: Options, name: str) -> list[str]:
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', name, f'--zone={options.zone}',
          *([f'--project={options.project}'] if options.project else []),
          '--format=value(state)']


class _Runner:
  """Hands the members to the slices, first free slice first; one thread per slice."""

  def __init__(self, entries: Sequence[Entry], sweep: str, workdir: str, options: Options,
               fetch: str, fetch_to: str):
    self.waiting = collections.deque(entries)
    self.sweep, self.workdir, self.options = sweep, workdir, options
    self.fetch, self.fetch_to = fetch, fetch_to
    self.lock = threading.Lock()
    self.failures: dict[str, str] = {}
    self.stopping = False

  def say(self, text: str) -> None:
    with self.lock:
      print(text, flush=True)

  def _call(self, command: list[str], log_path: str) -> int:
    with open(log_path, 'a') as log:
      log.write(f'+ {shlex.join(command)}\n')
      log.flush()
      return subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL).returncode

  def _state(self, name: str) -> str:
    result = subprocess.run(describe_command(self.options, name), cwd=ROOT, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL)
    return (result.stdout.strip() or 'UNKNOWN') if result.returncode == 0 else 'NOT_FOUND'

  def _member(self, entry: Entry, name: str) -> str | None:
    """Trains one member on slice `name`, recreating the slice when it is lost; why it failed."""
    log_path = os.path.join(self.fetch, entry.name, LOG_FILE)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    for recreated in range(self.options.recreate + 1):
      command = run_command(self.options, name, self.sweep, entry, self.fetch_to)
      code = self._call(command, log_path)
      if code == 0:
        status = member_status(entry.directory, entry.config)
        return None if status.state == 'finished' else (
            f'exited at step {status.step} of {entry.plan.steps} without an error')
      state = self._state(name)
      if state == 'READY' and code == RESUME_STATUS and not self.stopping and (
          recreated < self.options.recreate):  # a signal stopped it after saving: resume it
        self.say(f'{entry.name} was stopped after saving a checkpoint (status {code}) on slice '
                 f'{name}: resuming it')
        continue
      if state == 'READY':
        return f'exited with status {code} on slice {name}, which is READY'
      if self.stopping or not self.options.accelerator_type or recreated == self.options.recreate:
        how = ('pass --accelerator_type to have it recreated' if not
               self.options.accelerator_type else f'recreated {recreated} time(s) already')
        return f'slice {name} is {state} ({how}); rerun to resume the member'
      self.say(f'slice {name} is {state}: recreating it, then resuming {entry.name}')
      delete, create = recreate_commands(self.options, name, self.workdir)
      self._call(delete, log_path)  # nothing to delete is fine: create is what must succeed
      if self._call(create, log_path) != 0:
        return f'slice {name} is {state} and could not be created again'
    return None  # unreachable: the last pass returns

  def _tail(self, entry: Entry) -> str:
    with open(os.path.join(self.fetch, entry.name, LOG_FILE), errors='replace') as log:
      return '\n'.join('    ' + line for line in log.read().splitlines()[-_TAIL_LINES:])

  def serve(self, name: str) -> None:
    while not self.stopping:
      with self.lock:
        if not self.waiting:
          return
        entry = self.waiting.popleft()
      self.say(f'started {entry.name} on slice {name}; log: '
               f'{os.path.join(self.fetch, entry.name, LOG_FILE)}')
      started = time.monotonic()
      why = self._member(entry, name)
      took = f'{(time.monotonic() - started) / 60:.1f} min'
      if why is None:
        self.say(f'finished {entry.name} on slice {name} in {took}')
      else:
        self.failures[entry.name] = why
        self.say(f'FAILED {entry.name}: {why}; the end of its log:\n{self._tail(entry)}')


def run(entries: Sequence[Entry], sweep_path: str, workdir: str, options: Options, *,
        dry_run: bool = False) -> dict[str, str]:
  """Trains the entries (the unfinished members) on the slices; {member: why it failed}."""
  sweep, fetch = repo_path(sweep_path), fetch_dir(workdir, options)
  fetch_to = '' if fetch == workdir else fetch
  if dry_run:
    for i, entry in enumerate(entries):  # in order; a free slice takes the next member
      name = options.names[i % len(options.names)]
      print('+ ' + shlex.join(run_command(options, name, sweep, entry, fetch_to)))
    if options.accelerator_type:
      for name in options.names:
        print(f'# when slice {name} is lost:')
        print('\n'.join('+ ' + shlex.join(c) for c in recreate_commands(options, name, workdir)))
    return {}
  print(f'Training {len(entries)} member(s) on {len(options.names)} slice(s): '
        f'{", ".join(options.names)}.', flush=True)
  runner = _Runner(entries, sweep, workdir, options, fetch, fetch_to)
  threads = [threading.Thread(target=runner.serve, args=(name,), daemon=True)
             for name in options.names]
  for thread in threads:
    thread.start()
  try:
    for thread in threads:
      while thread.is_alive():
        thread.join(0.2)
  except KeyboardInterrupt:
    runner.stopping = True
    print('\nInterrupted: no further member starts; the running ones stop with their ssh '
          'sessions and resume from their last checkpoint when the same command runs again.')
    raise
  return runner.failures
