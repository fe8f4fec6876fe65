"""Multi-host start-up: one process per host (TPU) or per GPU (SLURM), joined by jax.distributed.

After `initialize`, every process sees all devices of the job in `jax.devices()` but drives only its
own (`jax.local_devices()`); `jax.process_index()` tells it which rows of each global batch to load.
"""

import os

import jax
import ml_collections
from absl import logging


def _slurm_local_device_ids() -> list[int] | None:
  """The GPU a SLURM task should drive when SLURM bound exactly one GPU to it, else None.

  JAX's SLURM detection gives task `SLURM_LOCALID` the GPU of that ordinal, which assumes every
  task sees all GPUs of its node. Under `--gpus-per-task=1` SLURM binds one GPU to each task, so
  `CUDA_VISIBLE_DEVICES` names a single GPU, CUDA numbers it 0 inside the task, and ordinal
  `SLURM_LOCALID` would not exist for tasks 1..N-1 (CUDA_ERROR_INVALID_DEVICE).
  """
  if 'SLURM_LOCALID' not in os.environ:
    return None
  visible = [v for v in os.environ.get('CUDA_VISIBLE_DEVICES', '').split(',') if v.strip()]
  if len(visible) == 1:
    return [0]
  local_id = int(os.environ['SLURM_LOCALID'])
  if visible and local_id >= len(visible):
    raise ValueError(
        f'SLURM task with SLURM_LOCALID={local_id} sees only CUDA_VISIBLE_DEVICES={",".join(visible)}, '
        'so it has no GPU of its own. Launch one task per GPU (--ntasks-per-node equal to the GPUs '
        'per node) with either --gpus-per-task=1 or --gpus-per-node=<all of them>.')
  return None  # every task sees the node's GPUs: JAX's default (GPU SLURM_LOCALID) is right


def configure_cpu_devices(count: int) -> None:
  """Splits a CPU-only host into `count` XLA devices (0 keeps JAX's default); call before any
  JAX computation.

  Each CPU device then runs its share of the batch as its own stream of ops, which helps small
  models, whose single chain of small products leaves a core idle part of the time (BENCHMARKS.md
  has the measured effect).
  It only changes the CPU platform, so it is harmless where an accelerator is the default backend.
  """
  if count < 0:
    raise ValueError(f'mesh.cpu_devices={count} must be 0 (JAX\'s default) or a device count.')
  if count == 0:
    return
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError as error:
    raise RuntimeError(
        f'mesh.cpu_devices={count} came too late: JAX had already started its backends. Call '
        'gptjax.parallel.distributed.configure_cpu_devices before any JAX computation '
        '(gptjax.main does).'
    ) from error


def initialize(dist_config: ml_collections.ConfigDict) -> None:
  """Calls `jax.distributed.initialize` when configured; must run before anything touches devices.

  Empty fields are left for JAX to detect: on Cloud TPU VMs it asks the TPU metadata server, and
  under SLURM (`srun`) it reads SLURM_JOB_ID (coordinator port), SLURM_STEP_NODELIST (its first node
  hosts the coordinator), SLURM_NTASKS (process count), SLURM_PROCID (process id) and SLURM_LOCALID
  (which GPU of the node).
  """
  if not dist_config.enabled:
    return
  kwargs = {}
  if dist_config.coordinator_address:
    kwargs['coordinator_address'] = dist_config.coordinator_address
  if dist_config.num_processes > 0:
    kwargs['num_processes'] = dist_config.num_processes
  if dist_config.process_id >= 0:
    kwargs['process_id'] = dist_config.process_id
  local_device_ids = _slurm_local_device_ids()
  if local_device_ids is not None:
    kwargs['local_device_ids'] = local_device_ids
  if os.environ.get('JAX_PLATFORMS', '') == 'cpu' or jax.config.jax_platforms == 'cpu':
    # CPU devices reach other processes only through a collectives backend. jax 0.10 already
    # defaults to gloo; naming it keeps installs whose default is 'none' from failing at the
    # first cross-process collective.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices.',
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
