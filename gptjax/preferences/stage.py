"""What every stage of learning from preferences shares with the others and with pre-training.

A stage (pairs, reward, dpo, ppo; `python -m gptjax.preferences`) is a run directory like any
other: a resolved `config.json`, a lock held while it runs, a changed config refused unless
`--allow_config_change`, records in `metrics.jsonl` and orbax checkpoints that resume exactly. Here
are the pieces that make it one:
  - `resolve_config`: the stage's config completed with the model and data of the run it starts
    from (`--init_from`: a fine-tuned or pre-trained run);
  - `load_policy`: that run's parameters as the plain model (a LoRA fine-tune merged);
  - `taken_workdir`: the workdir locked and checked, and `sources.json`, which records the inputs
    a stage started from (checksums of their parameters, the pairs file's hash), so a resume on
    inputs that have since changed is refused rather than mixed;
  - `place_train_state`: a train state for any module's parameters, created in its shardings;
  - `train_on_pairs`: the pre-training loop (`train.run_loop`) on pair batches, with its
    checkpoints, records and preemption handling, for the reward model and DPO.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from gptjax import train
from gptjax.data.tokenizer import Tokenizer
from gptjax.finetune import state as finetune_state
from gptjax.model.config import GPTConfig
from gptjax.parallel import hardware, sharding
from gptjax.preferences import pair_data
from gptjax.runs import run_dir, workdir_lock
from gptjax.train import checkpointing
from gptjax.train.recorder import Recorder
from gptjax.train.steps import TrainState

SOURCES_FILE = 'sources.json'
PREFERENCE_SECTIONS = ('preferences', 'pairs', 'reward', 'dpo', 'ppo')
# The sections a stage's config file sets; the model and the data source come from --init_from.
STAGE_SECTIONS = ('train', 'mesh', 'distributed', *PREFERENCE_SECTIONS)


def resolve_config(config: ml_collections.ConfigDict, init_from: str) -> ml_collections.ConfigDict:
  """The stage's whole run config: the model and data source of the run in `init_from`, with
  this config's seed, batch size and sections. data.seq_len is the rollout length,
  preferences.max_prompt_tokens + preferences.max_new_tokens."""
  if not init_from:
    raise ValueError('A preference stage starts from a trained policy: pass --init_from=RUN_DIR '
                     '(a run of `python -m gptjax.finetune`, or of `python -m gptjax.main`).')
  base = run_dir.read_config(init_from)
  if base.train.objective != 'clm' or not base.model.get('causal', True):
    raise ValueError(f'{init_from} holds a masked-token model; a policy generates left to right, '
                     'so start from a causal (train.objective=clm) run.')
  resolved = ml_collections.ConfigDict(base.to_dict())
  for section in ('finetune', *PREFERENCE_SECTIONS):  # the policy run's own stage, if it had one
    if section in resolved:
      del resolved[section]
  resolved.seed = config.seed
  resolved.data.batch_size = config.data.batch_size
  for section in STAGE_SECTIONS:
    if section in config:
      resolved[section] = ml_collections.ConfigDict(config[section].to_dict())
  resolved.preferences.init_from = os.path.abspath(init_from)
  p = resolved.preferences
  for name in ('max_prompt_tokens', 'max_new_tokens', 'eval_samples'):
    if name in p and (not isinstance(p[name], int) or p[name] < 1):
      raise ValueError(f'preferences.{name}={p[name]!r} must be a whole number >= 1.')
  resolved.data.seq_len = pair_data.row_length(resolved)
  GPTConfig.from_run_config(resolved)  # the rollout fits the model's positions
  return resolved


def check_train_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """`train.check_run_config`, plus what the preference steps add: one pass per step, and evaluation
  samples that fill whole batches."""
  train.check_run_config(config, mesh)
  train.check_one_step_per_call(config, 'the preference stages')
  if config.train.grad_accum_steps != 1:
    raise ValueError(f'train.grad_accum_steps={config.train.grad_accum_steps}: the preference '
                     'stages take each batch in one pass; set it to 1 and size data.batch_size.')
  if config.model.parametrization != 'sp':
    raise ValueError('The preference stages train in the standard parametrization; '
                     f'{config.preferences.init_from} uses model.parametrization='
                     f'{config.model.parametrization!r}.')
  samples, batch = config.preferences.get('eval_samples', 0), config.data.batch_size
  if samples % batch:
    raise ValueError(f'preferences.eval_samples={samples} must be a multiple of '
                     f'data.batch_size={batch}, so evaluation samples whole batches.')


def load_policy(init_from: str) -> Any:
  """The parameters of the run in `init_from` as the plain model's (a LoRA fine-tune merged), on
  the host."""
  return jax.device_get(finetune_state.plain_run(init_from)[1])


def policy_model(config: ml_collections.ConfigDict, mesh: Mesh) -> GPTConfig:
  """The resolved config's model with an attention backend for the mesh's devices."""
  return hardware.resolve_attention(GPTConfig.from_run_config(config), mesh.devices.flat[0])


def params_source(path: str, params: Any) -> dict[str, Any]:
  return {'path': os.path.abspath(path), 'checksums': checkpointing.state_checksums(params)}


def file_source(path: str) -> dict[str, Any]:
  return {'path': os.path.abspath(path),
          'sha256': hashlib.sha256(run_dir.read_bytes(path)).hexdigest()}


def check_sources(workdir: str, sources: dict[str, dict[str, Any]]) -> None:
  """Records the inputs on a fresh start; refuses a resume whose inputs have changed since."""
  path = os.path.join(workdir, SOURCES_FILE)
  if not os.path.exists(path):
    run_dir.write_atomic(path, json.dumps(sources, indent=1, sort_keys=True))
    return
  saved = json.loads(run_dir.read_bytes(path))
  changed = [name for name in sorted(set(saved) | set(sources))
             if saved.get(name) != json.loads(json.dumps(sources.get(name)))]
  if changed:
    described = '; '.join(f'{name}: {saved.get(name, {}).get("path")} then, '
                          f'{sources.get(name, {}).get("path")} now' for name in changed)
    raise ValueError(f'{workdir} was started from other inputs than it is given now ({described}; '
                     'where the paths agree, the contents differ): resuming would mix two '
                     'experiments. Pass a new --workdir.')


@contextlib.contextmanager
def taken_workdir(config: ml_collections.ConfigDict, workdir: str, allow_change: bool,
                  sources: dict[str, dict[str, Any]]) -> Iterator[bool]:
  """Holds the workdir for the stage; yields whether its config changed (and that is allowed)."""
  workdir_lock.prepare(workdir)
  lock = train.take_workdir(workdir)
  try:
    changed = train.check_unchanged(config, workdir, allow_change)
    if jax.process_index() == 0:
      check_sources(workdir, sources)
    yield changed
  finally:
    lock.release()


def write_config(workdir: str, config: ml_collections.ConfigDict, tokenizer: Tokenizer, *,
                 changed: bool, start_step: int) -> None:
  """The resolved config and the policy's tokenizer, written once the checkpoint is known to fit
  the config (process 0); with both, the stage's directory is a run the sampler reads."""
  if jax.process_index() != 0:
    return
  if changed:
    os.replace(os.path.join(workdir, run_dir.CONFIG_FILE),
               os.path.join(workdir, f'config.until-step-{start_step}.json'))
  tokenizer.save(workdir)
  run_dir.write_config(workdir, config)


def _layout(tree: Any) -> dict[str, tuple[Any, Any]]:
  return {jax.tree_util.keystr(path): (tuple(x.shape), jnp.dtype(x.dtype))
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _boxed_params(module: nn.Module, example_inputs: Sequence[Any], params: Any | None) -> Any:
  """`module`'s parameters as shapes in their logical-axis boxes, checked against `params`."""
  boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), *example_inputs))['params']
  if params is not None and _layout(nn.unbox(boxed)) != _layout(params):
    raise ValueError(f'The parameters given do not have the layout of a {type(module).__name__} '
                     'of this config; the run they come from has another model.')
  return boxed


def param_shardings(module: nn.Module, example_inputs: Sequence[Any], mesh: Mesh,
                    rules: sharding.Rules, params: Any | None = None) -> Any:
  """The shardings of `module`'s parameters on `mesh` (checked against `params` if given)."""
  boxed = _boxed_params(module, example_inputs, params)
  shardings = sharding.logical_shardings(boxed, mesh, rules)
  sharding.check_divisible(nn.unbox(boxed), shardings, mesh)
  return shardings


def train_state_shardings(module: nn.Module, example_inputs: Sequence[Any],
                          optimizer: optax.GradientTransformation, mesh: Mesh,
                          rules: sharding.Rules) -> Any:
  """The shardings of a TrainState of `module`'s parameters, from their logical axis names,
  traced without allocating anything."""
  boxed_state = jax.eval_shape(_fresh_state(optimizer),
                               _boxed_params(module, example_inputs, None))
  shardings = sharding.logical_shardings(boxed_state, mesh, rules)
  sharding.check_divisible(nn.unbox(boxed_state), shardings, mesh)
  return shardings


def place_train_state(module: nn.Module, example_inputs: Sequence[Any], params: Any,
                      optimizer: optax.GradientTransformation, mesh: Mesh, rules: sharding.Rules
                      ) -> tuple[TrainState, Any]:
  """A fresh TrainState of `params` (host arrays of `module`'s layout) in its shardings, and
  those. `params` is copied: the caller's arrays, such as a reference model's, never share a
  buffer with the state, which the steps donate."""
  _boxed_params(module, example_inputs, params)  # the layout check
  shardings = train_state_shardings(module, example_inputs, optimizer, mesh, rules)
  placed = jax.device_put(params, shardings.params, may_alias=False)
  return jax.device_put(_fresh_state(optimizer)(placed), shardings), shardings


def _fresh_state(optimizer: optax.GradientTransformation) -> Callable[[Any], TrainState]:
  return lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))


def abstract_train_state(module: nn.Module, example_inputs: Sequence[Any],
                         optimizer: optax.GradientTransformation) -> TrainState:
  """The shapes of `place_train_state`'s state, for reading a stage's checkpoint back."""
  return nn.unbox(jax.eval_shape(_fresh_state(optimizer),
                                 _boxed_params(module, example_inputs, None)))


def place_params(params: Any, param_shardings: Any) -> Any:
  """A copy of host `params` in their shardings, sharing no buffer with anything else."""
  return jax.device_put(params, param_shardings, may_alias=False)


def pair_to_global(config: ml_collections.ConfigDict, mesh: Mesh) -> Callable[[Any], jax.Array]:
  """This process's pair rows -> the global [B, 2, 2, T] batch, split over the batch axes."""
  shape = (config.data.batch_size, 2, 2, config.data.seq_len)
  return lambda batch: train.global_batch(batch, sharding.batch_sharding(mesh), shape)


def summed(per_pair: dict[str, jax.Array], batch_Bx2x2xT: jax.Array) -> jax.Array:
  """[K + 1]: each per-pair metric [B] summed over the batch's real pairs, then their count; the
  all-PAD rows that fill the last evaluation batch weigh 0."""
  real_B = jnp.any(batch_Bx2x2xT[:, 0, 1] != pair_data.PAD, axis=-1)
  sums = [jnp.sum(jnp.where(real_B, per_pair[name], 0.0)) for name in sorted(per_pair)]
  return jnp.stack(sums + [jnp.sum(real_B, dtype=jnp.float32)])


def evaluate_pairs(eval_fn: Callable, params: Any, batches: Iterator[Any],
                   to_global: Callable, names: Sequence[str]) -> dict[str, float]:
  """`eval_<name>` means over the held-out pairs of the per-pair metrics `eval_fn` sums
  (`summed`; `names` in the order it sorts them)."""
  totals = None
  for batch in batches:
    sums = jax.device_get(eval_fn(params, to_global(batch)))
    totals = sums if totals is None else totals + sums
  if totals is None or totals[-1] == 0:
    raise ValueError('No held-out pair to evaluate on; give pairs for more prompts.')
  return {f'eval_{name}': float(value / totals[-1]) for name, value in zip(sorted(names), totals)}


def train_on_pairs(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh,
                   rules: sharding.Rules, model_cfg: GPTConfig, state: TrainState,
                   state_shardings: Any, pairs: pair_data.PairData, jit_train: Callable,
                   evaluate_with: Callable[..., dict[str, float]], *, changed: bool
                   ) -> dict[str, Any]:
  """Trains `state` on pair batches from its latest checkpoint to train.num_steps with the
  pre-training loop; returns the last record."""
  t = config.train
  data = pairs.data
  manager = checkpointing.make_manager(workdir, save_every=t.checkpoint_every,
                                       keep=t.keep_checkpoints, async_save=t.async_checkpoints)
  start_step, state = train.restore_or_start(manager, workdir, state, state_shardings, data)
  write_config(workdir, config, data.tokenizer, changed=changed, start_step=start_step)
  recorder = Recorder(config, model_cfg, workdir, data, start_step)
  to_global = pair_to_global(config, mesh)
  if start_step in (0, t.num_steps):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      record_eval_once(workdir, recorder, start_step, run_dir.EVAL_KEY,
                       lambda: evaluate_with(state.params, batches=data.eval_batches()))
  return train.run_loop(config, state, start_step, data, jit_train, evaluate_with, to_global,
                        manager, recorder, mesh, rules)


def record_eval_once(workdir: str, recorder: Recorder, step: int, key: str,
                     evaluate: Callable[[], dict[str, float]]) -> None:
  """Writes the evaluation of `step` unless metrics.jsonl has a record of it with `key`: the
  starting policy's (step 0, so every curve starts at the model it started from) and a run's final
  one that a crash cut off. Every process evaluates; process 0 writes."""
  path = os.path.join(workdir, run_dir.METRICS_FILE)
  rows = run_dir.read_metrics(workdir) if os.path.exists(path) else []
  if not any(row.get('step') == step and key in row for row in rows):
    recorder.writer.write({'step': step, **evaluate()})


def optimizer_update(state: TrainState, grads: Any, optimizer: optax.GradientTransformation,
                     schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step of `state`, and the norms and rate `stopping.check_finite` and the
  records read."""
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'grad_norm': optax.tree.norm(grads), 'param_norm': optax.tree.norm(params),
             'learning_rate': schedule(state.step)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics
