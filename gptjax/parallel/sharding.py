"""Device mesh and shardings from the config: the only place mesh axes meet the model's logical axes.

The mesh has three axes: 'data' (pure data parallel: params replicated), 'fsdp' (data parallel with
params and optimizer state sharded, gathered per layer by XLA) and 'tensor' (Megatron-style split of
heads and MLP width). `config.mesh.rules` maps each logical axis name the model uses to mesh axes.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # the global batch is split over every data-parallel axis

Rules = tuple[tuple[str, Any], ...]


def resolve_mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Axis sizes with at most one -1 filled in; refuses a mesh that does not use every device."""
  sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
  wildcards = [axis for axis, size in zip(MESH_AXES, sizes) if size == -1]
  if len(wildcards) > 1:
    raise ValueError(f'Only one mesh axis may be -1, got {wildcards} in mesh {dict(zip(MESH_AXES, sizes))}.')
  if any(size == 0 or size < -1 for size in sizes):
    raise ValueError(f'Mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}.')
  known = math.prod(size for size in sizes if size != -1)
  if wildcards:
    if num_devices % known:
      raise ValueError(
          f'The mesh {dict(zip(MESH_AXES, sizes))} cannot fill {num_devices} devices: the fixed axes '
          f'multiply to {known}, which does not divide {num_devices}. Change the fixed sizes.')
    sizes[MESH_AXES.index(wildcards[0])] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f'The mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but '
        f'{num_devices} are available. Set the axis sizes to multiply to {num_devices}, '
        'or set one of them to -1.')
  return tuple(sizes)


def make_mesh(mesh_config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_config, len(devices))
  try:  # a topology-aware layout puts the fast axes on neighbouring chips
    device_array = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, AssertionError, NotImplementedError):
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def logical_rules(mesh_config: ml_collections.ConfigDict) -> Rules:
  rules = []
  for logical, mesh_axes in mesh_config.rules:
    axes = (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
    unknown = [a for a in (axes or ()) if a not in MESH_AXES]
    if unknown:
      raise ValueError(f'Rule for logical axis {logical!r} names unknown mesh axes {unknown}; '
                       f'mesh axes are {MESH_AXES}.')
    rules.append((logical, tuple(mesh_axes) if isinstance(mesh_axes, (list, tuple)) else mesh_axes))
  return tuple(rules)


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree whose leaves may be flax `LogicallyPartitioned` boxes.

  Leaves without names (step counters, optimizer scalars) are replicated.
  """
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def traced_under(mesh: Mesh, rules: Rules, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
  """`fn`, traced with `mesh` and the logical-axis `rules` in context whoever first calls its jit.

  The model's activation constraints (and the fused CPU attention's per-device split) read both
  at trace time; without them a constraint silently does nothing. Wrapping the step keeps that
  true for a caller that lowers it outside `jax.set_mesh` (a benchmark, a test).
  """
  def traced(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
      return fn(*args)
  traced.__name__ = name
  return traced


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
  """K batches stacked on a leading axis (`steps.train_steps`): each split as `batch_sharding`."""
  return NamedSharding(mesh, PartitionSpec(None, BATCH_AXES, None))


def batch_shards(mesh: Mesh) -> int:
  """How many parts the batch rows are split into: the product of the data-parallel axes."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def process_batch_block(batch_sharding: NamedSharding, global_batch: int,
                        row_length: int) -> tuple[int, int]:
  """(block, num_blocks): this process loads block `block` of `num_blocks` equal parts of a batch.

  When the batch is split over every process, the block is the process index. Processes whose
  devices hold the same rows (a 'tensor' axis that spans processes, as with one process per GPU and
  tensor=2) must feed identical data, so they share a block; giving each its own rows would train
  the two halves of a layer on different inputs. jax.make_array_from_process_local_data then places
  the block's rows on the process's devices.
  """
  rows = collections.defaultdict(set)
  for device, index in batch_sharding.devices_indices_map((global_batch, row_length)).items():
    rows[device.process_index].update(range(*index[0].indices(global_batch)))
  blocks = sorted({tuple(sorted(r)) for r in rows.values()})
  covered = [row for block in blocks for row in block]
  if len(set(covered)) != len(covered) or len({len(block) for block in blocks}) != 1:
    raise ValueError(
        f'The mesh {dict(batch_sharding.mesh.shape)} gives processes overlapping but different '
        'rows of the global batch, which per-process loading cannot feed. Keep the tensor axis '
        'within a host, or make data x fsdp a multiple of the number of processes.')
  return blocks.index(tuple(sorted(rows[jax.process_index()]))), len(blocks)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_divisible(abstract_tree: Any, shardings: Any, mesh: Mesh) -> None:
  """Refuses parameters whose dimensions do not split evenly over the mesh axes they map to."""
  problems = []
  leaves = jax.tree_util.tree_leaves_with_path(abstract_tree)
  sharding_leaves = jax.tree_util.tree_leaves(shardings)
  for (path, leaf), sharding in zip(leaves, sharding_leaves):
    for dim, axes in zip(leaf.shape, sharding.spec):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else axes
      ways = math.prod(mesh.shape[a] for a in axes)
      if dim % ways:
        problems.append(f'{jax.tree_util.keystr(path)} has a dimension of {dim} that does not divide '
                        f'over mesh axes {axes} of size {ways}')
  if problems:
    raise ValueError('The model does not fit the mesh:\n  ' + '\n  '.join(problems[:8]) +
                     '\nChange the model size, the mesh axis sizes, or map that logical axis to no '
                     'mesh axis in config.mesh.rules.')


def check_batch_divisible(global_batch: int, mesh: Mesh, grad_accum_steps: int = 1) -> None:
  ways = batch_shards(mesh)
  if global_batch % (ways * grad_accum_steps):
    raise ValueError(
        f'data.batch_size={global_batch} must be divisible by the data-parallel mesh size '
        f'({" x ".join(f"{a}={mesh.shape[a]}" for a in BATCH_AXES)} = {ways}) times '
        f'train.grad_accum_steps={grad_accum_steps}; pick a batch size that is a multiple of '
        f'{ways * grad_accum_steps}.')
