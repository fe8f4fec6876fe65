"""One run per workdir: a second owner is refused with the holder's PID and host, a killed holder
gives the workdir back, and a workdir that is a file or cannot be made is a one-line error."""

import os
import pathlib
import signal
import socket
import subprocess
import sys

import faults
import pytest

from experiments.configs import base
from gptjax.runs import run_dir, workdir_lock
from gptjax.train import loop

ROOT = pathlib.Path(__file__).resolve().parents[2]
@pytest.fixture
def held(tmp_path):
  """A workdir held by another process, as by a run in progress; yields (workdir, process)."""
  workdir = str(tmp_path / 'run')
  process = faults.hold_workdir(workdir)
  yield workdir, process
  process.kill()
  process.wait()


def test_a_free_workdir_has_no_holder_and_is_taken_once(tmp_path):
  workdir = str(tmp_path)
  assert workdir_lock.holder(workdir) is None
  with workdir_lock.WorkdirLock(workdir):
    found = workdir_lock.holder(workdir)
    assert (found.pid, found.host) == (os.getpid(), socket.gethostname())
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f'PID {os.getpid()} on host'):
      workdir_lock.WorkdirLock(workdir).acquire()
  assert workdir_lock.holder(workdir) is None  # released on exit
  with workdir_lock.WorkdirLock(workdir):
    pass


def test_a_killed_holder_gives_the_workdir_back(held):
  workdir, process = held
  assert workdir_lock.holder(workdir).pid == process.pid
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert workdir_lock.holder(workdir) is None
  with workdir_lock.WorkdirLock(workdir):
    pass


def test_training_refuses_a_held_workdir_before_writing_anything(held):
  workdir, process = held
  config = base.get_config()
  config.data.max_corpus_bytes = 100_000
  with pytest.raises(workdir_lock.WorkdirBusyError,
                     match=f'in use by PID {process.pid} on host .*another --workdir'):
    loop.train_and_evaluate(config, workdir)
  assert os.listdir(workdir) == [run_dir.LOCK_FILE]


def test_the_command_line_names_the_holder_in_one_line(held):
  workdir, process = held
  run = subprocess.run(
      [sys.executable, '-m', 'gptjax.main', '--config=experiments/configs/tiny.py',
       f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert run.returncode == 1, run.stderr[-3000:]
  assert 'Traceback' not in run.stderr
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith('gptjax.main: error: ') and f'PID {process.pid} on host' in last
  assert os.listdir(workdir) == [run_dir.LOCK_FILE]


def test_a_workdir_that_is_a_file_or_cannot_be_made_is_named(tmp_path):
  a_file = tmp_path / 'notes.txt'
  a_file.write_text('kept\n')
  with pytest.raises(ValueError, match='is a file, not a directory'):
    workdir_lock.prepare(str(a_file))
  with pytest.raises(ValueError, match='cannot be created'):
    workdir_lock.prepare(str(a_file / 'run'))
  assert a_file.read_text() == 'kept\n'


def test_a_workdir_that_cannot_be_written_is_named(tmp_path, monkeypatch):
  """`os.access` stands in for a read-only mount (permission bits do not bind root, who runs CI)."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  real_access = os.access
  monkeypatch.setattr(os, 'access', lambda path, mode: False if str(path) == str(workdir)
                      else real_access(path, mode))
  with pytest.raises(ValueError, match=f'--workdir={workdir} is not writable'):
    workdir_lock.prepare(str(workdir))
  assert list(workdir.iterdir()) == []
