"""Faults the robustness tests inject: a flipped bit in a file, and another process holding a
workdir as a run in progress does."""

import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
_HOLD = textwrap.dedent('''
    import sys, time
    from gptjax.runs import workdir_lock
    workdir_lock.prepare(sys.argv[1])
    lock = workdir_lock.WorkdirLock(sys.argv[1])
    lock.acquire()
    print('holding', flush=True)
    time.sleep(120)
''')


def flip_middle_byte(path) -> None:
  """Flips the lowest bit of the byte in the middle of `path`; its size stays the same."""
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x01]))


def hold_workdir(directory) -> subprocess.Popen:
  """A process that holds `directory`'s lock until killed; returns once it holds it."""
  process = subprocess.Popen([sys.executable, '-c', _HOLD, str(directory)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
  assert process.stdout.readline() == 'holding\n'
  return process
