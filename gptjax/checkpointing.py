"""Orbax checkpoints holding the train state and the data iterator's position together.

Saving both in one step directory is what makes resume exact: the restored run sees the same
parameters, optimizer moments and the same next batch as the run that was never interrupted.
Orbax writes each step to a temporary directory and renames it when complete, so a save cut short
by preemption never looks like a checkpoint; a checkpoint that is complete but unreadable (disk
corruption, a partial copy) is set aside with a warning in favour of the newest one that restores.
"""

from __future__ import annotations

import glob
import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from gptjax import run_dir



class CheckpointError(RuntimeError):
  pass


def make_manager(workdir: str, *, save_every: int, keep: int, async_save: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=max(save_every, 1), max_to_keep=keep, create=True,
      enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, run_dir.CHECKPOINT_DIR)), options=options,
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'data': grain.checkpoint.CheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any | None,
         *, force: bool = False) -> bool:
  items = {'state': ocp.args.StandardSave(state)}
  if data_iter is not None:
    items['data'] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


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


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iter: Any | None,
                   *, set_aside_unreadable: bool = True) -> tuple[int, Any] | None:
  """Restores the newest readable checkpoint (state placed per `abstract_state`'s shardings).

  Returns None when the workdir has no checkpoint. The data iterator is restored in place. An
  unreadable checkpoint is moved to `checkpoints.unreadable/` with a warning, and the next older
  one is tried (readers that must not change the workdir pass `set_aside_unreadable=False`).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    # A step-0 checkpoint may hold no data position (a model imported by `gptjax.convert`): the
    # data then starts at its beginning, which is where a run's step-0 data starts anyway.
    has_data = os.path.isdir(os.path.join(str(manager.directory), str(step), 'data'))
    if data_iter is not None and (step > 0 or has_data):
      items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
      saved = _saved_process_count(manager, step)
      if saved is not None and saved != jax.process_count():  # readable, but not by this topology
        raise CheckpointError(
            f'The checkpoint at step {step} in {manager.directory} was written by {saved} '
            f'process(es), but this run has {jax.process_count()}; each process resumes its own '
            f'data-iterator position. Resume with {saved} process(es) (the same TPU slice size or '
            'number of SLURM tasks), or start a new --workdir.')
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:  # orbax raises many types for unreadable files  # noqa: BLE001
      if jax.process_count() > 1:  # falling back alone would leave the processes on different steps
        raise CheckpointError(
            f'The checkpoint at step {step} in {manager.directory} could not be restored '
            f'({type(error).__name__}: {str(error)[:300]}). With several processes the run stops '
            f'rather than fall back on one of them: move that step directory to {run_dir.UNREADABLE_DIR}/ '
            'and rerun to resume from the previous checkpoint.') from error
      where = 'left in place'
      if set_aside_unreadable and jax.process_index() == 0:
        where = f'moved to {_set_aside(manager, step)}'
      logging.warning('The checkpoint at step %d could not be restored (%s: %s); %s. Trying the '
                      'previous one.', step, type(error).__name__, str(error)[:300], where)
      continue
    if step != steps[0]:
      logging.warning('Resumed from step %d, not the newest checkpoint %d.', step, steps[0])
    return step, restored['state']
  if steps:
    raise CheckpointError(
        f'None of the checkpoints {steps} in {manager.directory} could be restored (see the '
        f'warnings above; a training run moves them to {run_dir.UNREADABLE_DIR}/). Rerun to start afresh, '
        'or point --workdir elsewhere.')
  return None


def restore_params(workdir: str, abstract_state: Any) -> Any:
  """The parameters of the run's latest readable checkpoint, placed on the default device.

  `abstract_state` is the train state's shapes (`train.abstract_train_state` of the run's config).
  """
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
    raise CheckpointError(f'No checkpoint in {os.path.join(workdir, run_dir.CHECKPOINT_DIR)}: train the run '
                          'first (checkpoints are written every train.checkpoint_every steps and at '
                          'the end).')
  return restored[1].params
