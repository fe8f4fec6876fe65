"""One run at a time per workdir: an exclusive lock that a killed process gives back.

Two runs writing one workdir would interleave their records, leave a `config.json` that disagrees
with the checkpoints, and race on every save. A run therefore holds an `fcntl.flock` on
`workdir/run.lock` while it trains. The kernel drops the lock when the process ends, however it
ends (SIGKILL and OOM included), so a crash never leaves a stale lock behind. The file also says
who holds it (PID, host, start time, command), for the message that refuses a second run.

With several processes on shared storage, process 0 alone takes the lock (the caller arranges
that). NFS serves `flock` to every client as a POSIX lock; a FUSE mount such as gcsfuse holds it
only within one machine; a filesystem that refuses locks is reported with a warning and the run
goes on unprotected.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import socket
import sys
import time

from absl import logging

from gptjax.runs import cli, run_dir


@dataclasses.dataclass(frozen=True)
class Holder:
  pid: int | None
  host: str
  since: str
  command: str

  def describe(self) -> str:
    who = f'PID {self.pid} on host {self.host}' if self.pid else 'another process'
    return f'{who} (running since {self.since})' if self.since else who


class WorkdirBusyError(cli.RunError):
  pass


def _path(workdir: str) -> str:
  return os.path.join(workdir, run_dir.LOCK_FILE)


def _read_holder(f) -> Holder:
  f.seek(0)
  try:
    info = json.loads(f.read() or '{}')
  except (json.JSONDecodeError, UnicodeDecodeError):
    info = {}
  return Holder(info.get('pid'), info.get('host', '?'), info.get('since', ''),
                info.get('command', ''))


def _locks_unsupported(error: OSError) -> bool:
  return error.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


def holder(workdir: str) -> Holder | None:
  """Who holds `workdir`'s lock now, or None if no run does. Writes nothing."""
  path = _path(workdir)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return _read_holder(f)
    except OSError as error:
      if _locks_unsupported(error):
        return None
      raise
    fcntl.flock(f, fcntl.LOCK_UN)
  return None


def prepare(workdir: str) -> None:
  """Creates `workdir`; a ValueError names the problem if it is a file or cannot be written."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f'--workdir={workdir} is a file, not a directory; pass a directory (it is '
                     'created if missing).')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as error:
    raise ValueError(f'--workdir={workdir} cannot be created ({error.strerror}); pass a directory '
                     'you can write to.') from error
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ValueError(f'--workdir={workdir} is not writable; pass a directory you can write to, or '
                     'fix its permissions.')


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the workdir for one run, or raises WorkdirBusyError."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self._file = None

  def acquire(self) -> None:
    f = open(_path(self.workdir), 'a+')
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      busy = _read_holder(f)
      f.close()
      raise WorkdirBusyError(
          f'{self.workdir} is in use by {busy.describe()}. One workdir holds one run at a time: '
          'wait for that run to end (or stop it), or pass another --workdir.') from None
    except OSError as error:
      if not _locks_unsupported(error):
        f.close()
        raise
      logging.warning('The filesystem of %s has no file locks (%s): nothing stops a second run '
                      'from using this workdir at the same time.', self.workdir, error.strerror)
    f.seek(0)
    f.truncate()
    f.write(json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                        'since': time.strftime('%Y-%m-%d %H:%M:%S'),
                        'command': ' '.join(sys.argv)[:500]}))
    f.flush()
    self._file = f

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
