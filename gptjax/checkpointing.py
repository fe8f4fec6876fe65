"""Orbax checkpoints holding the train state and the data iterator's position together.

Saving both in one step directory is what makes resume exact: the restored run sees the same
parameters, optimizer moments and the same next batch as the run that was never interrupted.
Orbax writes each step to a temporary directory and renames it when complete, so a save cut short
by preemption never looks like a checkpoint; a checkpoint that is complete but unreadable (disk
corruption, a partial copy) is set aside with a warning in favour of the newest one that restores.
"""

from __future__ import annotations

import glob
import json
import os
import time
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
UNREADABLE_DIR = 'checkpoints.unreadable'


class CheckpointError(RuntimeError):
  pass


def make_manager(workdir: str, *, save_every: int, keep: int, async_save: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=max(save_every, 1), max_to_keep=keep, create=True,
      enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)), options=options,
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
  target_dir = os.path.join(os.path.dirname(str(manager.directory)), UNREADABLE_DIR)
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
    if data_iter is not None:
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
            f'rather than fall back on one of them: move that step directory to {UNREADABLE_DIR}/ '
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
        f'warnings above; a training run moves them to {UNREADABLE_DIR}/). Rerun to start afresh, '
        'or point --workdir elsewhere.')
  return None


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the resolved config as JSON (atomic rename), the record of how a run was made."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: {workdir} is not a gptjax run directory. '
                            'Pass the --workdir of a run made by `python -m gptjax.main`.')
  with open(path) as f:
    values = json.load(f)
  values['mesh']['rules'] = tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                                  for name, axes in values['mesh']['rules'])
  return ml_collections.ConfigDict(values)


def restore_params(workdir: str) -> tuple[ml_collections.ConfigDict, Any]:
  """The run's config and the parameters of its latest readable checkpoint, on the default device."""
  from gptjax import train  # train imports this module; import here to keep the dependency one-way

  config = read_config(workdir)
  abstract_state = train.abstract_train_state(config)
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
    raise CheckpointError(f'No checkpoint in {os.path.join(workdir, CHECKPOINT_DIR)}: train the run '
                          'first (checkpoints are written every train.checkpoint_every steps and at '
                          'the end).')
  return config, restored[1].params
