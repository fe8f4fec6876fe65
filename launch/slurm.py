"""SLURM: a sweep's unfinished members as one job array, one task per member, with
`launch/slurm.sbatch` as the task body.

  python -m launch.sweep --sweep=S --workdir=SHARED/runs/x --backend=slurm [--max_concurrent=4]
      [--segments=3] [--sbatch_args='--nodes=2 --time=24:00:00 --partition=gpu']

A submission writes `workdir/slurm/array-<k>.txt`, one line per task holding the arguments that
`slurm.sbatch` takes by hand (config, member workdir, overrides); task i runs line i + 1. The job
ids go to `workdir/slurm/jobs.json`. Before submitting, the runner asks `squeue` which of its jobs
are still queued or running and leaves their members alone: rerunning the command submits what is
unfinished and never a second copy of a member. A member whose task ended without finishing it
(failed, cancelled, out of time, preempted and not requeued) is submitted again.

`--segments=N` submits N arrays, each waiting for the one before (`--dependency=afterany`): a
member that reaches the time limit saves a checkpoint (SIGTERM 5 minutes before it, the sbatch's
`--signal`) and the next segment resumes it; a task whose member has already finished exits at
once.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import shlex
import subprocess
from typing import Sequence

import launch
from gptjax.runs import run_dir
from launch.status import Entry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM_DIR = 'slurm'  # in the sweep's workdir; launch.RESERVED_NAMES keeps members out of it
JOBS_FILE = 'jobs.json'
SCRIPT = 'launch/slurm.sbatch'
# States in which a job holds or waits for nodes no more; squeue lists them briefly after the end.
ENDED = frozenset({'COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY',
                   'BOOT_FAIL', 'DEADLINE', 'PREEMPTED', 'REVOKED', 'SPECIAL_EXIT'})
_TASKS = re.compile(r'^(\d+)_\[([^\]]*)\]$')


@dataclasses.dataclass(frozen=True)
class Options:
  max_concurrent: int = 0  # the array's %N: tasks running at once; 0 lets SLURM decide
  segments: int = 1  # back-to-back arrays, each resuming what the one before left unfinished
  sbatch_args: tuple[str, ...] = ()  # more sbatch options: --nodes, --time, --partition, ...

  def check(self) -> None:
    if self.max_concurrent < 0:
      raise ValueError(f'--max_concurrent={self.max_concurrent} must be 0 (no limit) or more.')
    if self.segments < 1:
      raise ValueError(f'--segments={self.segments} must be at least 1.')


def check_workdir(workdir: str) -> None:
  if not run_dir.is_local(workdir):
    raise ValueError(f'--workdir={workdir}: SLURM tasks train in a directory every node mounts '
                     '(NFS, Lustre, GPFS); pass its path, not a URI.')


def _call(command: Sequence[str]) -> str:
  """Runs a SLURM client command from the repository root (the tasks start where sbatch ran)."""
  try:
    result = subprocess.run(list(command), cwd=ROOT, capture_output=True, text=True, timeout=300)
  except FileNotFoundError:
    raise OSError(f'{command[0]} is not on PATH; --backend=slurm runs on a SLURM login '
                  'node.') from None
  if result.returncode != 0:
    raise OSError(f'{shlex.join(command)} failed (exit {result.returncode}): '
                  f'{" ".join(result.stderr.split())}')
  return result.stdout


def _task_ids(field: str) -> list[str]:
  """'12_3' -> ['12_3']; '12_[0-2,5%2]' (squeue folds pending tasks) -> 12_0, 12_1, 12_2, 12_5."""
  match = _TASKS.match(field)
  if not match:
    return [field]
  ids = []
  for part in match.group(2).split('%')[0].split(','):
    low, _, high = part.partition('-')
    ids += [f'{match.group(1)}_{i}' for i in range(int(low), int(high or low) + 1)]
  return ids


def _states(output: str) -> dict[str, str]:
  states = {}
  for line in output.splitlines():
    field, _, state = line.strip().partition('|')
    if field and state:
      states.update(dict.fromkeys(_task_ids(field), state.split()[0]))  # 'CANCELLED by 0'
  return states


def queue_states() -> dict[str, str]:
  """{'<array>_<task>': state} of this user's jobs that SLURM still schedules."""
  return _states(_call(['squeue', f'--user={getpass.getuser()}', '--array', '--noheader',
                        '--format=%i|%T']))


def accounting_states(arrays: Sequence[str]) -> dict[str, str]:
  """{'<array>_<task>': state} from sacct for ended jobs; {} where accounting is off."""
  if not arrays:
    return {}
  try:
    return _states(_call(['sacct', '--noheader', '--parsable2', '--allocations',
                          '--format=JobID,State', f'--jobs={",".join(arrays)}']))
  except OSError:
    return {}


def read_submissions(workdir: str) -> list[dict]:
  path = os.path.join(workdir, SLURM_DIR, JOBS_FILE)
  if not run_dir.exists(path):
    return []
  return json.loads(run_dir.read_bytes(path).decode())['submissions']


def member_jobs(submissions: Sequence[dict]) -> dict[str, list[str]]:
  """{member: ['<array>_<task>', ...]}, oldest first: task i of an array runs its i-th member."""
  jobs: dict[str, list[str]] = {}
  for submission in submissions:
    for array in submission['job_ids']:
      for task, name in enumerate(submission['members']):
        jobs.setdefault(name, []).append(f'{array}_{task}')
  return jobs


def task_line(entry: Entry, sweep_path: str) -> str:
  """The arguments `slurm.sbatch` takes by hand, absolute: tasks start in the repository root."""
  return shlex.join([f'{launch.CONFIG_FILE}:{os.path.abspath(sweep_path)}',
                     os.path.abspath(entry.directory), *launch.member_flags(entry.member)])


def sbatch_command(count: int, commands_file: str, sweep_path: str, options: Options,
                   after: str = '') -> list[str]:
  array = f'0-{count - 1}' + (f'%{options.max_concurrent}' if options.max_concurrent else '')
  name = os.path.splitext(os.path.basename(sweep_path))[0]
  log = os.path.join(os.path.dirname(commands_file), '%A_%a.out')
  return ['sbatch', '--parsable', f'--array={array}', f'--job-name=gptjax-{name}',
          f'--output={log}', *([f'--dependency=afterany:{after}'] if after else []),
          *options.sbatch_args, SCRIPT, f'--commands={commands_file}']


def submit(entries: Sequence[Entry], sweep_path: str, workdir: str, options: Options, *,
           dry_run: bool = False) -> int:
  """Submits the entries (the unfinished members) that have no job queued or running; returns 0,
  or 1 when sbatch refused. With `dry_run`, prints the task lines and sbatch commands instead."""
  submissions = read_submissions(workdir)
  jobs = member_jobs(submissions)
  queued = queue_states() if jobs else {}
  live = {name: [f'{job} {queued[job]}' for job in ids
                 if job in queued and queued[job] not in ENDED] for name, ids in jobs.items()}
  waiting = [entry for entry in entries if live.get(entry.name)]
  for entry in waiting:
    print(f'{entry.name}: already in the queue ({", ".join(live[entry.name])}); not submitted '
          'again.')
  to_submit = [entry for entry in entries if not live.get(entry.name)]
  if not to_submit:
    print('Nothing to submit: every member is finished, queued, running or needs a fix above.')
    return 0
  slurm_dir = os.path.abspath(os.path.join(workdir, SLURM_DIR))
  commands_file = os.path.join(slurm_dir, f'array-{len(submissions)}.txt')
  lines = [task_line(entry, sweep_path) for entry in to_submit]
  if dry_run:
    print(f'{commands_file} would hold, one line per array task:')
    print('\n'.join(f'  {i}: {line}' for i, line in enumerate(lines)))
    for segment in range(options.segments):
      after = f'<job id of segment {segment}>' if segment else ''
      print('+ ' + shlex.join(sbatch_command(len(lines), commands_file, sweep_path, options,
                                             after)))
    return 0
  run_dir.write_atomic(commands_file, ''.join(line + '\n' for line in lines))
  submission = {'commands': commands_file, 'members': [e.name for e in to_submit], 'job_ids': []}
  for _ in range(options.segments):
    after = submission['job_ids'][-1] if submission['job_ids'] else ''
    try:
      output = _call(sbatch_command(len(lines), commands_file, sweep_path, options, after))
    except OSError as error:
      print(f'sbatch refused the array: {error}')
      return 1
    submission['job_ids'].append(output.strip().split(';')[0])  # --parsable: 'id[;cluster]'
    # Recorded after every array, so a rerun never submits again what did get submitted.
    run_dir.write_atomic(os.path.join(slurm_dir, JOBS_FILE),
                         json.dumps({'submissions': [*submissions, submission]}, indent=1))
  limit = f', at most {options.max_concurrent} at once' if options.max_concurrent else ''
  print(f'Submitted {len(lines)} member(s) as job array {" -> ".join(submission["job_ids"])}'
        f'{limit}: {", ".join(submission["members"])}. Logs: {slurm_dir}/<job>_<task>.out. '
        'Follow them with --status; fit with --fit_only once they finish.')
  return 0


def status_lines(entries: Sequence[Entry], workdir: str) -> list[str]:
  """Each submitted member's latest job, its state in squeue (or sacct once ended) and its log."""
  jobs = member_jobs(read_submissions(workdir))
  if not jobs:
    return ['No SLURM jobs submitted from this workdir yet.']
  queued = queue_states()
  latest = {name: ids[-1] for name, ids in jobs.items()}
  ended = accounting_states(sorted({job.split('_')[0] for job in latest.values()
                                    if job not in queued}))
  width = max(len(entry.name) for entry in entries)
  lines = [f'{"member":<{width}} {"job":>12} {"slurm state":<13} log']
  for entry in entries:
    if entry.name in latest:
      job = latest[entry.name]
      state = queued.get(job) or ended.get(job) or 'ENDED'
      log = os.path.join(workdir, SLURM_DIR, f'{job}.out')
      lines.append(f'{entry.name:<{width}} {job:>12} {state:<13} {log}')
  return lines
