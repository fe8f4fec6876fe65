"""The training loop: sharded state creation, jitted steps, evaluation, records, checkpoints.

The steps themselves are pure functions in `gptjax/train/steps.py`; this module places them on the
mesh and drives them. The loop dispatches step t before reading step t-1's loss, so the host never
waits on the device except at logging, evaluation and checkpoint points.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from gptjax import data as data_lib
from gptjax.cost import flops
from gptjax.data import corpus, tokenizer, tokens
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.parallel import hardware, sharding
from gptjax.runs import run_dir, workdir_lock
from gptjax.train import checkpointing, checks, evaluate, optim, stopping
from gptjax.train.recorder import Recorder
from gptjax.train.steps import TrainState, eval_step, train_step, train_steps


def _init_fn(rng: jax.Array, model: GPT, optimizer, seq_len: int) -> TrainState:
  params = model.init(rng, jnp.zeros((1, seq_len), jnp.int32))['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def state_initializer(config: ml_collections.ConfigDict):
  """key -> a fresh train state of `config`, its leaves boxed with their logical axes.

  The parameters do not depend on the attention backend: initialisation traces the plain one, so
  it needs nothing resolved for the hardware.
  """
  model_cfg = dataclasses.replace(GPTConfig.from_run_config(config), attention_impl='xla')
  return functools.partial(_init_fn, model=GPT(model_cfg),
                           optimizer=optim.make_optimizer(config.train, model_cfg),
                           seq_len=config.data.seq_len)


def abstract_train_state(config: ml_collections.ConfigDict) -> TrainState:
  """Shapes and dtypes of the train state, without allocating it (for restoring checkpoints)."""
  return nn.unbox(jax.eval_shape(state_initializer(config), jax.random.key(config.seed)))


def load_params(workdir: str) -> tuple[ml_collections.ConfigDict, Any]:
  """A finished (or interrupted) run's config and the parameters of its latest checkpoint."""
  config, _, params = load_checkpoint(workdir)
  return config, params


def load_checkpoint(workdir: str) -> tuple[ml_collections.ConfigDict, int, Any]:
  """A run's config, the step of its latest checkpoint and that checkpoint's parameters."""
  config = run_dir.read_config(workdir)
  step, params = checkpointing.restore_step_and_params(workdir, abstract_train_state(config))
  return config, step, params


def create_train_state(config: ml_collections.ConfigDict, mesh: Mesh,
                       rules: sharding.Rules) -> tuple[TrainState, Any]:
  """Initialises the state directly into its shardings: nothing is ever built unsharded."""
  init = state_initializer(config)
  boxed = jax.eval_shape(init, jax.random.key(config.seed))
  shardings = sharding.logical_shardings(boxed, mesh, rules)
  sharding.check_divisible(nn.unbox(boxed), shardings, mesh)
  state = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(
      jax.random.key(config.seed))
  return state, shardings


def jit_steps(config: ml_collections.ConfigDict, setup: hardware.Setup, mesh: Mesh,
              rules: sharding.Rules, state_shardings: Any) -> tuple[Any, Any]:
  """The train and eval steps jitted with explicit shardings; the train state is donated.

  The train function takes (state, batch, schedule numbers): the learning-rate schedule's numbers
  (`optim.schedule_numbers`) are an argument, not constants, so the same model at another budget
  compiles to the same program. With train.steps_per_call = K > 1 it is `steps.train_steps`, of
  (state, batches [K, B, ...], count, schedule numbers): up to K steps per call.
  """
  model = GPT(setup.model)

  def step_fn(state, batch, frozen_params=None, *, numbers):
    schedule = optim.learning_rate_schedule(config.train, numbers)
    return train_step(state, batch, frozen_params, model=model,
                      optimizer=optim.make_optimizer(config.train, setup.model, schedule),
                      schedule=schedule, grad_accum_steps=setup.passes,
                      dropout_seed=config.seed if setup.model.dropout > 0 else None)

  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  if config.train.steps_per_call == 1:
    jit_train = jax.jit(
        sharding.traced_under(mesh, rules, lambda state, batch, numbers: step_fn(
            state, batch, numbers=numbers), 'train_step'),
        in_shardings=(state_shardings, batch_sharding, replicated),
        out_shardings=(state_shardings, replicated), donate_argnums=0)
  else:
    jit_train = jax.jit(
        sharding.traced_under(mesh, rules, lambda state, batches, count, numbers: train_steps(
            state, batches, count, step_fn=functools.partial(step_fn, numbers=numbers)),
                              'train_steps'),
        in_shardings=(state_shardings, sharding.stacked_batch_sharding(mesh), replicated,
                      replicated),
        out_shardings=(state_shardings, replicated), donate_argnums=0)
  jit_eval = jax.jit(
      sharding.traced_under(mesh, rules, functools.partial(eval_step, model=model), 'eval_step'),
      in_shardings=(state_shardings.params, batch_sharding), out_shardings=replicated)
  return jit_train, jit_eval


def global_batch(local_batch: np.ndarray, batch_sharding: jax.sharding.NamedSharding,
                  global_shape: tuple[int, ...]) -> jax.Array:
  return jax.make_array_from_process_local_data(batch_sharding, np.asarray(local_batch, np.int32),
                                                global_shape)


def _prepare_data(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh
                  ) -> tuple[data_lib.Data, ml_collections.ConfigDict]:
  """This process's data, and the config completed with the tokenizer's vocabulary size.

  With several processes, process 0 alone writes the tokenizer and token cache into the shared
  workdir while the others wait, then all read: concurrent writers would each tokenize the corpus,
  could train differing BPEs, and replace files other hosts have memory-mapped.
  """
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      tokens.token_streams(config, tokenizer.load_or_train_tokenizer(config, workdir), workdir)
    multihost_utils.sync_global_devices('gptjax: tokenizer and token cache written')
  batch_shape = (config.data.batch_size, *data_lib.row_shape(config))
  block, num_blocks = sharding.process_batch_block(sharding.batch_sharding(mesh), *batch_shape[:2])
  data = data_lib.build_data(config, workdir, process_index=block, process_count=num_blocks)
  config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy; the caller's is untouched
  if config.data.source != 'tokens':  # token shards carry ids of the user's stated vocabulary
    config.model.vocab_size = data.tokenizer.vocab_size
  return data, config


def restore_or_start(manager, workdir: str, state: TrainState, state_shardings: Any,
             data: data_lib.Data) -> tuple[int, TrainState]:
  """(step, state) of the latest intact checkpoint, or (0, state) for a fresh run.

  A resumed run drops the metrics records past its checkpoint: it writes them again. A fresh run
  in a workdir that holds records (of an attempt whose checkpoints were all set aside) first sets
  them aside, so no step is recorded twice.
  """
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          state, state_shardings)
  restored = checkpointing.restore_latest(manager, abstract, data.train_iter)
  if restored is None:
    if jax.process_index() == 0:
      aside = run_dir.set_aside_records(workdir)
      if aside:
        logging.warning('No checkpoint to resume from: the earlier attempt\'s records, TensorBoard '
                        'events and config are kept in %s; this run starts afresh.', aside)
      logging.info('Unigram baseline of the validation split: %.4f nats/token.',
                   data.unigram_entropy)
    return 0, state
  step, state = restored
  logging.info('Resumed from the checkpoint at step %d.', step)
  if jax.process_index() == 0:
    dropped = run_dir.truncate_metrics_after(workdir, step)
    if dropped:
      logging.info('Dropped %d records past step %d; the resumed run rewrites them.', dropped, step)
  return step, state


def check_unchanged(config: ml_collections.ConfigDict, workdir: str, allow_change: bool) -> bool:
  """Refuses to continue a run with another config than it was made with; returns whether the
  config changed (and that is allowed). Reads only: nothing is written before this check."""
  saved = run_dir.read_config_dict(workdir)
  differences = run_dir.config_differences(saved, config) if saved else []
  if not differences:
    return False
  listed = '; '.join(differences[:5]) + (f' and {len(differences) - 5} more'
                                         if len(differences) > 5 else '')
  if not allow_change:
    raise ValueError(
        f'{workdir} holds a run made with another config ({listed}); training this config there '
        'would mix two experiments in one record. Pass a new --workdir to start this config, or '
        '--allow_config_change to continue this run with it (its old config.json is kept).')
  logging.warning('Continuing the run in %s with a changed config: %s.', workdir, listed)
  return True


def take_workdir(workdir: str) -> workdir_lock.WorkdirLock:
  """The workdir's lock, held by process 0 for all processes, which agree on the outcome."""
  lock, busy = workdir_lock.WorkdirLock(workdir), None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except workdir_lock.WorkdirBusyError as error:
      busy = error
  if jax.process_count() > 1 and not multihost_utils.broadcast_one_to_all(np.int32(busy is None)):
    busy = busy or workdir_lock.WorkdirBusyError(
        f'{workdir} is in use by another run (process 0 logs which); pass another --workdir.')
  if busy is not None:
    raise busy
  return lock


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final record.

  Before anything is written: a config that cannot run is refused (`checks.check_run_config`),
  the workdir is locked to this run (a second run on it is refused while this one lives), and a
  workdir made with another config is refused unless `allow_config_change`.
  """
  mesh = sharding.make_mesh(config.mesh)
  checks.check_run_config(config, mesh)
  if not run_dir.exists(os.path.join(workdir, run_dir.DATA_DIR)):  # a resumed run reads its cache
    corpus.check_inputs(config.data)
  workdir_lock.prepare(workdir)
  lock = take_workdir(workdir)
  try:
    changed = check_unchanged(config, workdir, allow_config_change)
    return _train(config, workdir, mesh, keep_old_config=changed)
  finally:
    lock.release()


def _train(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh, *,
           keep_old_config: bool) -> dict[str, Any]:
  data, config = _prepare_data(config, workdir, mesh)
  rules = sharding.logical_rules(config.mesh)
  setup = hardware.resolve(config, mesh)
  state, state_shardings = create_train_state(config, mesh, rules)
  manager = checkpointing.make_manager(
      workdir, save_every=config.train.checkpoint_every, keep=config.train.keep_checkpoints,
      async_save=config.train.async_checkpoints)
  start_step, state = restore_or_start(manager, workdir, state, state_shardings, data)
  if jax.process_index() == 0:  # only once the checkpoint fits this config
    config_path = os.path.join(workdir, run_dir.CONFIG_FILE)
    if keep_old_config:
      os.replace(config_path, os.path.join(workdir, f'config.until-step-{start_step}.json'))
    run_dir.write_config(workdir, config)
  jit_train, jit_eval = jit_steps(config, setup, mesh, rules, state_shardings)
  numbers = optim.schedule_numbers(config.train)
  counts = flops.param_counts(setup.model)
  recorder = Recorder(config, setup.model, workdir, data, start_step)
  logging.info('Model: %s params (%s non-embedding); %d tokens per step; mesh %s.',
               f'{counts.total:,}', f'{counts.non_embedding:,}', recorder.tokens_per_step,
               dict(mesh.shape))
  to_global = functools.partial(
      global_batch, batch_sharding=sharding.batch_sharding(mesh),
      global_shape=(config.data.batch_size, *data_lib.row_shape(config)))
  evaluate_with = functools.partial(evaluate.evaluate, eval_fn=jit_eval, to_global=to_global,
                                    tokens_per_byte=recorder.tokens_per_byte)
  t = config.train
  if start_step == t.num_steps:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      recorder.record_missing_final_eval(
          start_step, lambda: evaluate_with(state.params, batches=data.eval_batches()), workdir,
          checkpointing.saved_train_metrics(manager, start_step))
  return run_loop(config, state, start_step, data,
                  lambda state, *batches: jit_train(state, *batches, numbers), evaluate_with,
                  to_global, manager, recorder, mesh, rules)


def run_loop(config, state, step, data, jit_train, evaluate_with, to_global, manager, recorder,
             mesh, rules) -> dict[str, Any]:
  """Steps from `step` to the end, or to a stop signal (SIGTERM or Ctrl-C: a checkpoint is saved
  first), then waits for the last checkpoint and closes the records; returns the last record, or
  raises `cli.Stopped` (exit status 75) when a signal stopped the run before its end.

  Pre-training, fine-tuning and the preference stages all end their runs through here.
  """
  with stopping.StopSignals().installed() as preemption:
    record = _steps(config, state, step, data, jit_train, evaluate_with, to_global, manager,
                    recorder, preemption, mesh, rules)
  close_run(manager, recorder)
  preemption.raise_if_stopped()
  return record


def close_run(manager, recorder: Recorder) -> None:
  """Waits for the last checkpoint to be written, then closes the checkpoints and the records."""
  manager.wait_until_finished()
  manager.close()
  recorder.close()


def _steps_to_boundary(step: int, t: ml_collections.ConfigDict) -> int:
  """Steps from `step` to the next one that logs, evaluates, saves or ends the run."""
  return min([interval - step % interval
              for interval in (t.log_every, t.eval_every, t.checkpoint_every)]
             + [t.num_steps - step])


def _steps(config, state, step, data, jit_train, evaluate_with, to_global, manager, recorder,
           preemption, mesh, rules) -> dict[str, Any]:
  """Steps from `step` to the end (or a stop signal); returns the last record.

  With train.steps_per_call = K > 1, each call runs up to K steps and stops short at the next
  step that logs, evaluates or saves, so those happen on exactly the same steps as with K = 1, and
  the data iterator is drawn exactly once per step taken (a checkpoint resumes it exactly). A stop
  signal is acted on at the end of a call.
  """
  t = config.train
  k = t.steps_per_call
  if k > 1:
    to_global_stacked = functools.partial(
        global_batch, batch_sharding=sharding.stacked_batch_sharding(mesh),
        global_shape=(k, config.data.batch_size, *data_lib.row_shape(config)))
  record: dict[str, Any] = {}
  previous: tuple[int, Any] | None = None
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    while step < t.num_steps:
      if k == 1:
        count = 1
        state, step_metrics = jit_train(state, to_global(next(data.train_iter)))
      else:
        count = min(k, _steps_to_boundary(step, t))
        local = [next(data.train_iter) for _ in range(count)]
        local += [np.zeros_like(local[0])] * (k - count)  # never stepped on
        state, step_metrics = jit_train(state, to_global_stacked(np.stack(local)),
                                        np.int32(count))
      if previous is not None:  # read the last call's metrics while this one runs
        stopping.check_finite(previous[1], previous[0], manager.latest_step())
      step += count
      previous = (step, step_metrics)
      # every step taken is reported (all processes must see each one to meet at a sync point)
      stop = any([preemption.reached(s) for s in range(step - count + 1, step + 1)])
      is_last = step == t.num_steps
      do_eval = step % t.eval_every == 0 or is_last
      do_log = step % t.log_every == 0 or do_eval
      do_save = step % t.checkpoint_every == 0 or is_last or stop
      if not (do_log or do_save):
        continue
      host_metrics = jax.device_get(step_metrics)
      stopping.check_finite(host_metrics, step, manager.latest_step())  # never save a non-finite state
      if do_log:
        evaluate_now = functools.partial(evaluate_with, state.params,
                                         batches=data.eval_batches()) if do_eval else None
        record = recorder.record(step, host_metrics, evaluate_now)
      if do_save:
        checkpointing.save(manager, step, state, data.train_iter, force=True,
                           train_metrics=host_metrics)
      if stop:
        preemption.stop(step)
        break
  return record
