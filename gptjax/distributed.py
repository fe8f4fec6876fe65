"""Multi-host start-up: one process per host (TPU) or per GPU (SLURM), joined by jax.distributed."""

import os

import jax
import ml_collections
from absl import logging


def initialize(dist_config: ml_collections.ConfigDict) -> None:
  """Calls `jax.distributed.initialize` when configured.

  Empty fields are left for JAX to detect: on Cloud TPU VMs and under SLURM (`srun`) it reads the
  coordinator, process count and process id from the environment those systems provide.
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
  if os.environ.get('JAX_PLATFORMS', '') == 'cpu' or jax.config.jax_platforms == 'cpu':
    # CPU devices only talk to other processes through a collectives backend.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices.',
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
