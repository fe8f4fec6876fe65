"""Multi-host training on one machine: 2 processes x 4 CPU devices must train like 1 process x 8.

Each run is a real `python -m gptjax.main` subprocess, joined by jax.distributed over localhost and
gloo, so this covers what a pod does: process-local batch rows assembled into global arrays,
cross-process collectives, one metrics writer, and orbax checkpoints, the data iterator state and
the token cache in one workdir shared by every process. The multi-host run stops at step 3 and is
resumed to step 6 in that same workdir; the one-process run goes to step 6 without stopping.

Tolerance: losses agree to rtol=1e-5 (about 80 float32 ulps). The two runs sum gradients and losses
in different orders (gloo all-reduce across processes vs. one XLA program), so bitwise equality is
not expected; a real fault (wrong batch rows, a missing or doubled reduction, a bad restore) moves the
loss by 1e-3 or more. Seen on a 2-core machine: differences below 2e-7 relative.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 100  # one launch takes ~20-30 s on 2 cores; a hang must not stall the suite
STEPS = 6
STOP_AT = 3  # the multi-host run is stopped here, then resumed in the same workdir
# Small enough to compile and train in seconds, large enough that every mesh axis is sharded:
# data=2 x fsdp=4 splits both the batch and the parameters across the two processes.
OVERRIDES = (
    '--config=experiments/configs/tiny.py',
    '--config.model.d_model=64',
    '--config.model.num_layers=1',
    '--config.data.max_corpus_bytes=300000',
    '--config.train.schedule=constant',  # stopping at STOP_AT must not change the learning rates
    '--config.train.warmup_steps=2',
    '--config.train.log_every=1',
    f'--config.train.eval_every={STOP_AT}',
    '--config.train.eval_batches=2',
    f'--config.train.checkpoint_every={STOP_AT}',
    '--config.mesh.data=2',
    '--config.mesh.fsdp=4',
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _tail(path: pathlib.Path, lines: int = 25) -> str:
  """The end of a log without gloo's per-rank connection chatter."""
  text = path.read_text(errors='replace').splitlines() if path.exists() else ['<no log>']
  return '\n'.join([line for line in text if not line.startswith('[Gloo]')][-lines:])


def _run(workdir: pathlib.Path, logs: pathlib.Path, name: str, *, processes: int, devices: int,
         steps: int) -> list[pathlib.Path]:
  """Runs `processes` copies of gptjax.main to completion; returns their log paths.

  Every process is killed if any fails or the launch outlives LAUNCH_TIMEOUT_S, and the failure
  shows the end of each process's log.
  """
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONUNBUFFERED': '1',
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
         # The resumed launch compiles the same programs again: take them from a disk cache.
         'JAX_COMPILATION_CACHE_DIR': str(logs / 'jax_cache')}
  args = [sys.executable, '-m', 'gptjax.main', *OVERRIDES, f'--workdir={workdir}',
          f'--config.train.num_steps={steps}']
  if processes > 1:
    args += ['--config.distributed.enabled=True',
             f'--config.distributed.coordinator_address=localhost:{_free_port()}',
             f'--config.distributed.num_processes={processes}']
  log_paths = [logs / f'{name}.process{i}.log' for i in range(processes)]
  procs = []
  try:
    for i, log_path in enumerate(log_paths):
      extra = [f'--config.distributed.process_id={i}'] if processes > 1 else []
      with open(log_path, 'w') as log:
        procs.append(subprocess.Popen(args + extra, cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while any(p.poll() is None for p in procs):
      failed = [p for p in procs if p.returncode not in (None, 0)]
      if failed or time.monotonic() > deadline:
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  codes = [p.returncode for p in procs]
  if any(codes):
    report = '\n'.join(f'--- {path.name} (exit {code}) ---\n{_tail(path)}'
                       for path, code in zip(log_paths, codes))
    pytest.fail(f'{name}: exit codes {codes} (negative: killed after {LAUNCH_TIMEOUT_S} s or by a '
                f'signal; the others are killed once one fails).\n{report}', pytrace=False)
  return log_paths


def _records(workdir: pathlib.Path) -> list[dict]:
  with open(workdir / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> dict:
  tmp = tmp_path_factory.mktemp('multihost')
  single, multi = tmp / 'single', tmp / 'multi'
  started = time.perf_counter()
  _run(single, tmp, 'single', processes=1, devices=8, steps=STEPS)
  first = _run(multi, tmp, 'multi_to_step3', processes=2, devices=4, steps=STOP_AT)
  resumed = _run(multi, tmp, 'multi_resumed', processes=2, devices=4, steps=STEPS)
  print(f'3 launches took {time.perf_counter() - started:.1f} s')
  return {'single': single, 'multi': multi, 'first_logs': first, 'resumed_logs': resumed}


def test_two_processes_match_one_process(runs):
  single, multi = _records(runs['single']), _records(runs['multi'])
  assert [r['step'] for r in multi] == [r['step'] for r in single] == list(range(1, STEPS + 1))
  for key in ('train_loss', 'grad_norm', 'param_norm'):
    np.testing.assert_allclose([r[key] for r in multi], [r[key] for r in single], rtol=1e-5,
                               err_msg=f'{key}: 2 processes x 4 devices vs 1 process x 8 devices')
  evals = lambda records: [(r['step'], r['eval_loss']) for r in records if 'eval_loss' in r]
  assert [s for s, _ in evals(multi)] == [s for s, _ in evals(single)] == [STOP_AT, STEPS]
  np.testing.assert_allclose([l for _, l in evals(multi)], [l for _, l in evals(single)],
                             rtol=1e-5)
  assert single[-1]['train_loss'] < single[0]['train_loss'] - 0.3  # it trained at all


def test_only_process_0_writes_metrics(runs):
  # Two writers appending to one file would duplicate every step.
  steps = [r['step'] for r in _records(runs['multi'])]
  assert steps == sorted(set(steps)), steps
  for log in runs['first_logs'][1:] + runs['resumed_logs'][1:]:
    assert ' | loss ' not in log.read_text(), f'{log.name} logged training progress'
  assert (runs['multi'] / 'config.json').exists()


def test_shared_workdir_checkpoints_and_token_cache(runs):
  multi = runs['multi']
  checkpoints = multi / 'checkpoints'
  assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [STOP_AT, STEPS]
  for step in (STOP_AT, STEPS):  # each process saved its own data iterator position
    names = sorted(p.name for p in (checkpoints / str(step) / 'data').glob('process_*.json'))
    assert names == ['process_0-of-2.json', 'process_1-of-2.json'], names
  assert not [p for p in checkpoints.iterdir() if 'tmp' in p.name], 'unfinished checkpoint left'
  for log in runs['resumed_logs']:
    assert f'Resumed from the checkpoint at step {STOP_AT}' in log.read_text(), log.name
  caches = list((multi / 'data').iterdir())
  assert len(caches) == 1, caches
  assert sorted(p.name for p in caches[0].iterdir()) == ['meta.json', 'train.bin',
                                                          'validation.bin']
