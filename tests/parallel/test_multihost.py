"""Multi-host training on one machine: 2 processes x 4 CPU devices must train like 1 process x 8.

Each run is a real `python -m gptjax.main` subprocess, joined by jax.distributed over localhost and
gloo, so this covers what a pod does: process-local batch rows assembled into global arrays,
cross-process collectives, one metrics writer, and orbax checkpoints, data iterator states and the
token cache in one workdir shared by every process. The multi-host run is stopped part way and
resumed in the same workdir; the one-process run trains straight through.

Tolerance: losses and norms agree to rtol=1e-5 (about 80 float32 ulps). The runs sum gradients and
losses in different orders (a gloo all-reduce across processes vs. one XLA program), so bitwise
equality is not expected; a real fault (wrong batch rows, a missing or doubled reduction, a bad
restore) moves the loss by 1e-3 or more. Seen on a 2-core machine: differences below 3e-7 relative.

The checks that share launches live in one test function, so that pytest-xdist (`-n 2`) cannot
split them over two workers and run the costly launches twice. A second test covers a tensor axis
that spans processes (one device per process, as with one process per GPU under SLURM).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT_S = 240  # 15-40 s on 2 idle cores, over 100 s on shared ones; a hang must not stall
STEPS = 8
EVERY = 4  # eval and checkpoint interval; without a SIGTERM the multi-host run stops at step EVERY
# Small enough to compile in seconds, large enough that every mesh axis is used: data=2 x fsdp=4
# splits the batch and the parameters across the two processes.
OVERRIDES = (
    '--config=experiments/configs/tiny.py',
    '--config.model.d_model=64',
    '--config.model.num_layers=1',
    '--config.data.max_corpus_bytes=300000',
    '--config.train.schedule=constant',  # a run stopped early must see the same learning rates
    '--config.train.warmup_steps=2',
    '--config.train.log_every=1',
    f'--config.train.eval_every={EVERY}',
    '--config.train.eval_batches=2',
    f'--config.train.checkpoint_every={EVERY}',
    '--config.mesh.data=2',
    '--config.mesh.fsdp=4',
)

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _tail(path: pathlib.Path, lines: int = 25) -> str:
  """The end of a log, without gloo's per-rank connection chatter."""
  text = path.read_text(errors='replace').splitlines() if path.exists() else ['<no log>']
  return '\n'.join([line for line in text if not line.startswith('[Gloo]')][-lines:])


@dataclasses.dataclass
class _Launch:
  name: str
  procs: list[subprocess.Popen]
  logs: list[pathlib.Path]
  sigterm_process: int | None  # gets a SIGTERM once process 0 has logged a step, as if preempted
  status: int  # the exit status every process must end with: 75 where stopped by a signal


def _start(workdir: pathlib.Path, logs: pathlib.Path, name: str, *, processes: int, devices: int,
           steps: int, sigterm_process: int | None = None,
           overrides: tuple[str, ...] = OVERRIDES) -> _Launch:
  """Starts `processes` copies of gptjax.main, one per simulated host, logging to files."""
  # Compiling dominates these runs; LLVM's optimisations cost a third of the CPU time and buy
  # nothing at these sizes (the losses are the same).
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONUNBUFFERED': '1',
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices} '
                      '--xla_backend_optimization_level=0'}
  args = [sys.executable, '-m', 'gptjax.main', *overrides, f'--workdir={workdir}',
          f'--config.train.num_steps={steps}']
  if processes > 1:
    args += ['--config.distributed.enabled=True',
             f'--config.distributed.coordinator_address=localhost:{_free_port()}',
             f'--config.distributed.num_processes={processes}']
  launch = _Launch(name, [], [logs / f'{name}.process{i}.log' for i in range(processes)],
                   sigterm_process, status=0 if sigterm_process is None else 75)
  for i, log_path in enumerate(launch.logs):
    extra = [f'--config.distributed.process_id={i}'] if processes > 1 else []
    with open(log_path, 'w') as log:
      launch.procs.append(subprocess.Popen(args + extra, cwd=ROOT, env=env, stdout=log,
                                           stderr=subprocess.STDOUT))
  return launch


def _wait(*launches: _Launch) -> list[list[str]]:
  """Waits for every process; returns each launch's logs.

  Every process is killed if any fails or they outlive LAUNCH_TIMEOUT_S, and the failure shows the
  end of each failed launch's logs.
  """
  procs = [p for launch in launches for p in launch.procs]
  expected = {id(p): launch.status for launch in launches for p in launch.procs}
  deadline = time.monotonic() + LAUNCH_TIMEOUT_S
  try:
    while any(p.poll() is None for p in procs):
      if (any(p.returncode not in (None, expected[id(p)]) for p in procs)
          or time.monotonic() > deadline):
        break
      for launch in launches:
        if (launch.sigterm_process is not None and
            ' | loss ' in launch.logs[0].read_text(errors='replace')):
          launch.procs[launch.sigterm_process].send_signal(signal.SIGTERM)
          launch.sigterm_process = None
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  failures = []
  for launch in launches:
    codes = [p.returncode for p in launch.procs]
    if any(code != launch.status for code in codes):
      failures.append(f'{launch.name}: exit codes {codes}\n' + '\n'.join(
          f'--- {path.name} (exit {code}) ---\n{_tail(path)}'
          for path, code in zip(launch.logs, codes)))
  if failures:
    pytest.fail(f'Unexpected exit codes (negative: killed after {LAUNCH_TIMEOUT_S} s or by a '
                'signal; all are killed once one fails).\n' + '\n'.join(failures), pytrace=False)
  return [[path.read_text(errors='replace') for path in launch.logs] for launch in launches]


def _records(workdir: pathlib.Path) -> list[dict]:
  with open(workdir / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


def _check_losses_match(multi: list[dict], single: list[dict]) -> None:
  assert [r['step'] for r in multi] == [r['step'] for r in single] == list(range(1, STEPS + 1))
  for key in ('train_loss', 'grad_norm', 'param_norm'):
    np.testing.assert_allclose([r[key] for r in multi], [r[key] for r in single], rtol=1e-5,
                               err_msg=f'{key}: 2 processes x 4 devices vs 1 process x 8 devices')
  evals = lambda records: [(r['step'], r['eval_loss']) for r in records if 'eval_loss' in r]
  assert [s for s, _ in evals(multi)] == [s for s, _ in evals(single)] == [EVERY, STEPS]
  np.testing.assert_allclose([loss for _, loss in evals(multi)],
                             [loss for _, loss in evals(single)], rtol=1e-5, err_msg='eval_loss')
  assert single[-1]['train_loss'] < single[0]['train_loss'] - 0.3  # it trained at all


def _check_shared_workdir(workdir: pathlib.Path, stop: int, logs: list[str]) -> None:
  checkpoints = workdir / 'checkpoints'
  steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  assert steps == sorted({stop, EVERY, STEPS}), steps
  for step in steps:  # every process saved its own data iterator position
    names = sorted(p.name for p in (checkpoints / str(step) / 'data').glob('process_*.json'))
    assert names == ['process_0-of-2.json', 'process_1-of-2.json'], (step, names)
  assert not [p for p in checkpoints.iterdir() if 'tmp' in p.name], 'unfinished checkpoint left'
  for i, log in enumerate(logs):
    assert f'Resumed from the checkpoint at step {stop}' in log, f'process {i} did not resume'
  caches = list((workdir / 'data').iterdir())
  assert len(caches) == 1, caches
  assert sorted(p.name for p in caches[0].iterdir()) == ['meta.json', 'train.bin',
                                                          'validation.bin']
  # Only process 0 writes metrics: two writers appending to one file would duplicate steps.
  steps_logged = [r['step'] for r in _records(workdir)]
  assert steps_logged == sorted(set(steps_logged)), steps_logged
  assert ' | loss ' not in logs[1], 'process 1 logged training progress'
  assert (workdir / 'config.json').exists()


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  single, multi = tmp_path / 'single', tmp_path / 'multi'
  # The one-process baseline runs beside the first multi-host launch: they share no files.
  baseline = _start(single, tmp_path, 'single', processes=1, devices=8, steps=STEPS)
  # preempt process 1 only: both must agree on one step, save there and exit 75 (stopped, resume)
  _, first = _wait(baseline, _start(multi, tmp_path, 'multi_preempted', processes=2, devices=4,
                                    steps=STEPS, sigterm_process=1))
  stops = [re.findall(r'Stopped at step (\d+)', log) for log in first]
  assert stops[0] == stops[1] and len(stops[0]) == 1, f'processes stopped at {stops}'
  stop = int(stops[0][0])
  assert stop < STEPS, f'SIGTERM came too late to test resuming (stopped at {stop})'
  [resumed] = _wait(_start(multi, tmp_path, 'multi_resumed', processes=2, devices=4, steps=STEPS))
  _check_losses_match(_records(multi), _records(single))
  _check_shared_workdir(multi, stop, resumed)


@pytest.mark.slow
def test_tensor_axis_across_processes(tmp_path):
  """One device per process and tensor=2, as with one process per GPU: both load the same rows."""
  overrides = (*(o for o in OVERRIDES if not o.startswith('--config.mesh.')),
               '--config.mesh.data=1', '--config.mesh.tensor=2')
  runs = {'single': (1, 2), 'multi': (2, 1)}  # processes, devices per process
  _wait(*(_start(tmp_path / name, tmp_path, name, processes=p, devices=d, steps=EVERY,
                 overrides=overrides) for name, (p, d) in runs.items()))
  single, multi = _records(tmp_path / 'single'), _records(tmp_path / 'multi')
  for key, steps in (('train_loss', list(range(1, EVERY + 1))), ('eval_loss', [EVERY])):
    assert [r['step'] for r in multi if key in r] == [r['step'] for r in single if key in r] == steps
    np.testing.assert_allclose([r[key] for r in multi if key in r],
                               [r[key] for r in single if key in r], rtol=1e-5, err_msg=key)
