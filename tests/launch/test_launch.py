"""The launch scripts: syntax, the commands they issue, argument forwarding; SLURM GPU binding and
what `jax.distributed.initialize` is called with.

No cloud or cluster is touched: `gcloud`, `srun` and the Python interpreter are replaced by stubs
that record how they were called. The multi-host training path itself is tested end to end in
tests/parallel/test_multihost.py.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import stat
import subprocess
import sys

import jax
import ml_collections
import pytest

from gptjax.parallel import distributed
from gptjax.runs import run_dir

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = ROOT / 'launch'
SCRIPTS = ('local.sh', 'tpu_vm.sh', 'slurm.sbatch')


def _stub(directory: pathlib.Path, name: str, body: str) -> None:
  """An executable `name` in `directory` that logs its arguments to `directory/calls`.

  The line is built first and appended in one write: stubs started side by side (local.sh's
  processes) would otherwise interleave their pieces.
  """
  path = directory / name
  path.write_text('#!/bin/bash\n'
                  f'line="$(printf %s {name}; printf " %q" "$@")"\n'
                  f'echo "$line" >> {shlex.quote(str(directory / "calls"))}\n' + body)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _bash(args: list[str], env_extra: dict | None = None, cwd=ROOT) -> subprocess.CompletedProcess:
  env = {**os.environ, **(env_extra or {})}
  return subprocess.run(['bash', *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=60)


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_parse(script):
  result = _bash(['-n', str(LAUNCH / script)])
  assert result.returncode == 0, result.stderr


TPU_ARGS = ['--name=gptjax-test', '--zone=us-central2-b', '--accelerator-type=v4-32',
            '--config=experiments/configs/gpt2.py:124m', '--workdir=gs://a-bucket/runs/gpt2',
            '--queued', '--delete']


def test_tpu_vm_dry_run_prints_every_command_and_runs_none(tmp_path):
  _stub(tmp_path, 'gcloud', 'exit 99\n')  # would fail the script if --dry-run ran anything
  result = _bash([str(LAUNCH / 'tpu_vm.sh'), '--dry-run', *TPU_ARGS, '--',
                  '--config.mesh.fsdp=16', '--config.train.num_steps=100'],
                 {'PATH': f'{tmp_path}:{os.environ["PATH"]}', 'TMPDIR': str(tmp_path)})
  assert result.returncode == 0, result.stderr
  assert not (tmp_path / 'calls').exists(), 'a dry run called gcloud'
  gcloud = [line for line in result.stdout.splitlines() if line.startswith('+ gcloud ')]
  assert 'queued-resources create gptjax-test' in gcloud[0]
  assert '--accelerator-type=v4-32' in gcloud[0] and '--runtime-version=' in gcloud[0]
  [train] = [line for line in gcloud if 'gptjax.main' in line]
  for piece in ('tpu-vm ssh gptjax-test', '--worker=all', '--config=experiments/configs/gpt2.py:124m',
                '--workdir=~/gcs/a-bucket/runs/gpt2', '--config.distributed.enabled=True',
                '--config.mesh.fsdp=16', '--config.train.num_steps=100'):
    assert piece in train, (piece, train)
  setup = [line for line in gcloud if 'ssh' in line and 'gptjax.main' not in line]
  assert setup and all('--worker=all' in line for line in setup)
  assert any('pip install' in line and '.[tpu]' in line for line in setup)
  assert any('gcsfuse' in line for line in setup)
  fetch = [line for line in gcloud if 'tpu-vm scp gptjax-test:' in line]
  assert fetch and all('--worker=0' in line for line in fetch)
  assert run_dir.CONFIG_FILE in fetch[0] and run_dir.METRICS_FILE in fetch[0]
  assert 'queued-resources delete gptjax-test' in gcloud[-1]


def test_tpu_vm_runs_the_gcloud_commands_it_prints(tmp_path):
  # A git URL avoids packing the checkout; the stub reports the queued resource ACTIVE.
  _stub(tmp_path, 'gcloud', 'if [[ "$*" == *describe* ]]; then echo ACTIVE; fi\n')
  args = [*TPU_ARGS, '--repo=https://example.com/gptjax.git', '--workdir=/mnt/shared/runs/gpt2',
          f'--fetch-to={tmp_path}/results', '--extra=--config.train.num_steps=5']
  env = {'PATH': f'{tmp_path}:{os.environ["PATH"]}'}
  dry = _bash([str(LAUNCH / 'tpu_vm.sh'), '--dry-run', *args], env)
  real = _bash([str(LAUNCH / 'tpu_vm.sh'), *args], env)
  assert real.returncode == 0, real.stderr
  calls = (tmp_path / 'calls').read_text().splitlines()
  printed = [shlex.split(line[2:]) for line in dry.stdout.splitlines() if line.startswith('+ gcloud')]
  assert [shlex.split(call) for call in calls] == printed
  assert (tmp_path / 'results').is_dir()


@pytest.mark.parametrize('args, message', [
    (['--zone=z', '--accelerator-type=v4-8', '--config=c', '--workdir=w'], '--name is required'),
    (['--name=n', '--zone=z', '--config=c', '--workdir=w'], '--accelerator-type is required'),
    (['--name=n', '--zone=z', '--steps=run', '--workdir=w'], '--config is required'),
    (['--name=n', '--zone=z', '--steps=run,train'], "unknown step 'train'"),
    (['--name=n', '--zone=z', '--config.model.d_model=64'], 'after --'),
])
def test_tpu_vm_refuses_bad_arguments(args, message):
  result = _bash([str(LAUNCH / 'tpu_vm.sh'), '--dry-run', *args])
  assert result.returncode == 2 and message in result.stderr, result.stderr


def _fake_python(directory: pathlib.Path) -> pathlib.Path:
  """Records gptjax.main's arguments and environment; runs real Python for `-c` snippets."""
  _stub(directory, 'python', f'if [[ "$1" == -c ]]; then exec {shlex.quote(sys.executable)} "$@"; fi\n'
                             'echo "env JAX_PLATFORMS=$JAX_PLATFORMS XLA_FLAGS=$XLA_FLAGS" >> '
                             f'{shlex.quote(str(directory / "calls"))}\n')
  return directory / 'python'


def test_local_sh_sets_devices_and_forwards_overrides(tmp_path):
  python = _fake_python(tmp_path)
  result = _bash([str(LAUNCH / 'local.sh'), f'--python={python}', '--devices=8',
                  '--config.train.num_steps=5'], cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  call, env = (tmp_path / 'calls').read_text().splitlines()
  assert call.split()[1:] == ['-m', 'gptjax.main', f'--config={ROOT}/experiments/configs/tiny.py',
                              '--workdir=runs/tiny', '--config.train.num_steps=5']
  assert 'JAX_PLATFORMS=cpu' in env and '--xla_force_host_platform_device_count=8' in env


def test_local_sh_starts_one_process_per_simulated_host(tmp_path):
  python = _fake_python(tmp_path)
  result = _bash([str(LAUNCH / 'local.sh'), f'--python={python}', '--processes=3', '--devices=2',
                  '--workdir=w'], cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  calls = [line for line in (tmp_path / 'calls').read_text().splitlines()
           if 'gptjax.main' in line]
  assert len(calls) == 3
  ids = sorted(int(line.split('process_id=')[1].split()[0]) for line in calls)
  assert ids == [0, 1, 2]
  coordinators = {line.split('coordinator_address=')[1].split()[0] for line in calls}
  assert len(coordinators) == 1 and coordinators.pop().startswith('localhost:')
  assert all('--config.distributed.num_processes=3' in line for line in calls)


def test_slurm_sbatch_runs_one_srun_with_distributed_enabled(tmp_path):
  _stub(tmp_path, 'srun', '')
  result = _bash([str(LAUNCH / 'slurm.sbatch'), 'experiments/configs/tiny.py', str(tmp_path / 'run'),
                  '--config.mesh.data=2', '--config.mesh.fsdp=8'],
                 {'PATH': f'{tmp_path}:{os.environ["PATH"]}', 'SLURM_SUBMIT_DIR': str(ROOT)})
  assert result.returncode == 0, result.stderr
  [call] = (tmp_path / 'calls').read_text().splitlines()
  assert call.split()[:4] == ['srun', '--kill-on-bad-exit=1', 'python3', '-m']
  for piece in ('gptjax.main', '--config=experiments/configs/tiny.py', '--config.mesh.fsdp=8',
                '--config.distributed.enabled=True', f'--workdir={tmp_path}/run'):
    assert piece in call
  text = (LAUNCH / 'slurm.sbatch').read_text()
  assert '#SBATCH --gpus-per-task=1' in text and '#SBATCH --ntasks-per-node=' in text


@pytest.mark.parametrize('visible, local_id, expected', [
    (None, '3', None),  # no GPU binding information: JAX's default
    ('5', '3', [0]),  # --gpus-per-task=1: the task's one GPU is ordinal 0 inside it
    ('0,1,2,3,4,5,6,7', '3', None),  # every task sees the node's GPUs: JAX picks GPU 3
])
def test_slurm_gpu_binding(monkeypatch, visible, local_id, expected):
  monkeypatch.setenv('SLURM_LOCALID', local_id)
  if visible is None:
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
  else:
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', visible)
  assert distributed._slurm_local_device_ids() == expected


def test_slurm_gpu_binding_refuses_a_task_without_a_gpu(monkeypatch):
  monkeypatch.setenv('SLURM_LOCALID', '3')
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0,1')
  with pytest.raises(ValueError, match='SLURM_LOCALID=3'):
    distributed._slurm_local_device_ids()


def test_no_slurm_no_binding(monkeypatch):
  monkeypatch.delenv('SLURM_LOCALID', raising=False)
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '5')
  assert distributed._slurm_local_device_ids() is None


# A 2-node job, 4 GPUs per node, one task per GPU: the environment `srun` gives task 6, the third
# task of the second node (gpu018).
SLURM_JOB = {'SLURM_JOB_ID': '4242', 'SLURM_JOB_NODELIST': 'gpu[017-018]',
             'SLURM_STEP_NODELIST': 'gpu[017-018]', 'SLURM_JOB_NUM_NODES': '2',
             'SLURM_STEP_NUM_NODES': '2', 'SLURM_NTASKS': '8', 'SLURM_NTASKS_PER_NODE': '4',
             'SLURM_PROCID': '6', 'SLURM_LOCALID': '2', 'SLURM_NODEID': '1'}
SLURM_PORT = 4242 % 2**12 + 65535 - 2**12 + 1  # JAX's SLURM coordinator port: from the job id


def _dist_config(**fields) -> ml_collections.ConfigDict:
  from experiments.configs import base
  config = base.get_config().distributed
  config.update(fields)
  return config


@pytest.fixture
def jax_initialize(monkeypatch):
  """Replaces `jax.distributed.initialize`; returns the list of its calls, each as
  (the keyword arguments, the (coordinator, process count, process id, local device ids) that JAX
  makes of them by filling the unset ones from the cluster environment, as it does at start-up).
  """
  from jax._src import clusters
  calls = []

  def initialize(**kwargs):
    resolved = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        kwargs.get('coordinator_address'), kwargs.get('num_processes'), kwargs.get('process_id'),
        kwargs.get('local_device_ids'), None, 10)
    calls.append((kwargs, resolved))

  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_COORDINATOR_PORT', 'JAX_LOCAL_DEVICE_IDS',
               'OMPI_MCA_orte_hnp_uri', *SLURM_JOB, 'SLURM_STEP_GPUS', 'CUDA_VISIBLE_DEVICES'):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(jax.distributed, 'initialize', initialize)
  collectives = jax.config.jax_cpu_collectives_implementation
  yield calls
  jax.config.update('jax_cpu_collectives_implementation', collectives)


def test_initialize_is_a_no_op_when_disabled(jax_initialize, monkeypatch):
  for name, value in SLURM_JOB.items():
    monkeypatch.setenv(name, value)
  distributed.initialize(_dist_config(enabled=False, coordinator_address='gpu017:1234',
                                      num_processes=8, process_id=6))
  assert jax_initialize == []


@pytest.mark.parametrize('gpus, local_device_ids', [
    ('2', [0]),  # --gpus-per-task=1: the task's one GPU is ordinal 0 inside it
    ('0,1,2,3', [2]),  # --gpus-per-node=4: every task sees the node's GPUs and drives GPU LOCALID
])
def test_initialize_under_slurm_leaves_the_job_layout_to_jax(jax_initialize, monkeypatch, gpus,
                                                             local_device_ids):
  for name, value in SLURM_JOB.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setenv('SLURM_STEP_GPUS', gpus)
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', gpus)
  distributed.initialize(_dist_config(enabled=True))
  [(kwargs, resolved)] = jax_initialize
  assert kwargs == ({'local_device_ids': [0]} if gpus == '2' else {})
  assert resolved == (f'gpu017:{SLURM_PORT}', 8, 6, local_device_ids)


@pytest.mark.parametrize('process_id', [0, 1])
def test_initialize_passes_explicit_fields(jax_initialize, monkeypatch, process_id):
  config = _dist_config(enabled=True, coordinator_address='10.1.2.3:8476', num_processes=2,
                        process_id=process_id)
  distributed.initialize(config)
  for name, value in SLURM_JOB.items():  # explicit fields win over what SLURM says
    monkeypatch.setenv(name, value)
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '2')
  distributed.initialize(config)
  explicit = {'coordinator_address': '10.1.2.3:8476', 'num_processes': 2, 'process_id': process_id}
  assert jax_initialize == [
      (explicit, ('10.1.2.3:8476', 2, process_id, None)),
      ({**explicit, 'local_device_ids': [0]}, ('10.1.2.3:8476', 2, process_id, [0]))]
