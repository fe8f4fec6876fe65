"""Orbax checkpoints holding the train state and the data iterator's position together.

Saving both in one step directory is what makes resume exact: the restored run sees the same
parameters, optimizer moments and the same next batch as the run that was never interrupted.
Orbax writes each step to a temporary directory and renames it when complete, so a save cut short
by preemption never looks like a checkpoint. Each step also stores a checksum of every array of the
state (`state_checksums`) and of every process's data-iterator position, recomputed on restore: a
checkpoint that is complete but unreadable, readable with other values than were saved (disk
corruption, a partial copy, an edited position), or without its checksums is set aside with one
warning in favour of the newest one that restores intact. A checkpoint of another layout than the
config makes (a changed model) is not corrupt and is never set aside: the restore refuses instead.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging as python_logging
import os
import time
from typing import Any, Iterator

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from gptjax.runs import cli, run_dir

_CHECKSUMS = 'checksums'
_DATA_POSITIONS = 'data_positions'  # the checksums item's entry for the data iterators
_TRAIN_METRICS = 'train_metrics'  # the saved step's train loss and norms, for a lost final record


class CheckpointError(cli.RunError):
  pass


class ChecksumMismatch(Exception):
  """A checkpoint that restored, but with other values than were saved."""


def _leaf_checksum(x: jax.Array) -> jax.Array:
  """sum_i (2i + 1) * bits(x_i) mod 2^32 over the flat index i: any change to one element, and a
  swap of two, changes it (odd weights are invertible mod 2^32). Built from per-dimension iotas, so
  a sharded array is never reshaped or gathered."""
  if x.dtype.itemsize == 4:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  elif x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:
    unsigned = {2: jnp.uint16, 1: jnp.uint8}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  index = jnp.zeros(x.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(x.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride)
    stride = (stride * x.shape[axis]) % (1 << 32)
  return jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)


_checksum_tree = jax.jit(lambda tree: jax.tree.map(_leaf_checksum, tree))


def _flat_names(tree: Any) -> dict[str, Any]:
  """Leaves by orbax's own dotted names ('params.block_0.attn.key.kernel',
  'opt_state.1.0.mu...')."""
  flat = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(tree, keep_empty_nodes=True), sep='.')
  return {name: leaf for name, leaf in flat.items() if hasattr(leaf, 'shape')}


def state_checksums(state: Any) -> dict[str, int]:
  """One uint32 checksum per array of `state`, by name, computed where the arrays live."""
  return {name: int(value) for name, value in _flat_names(jax.device_get(_checksum_tree(state))).items()}


def _position_checksum(data_iter: Any) -> int:
  """A uint32 checksum of this process's data-iterator position, as the iterator reports it."""
  state = json.dumps(data_iter.get_state(), sort_keys=True, default=str).encode()
  return int.from_bytes(hashlib.blake2b(state, digest_size=4).digest(), 'little')


def _data_positions(data_iter: Any) -> list[int]:
  """Every process's position checksum, in process order: the checksums item is written once,
  by process 0, so it gathers them all (every process saves at the same step)."""
  mine_1 = np.array([_position_checksum(data_iter)], np.uint32)
  if jax.process_count() == 1:
    return [int(mine_1[0])]
  return [int(x) for x in np.asarray(multihost_utils.process_allgather(mine_1)).reshape(-1)]


def make_manager(workdir: str, *, save_every: int, keep: int, async_save: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=max(save_every, 1), max_to_keep=keep, create=True,
      enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, run_dir.CHECKPOINT_DIR)), options=options,
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'data': grain.checkpoint.CheckpointHandler(),
                     _CHECKSUMS: ocp.JsonCheckpointHandler(),
                     _TRAIN_METRICS: ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any | None,
         *, force: bool = False, train_metrics: dict[str, Any] | None = None) -> bool:
  """Saves `state` and the data position at `step`, with their checksums; `train_metrics`, the
  step's own train loss and norms, go with them, so a final record lost after the last save can be
  written again whole (`saved_train_metrics`)."""
  checksums = state_checksums(state)
  items = {'state': ocp.args.StandardSave(state)}
  if train_metrics is not None:
    items[_TRAIN_METRICS] = ocp.args.JsonSave({k: float(v) for k, v in train_metrics.items()})
  if data_iter is not None:
    items['data'] = grain.checkpoint.CheckpointSave(data_iter)
    checksums[_DATA_POSITIONS] = _data_positions(data_iter)
  items[_CHECKSUMS] = ocp.args.JsonSave(checksums)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def saved_train_metrics(manager: ocp.CheckpointManager, step: int) -> dict[str, float]:
  """The train metrics saved with the checkpoint at `step` ({} for one saved without them)."""
  if not os.path.isdir(os.path.join(str(manager.directory), str(step), _TRAIN_METRICS)):
    return {}
  with _orbax_quiet():
    restored = manager.restore(step, args=ocp.args.Composite(
        **{_TRAIN_METRICS: ocp.args.JsonRestore()}))
  return dict(restored[_TRAIN_METRICS])


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves an unreadable step out of the manager's way (never deletes it) so training can go on."""
  source = os.path.join(str(manager.directory), str(step))
  target_dir = os.path.join(os.path.dirname(str(manager.directory)), run_dir.UNREADABLE_DIR)
  os.makedirs(target_dir, exist_ok=True)
  target = os.path.join(target_dir, f'{step}-{int(time.time())}')
  os.replace(source, target)
  manager.reload()
  return target


def _saved_process_count(manager: ocp.CheckpointManager, step: int) -> int | None:
  """How many processes saved their data-iterator position in `step` (None: no such files)."""
  names = glob.glob(os.path.join(str(manager.directory), str(step), 'data', 'process_*-of-*.json'))
  counts = {int(os.path.basename(name).rsplit('-of-', 1)[1].split('.')[0]) for name in names}
  return counts.pop() if len(counts) == 1 else None


@contextlib.contextmanager
def _orbax_quiet() -> Iterator[None]:
  """Holds back orbax's own log records (a failed restore logs thousands of traceback lines);
  the caller logs one warning that says what happened."""
  class _Drop(python_logging.Filter):
    def filter(self, record) -> bool:
      return 'orbax' not in record.pathname

  drop = _Drop()
  root = python_logging.getLogger()
  # A logger's filter sees only records logged on it; a handler's sees every record it would emit.
  filtered = [logging.get_absl_logger(), root, *root.handlers]
  for target in filtered:
    target.addFilter(drop)
  try:
    yield
  finally:
    for target in filtered:
      target.removeFilter(drop)


def _layout_differences(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> list[str]:
  """How the arrays saved at `step` differ in name or shape from `abstract_state`'s ([] if alike,
  or if the step's metadata is unreadable: the restore then reports that)."""
  try:
    with _orbax_quiet():
      saved = _flat_names(manager.item_metadata(step)['state'].tree)
  except Exception:  # noqa: BLE001  (unreadable metadata is a corrupt checkpoint, handled there)
    return []
  wanted = _flat_names(abstract_state)
  return ([f'{name} {tuple(saved[name].shape)} -> {tuple(wanted[name].shape)}'
           for name in sorted(set(saved) & set(wanted))
           if tuple(saved[name].shape) != tuple(wanted[name].shape)]
          + [f'{name} not saved' for name in sorted(set(wanted) - set(saved))]
          + [f'{name} saved, not in this config' for name in sorted(set(saved) - set(wanted))])


def _restore_verified(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
                      data_iter: Any | None) -> Any:
  """The state saved at `step`, its checksums checked; raises for anything unreadable or altered."""
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  # A step-0 checkpoint may hold no data position (a model imported by `gptjax.convert`): the data
  # then starts at its beginning, which is where a run's step-0 data starts anyway.
  has_data = os.path.isdir(os.path.join(str(manager.directory), str(step), 'data'))
  if data_iter is not None and (step > 0 or has_data):
    items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
  if not os.path.isdir(os.path.join(str(manager.directory), str(step), _CHECKSUMS)):
    raise ChecksumMismatch('it holds no checksums, so nothing it holds can be verified')
  items[_CHECKSUMS] = ocp.args.JsonRestore()
  with _orbax_quiet():
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  saved = restored[_CHECKSUMS]
  altered = sorted(name for name, value in state_checksums(restored['state']).items()
                   if saved.get(name) != value)
  if altered:
    raise ChecksumMismatch(f'{len(altered)} array(s) differ from what was saved, e.g. '
                           f'{altered[:3]}')
  positions = saved.get(_DATA_POSITIONS)  # absent from checkpoints that saved no data position
  if 'data' in items and positions is not None and (
      len(positions) != jax.process_count()
      or positions[jax.process_index()] != _position_checksum(data_iter)):
    raise ChecksumMismatch('the data position differs from what was saved')
  return restored['state']


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iter: Any | None,
                   *, set_aside_unreadable: bool = True) -> tuple[int, Any] | None:
  """Restores the newest intact checkpoint (state placed per `abstract_state`'s shardings).

  Returns None when the workdir has no checkpoint. The data iterator is restored in place. A
  checkpoint that cannot be read, or whose arrays fail their checksums, is moved to
  `checkpoints.unreadable/` with one warning, and the next older one is tried (readers that must
  not change the workdir pass `set_aside_unreadable=False`). A checkpoint of another layout than
  `abstract_state` raises CheckpointError: the config changed, the checkpoint is fine.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    differences = _layout_differences(manager, step, abstract_state)
    if differences:
      more = f' and {len(differences) - 3} more' if len(differences) > 3 else ''
      raise CheckpointError(
          f'The checkpoint at step {step} in {manager.directory} holds a train state of another '
          f'layout than this config makes ({"; ".join(differences[:3])}{more}): the model or '
          'optimizer config differs from the one it was saved with. Resume with that config, or '
          'pass another --workdir to train this one.')
    if data_iter is not None:
      saved = _saved_process_count(manager, step)
      if saved is not None and saved != jax.process_count():  # readable, but not by this topology
        raise CheckpointError(
            f'The checkpoint at step {step} in {manager.directory} was written by {saved} '
            f'process(es), but this run has {jax.process_count()}; each process resumes its own '
            f'data-iterator position. Resume with {saved} process(es) (the same TPU slice size or '
            'number of SLURM tasks), or start a new --workdir.')
    try:
      state = _restore_verified(manager, step, abstract_state, data_iter)
    except Exception as error:  # orbax raises many types for unreadable files  # noqa: BLE001
      why = f'{type(error).__name__}: {" ".join(str(error).split())[:300]}'
      if jax.process_count() > 1:  # falling back alone would leave the processes on different steps
        raise CheckpointError(
            f'The checkpoint at step {step} in {manager.directory} could not be restored ({why}). '
            'With several processes the run stops rather than fall back on one of them: move that '
            f'step directory to {run_dir.UNREADABLE_DIR}/ and rerun to resume from the previous '
            'checkpoint.') from error
      where = 'left in place'
      if set_aside_unreadable and jax.process_index() == 0:
        where = f'moved to {_set_aside(manager, step)}'
      logging.warning('The checkpoint at step %d is damaged (%s); %s. Trying the previous one.',
                      step, why, where)
      continue
    if step != steps[0]:
      logging.warning('Resumed from step %d, not the newest checkpoint %d.', step, steps[0])
    return step, state
  if steps:
    raise CheckpointError(
        f'None of the checkpoints {steps} in {manager.directory} could be restored (see the '
        f'warnings above; a training run moves them to {run_dir.UNREADABLE_DIR}/). Rerun to start '
        'afresh, or point --workdir elsewhere.')
  return None


def restore_params(workdir: str, abstract_state: Any) -> Any:
  """The parameters of the run's latest intact checkpoint, placed on the default device.

  `abstract_state` is the train state's shapes (`train.abstract_train_state` of the run's config).
  Reading changes nothing in the workdir.
  """
  return restore_step_and_params(workdir, abstract_state)[1]


def restore_step_and_params(workdir: str, abstract_state: Any) -> tuple[int, Any]:
  """`restore_params`, with the step of the checkpoint it read."""
  directory = os.path.join(workdir, run_dir.CHECKPOINT_DIR)
  restored = None
  if os.path.isdir(directory):
    abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(
            jax.devices()[0])), abstract_state)
    manager = make_manager(workdir, save_every=1, keep=1_000_000, async_save=False)
    try:
      restored = restore_latest(manager, abstract_state, data_iter=None,
                                set_aside_unreadable=False)
    finally:
      manager.close()
  if restored is None:
    raise CheckpointError(f'No checkpoint in {directory}: train the run first (checkpoints are '
                          'written every train.checkpoint_every steps and at the end).')
  return restored[0], restored[1].params
