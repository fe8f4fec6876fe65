"""A fine-tuning run's pieces around the pre-training machinery: its config, resolved against the
pre-trained run it starts from; the frozen base parameters and the check that they are the ones the
run started with; the train state of the trainable parameters only; and the parameters of any run
directory, pre-trained or fine-tuned, for sampling and export.

The train state holds only what the method trains (every parameter for 'full'; the LoRA factors,
adapters, prefixes or prompt otherwise, `gptjax/model/peft.py`), so optimizer state exists for those
alone and checkpoints store those alone. The base parameters are read from the pre-trained run's
latest checkpoint whenever the fine-tune starts or resumes; `base.json` records their per-array
checksums, so a resume on a base that has since changed is refused rather than mixed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from gptjax import train
from gptjax.model import peft
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.parallel import sharding
from gptjax.runs import run_dir
from gptjax.train import checkpointing, optim
from gptjax.train.steps import TrainState

BASE_FILE = 'base.json'
# Model fields that only choose how the same parameters are computed; a fine-tune may set them.
HARDWARE_MODEL_FIELDS = ('attention_impl', 'remat')


def resolve_config(config: ml_collections.ConfigDict, init_from: str) -> ml_collections.ConfigDict:
  """The fine-tune's whole run config: the pre-trained run's model and data source, with this
  config's seed, sequence length, batch size, training, mesh and fine-tuning sections.

  A `model` section in `config` must describe the pre-trained model (hardware fields aside): the
  base checkpoint fixes the architecture, and a silently different one would not load.
  """
  if not init_from:
    raise ValueError('Fine-tuning starts from a pre-trained run: pass --init_from=RUN_DIR (a '
                     'workdir of python -m gptjax.main).')
  base = run_dir.read_config(init_from)
  if base.train.objective != 'clm':
    raise ValueError(f'{init_from} was trained with train.objective={base.train.objective!r}; '
                     'fine-tuning generates responses left to right, so start from a causal run.')
  if 'finetune' in base:
    raise ValueError(f'{init_from} is itself a fine-tune; start from the pre-trained run it came '
                     f'from ({base.finetune.init_from}).')
  resolved = ml_collections.ConfigDict(base.to_dict())
  if 'model' in config:
    differences = [f'model.{name}: {base.model.get(name)!r} there, {value!r} here'
                   for name, value in config.model.items()
                   if name not in HARDWARE_MODEL_FIELDS and base.model.get(name) != value]
    if differences:
      raise ValueError(f'The config\'s model differs from the checkpoint\'s in {init_from} ('
                       f'{"; ".join(differences[:4])}); the pre-trained run fixes the model, so '
                       'drop the model section or its overrides.')
    for name in HARDWARE_MODEL_FIELDS:
      resolved.model[name] = config.model.get(name, base.model[name])
  resolved.seed = config.seed
  resolved.data.seq_len = config.data.seq_len
  resolved.data.batch_size = config.data.batch_size
  for section in ('train', 'mesh', 'distributed', 'finetune'):
    resolved[section] = ml_collections.ConfigDict(config[section].to_dict())
  resolved.finetune.init_from = os.path.abspath(init_from)
  if resolved.train.objective != 'clm':
    raise ValueError('Fine-tuning trains on responses left to right: train.objective must be '
                     "'clm'.")
  if resolved.finetune.method != 'full' and resolved.model.parametrization != 'sp':
    raise ValueError(f'finetune.method={resolved.finetune.method!r} is defined for the standard '
                     "parametrization; a muP base model fine-tunes with method='full'.")
  return resolved


def load_base(init_from: str) -> tuple[ml_collections.ConfigDict, Any]:
  """The pre-trained run's config and the parameters of its latest checkpoint."""
  return train.load_params(init_from)


def base_identity(init_from: str, base_params: Any) -> dict[str, Any]:
  return {'init_from': os.path.abspath(init_from),
          'checksums': checkpointing.state_checksums(base_params)}


def check_base(workdir: str, identity: dict[str, Any]) -> None:
  """Refuses to resume on another base than the run started from; records it on a fresh start."""
  path = os.path.join(workdir, BASE_FILE)
  if not os.path.exists(path):
    run_dir.write_atomic(path, json.dumps(identity, indent=1, sort_keys=True))
    return
  saved = json.loads(run_dir.read_bytes(path))
  changed = [name for name, value in identity['checksums'].items()
             if saved['checksums'].get(name) != value]
  if changed or saved['init_from'] != identity['init_from']:
    raise ValueError(
        f'{workdir} was fine-tuned from other base parameters than {identity["init_from"]} holds '
        f'now ({len(changed)} arrays differ, e.g. {changed[:2]}; recorded base '
        f'{saved["init_from"]}): the pre-trained run has moved on. Fine-tune into a new --workdir.')


def _init_fn(rng: jax.Array, model: GPT, optimizer, seq_len: int, method: str) -> TrainState:
  params = model.init(rng, jnp.zeros((1, seq_len), jnp.int32))['params']
  trainable, _ = peft.split_trainable(params, method)
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                    opt_state=optimizer.init(trainable))


def _state_init(config: ml_collections.ConfigDict) -> tuple[GPTConfig, Any]:
  """The fine-tune's model config and its train-state init, a function of the PRNG key. The
  parameters do not depend on the attention backend, so initialisation traces the plain one."""
  model_cfg = dataclasses.replace(GPTConfig.from_run_config(config), attention_impl='xla')
  return model_cfg, functools.partial(
      _init_fn, model=GPT(model_cfg), optimizer=optim.make_optimizer(config.train, model_cfg),
      seq_len=config.data.seq_len, method=model_cfg.peft.method)


@dataclasses.dataclass
class SplitState:
  state: TrainState  # of the trainable parameters
  state_shardings: Any
  frozen: Any  # the base parameters the method leaves alone ({} for 'full')
  frozen_shardings: Any


def create_split_state(config: ml_collections.ConfigDict, mesh: Mesh, rules: sharding.Rules,
                       base_params: Any) -> SplitState:
  """The train state of the method's parameters (fresh) and the frozen base, both sharded.

  Under 'full' the trainable parameters are the base's; otherwise the base fills the frozen part,
  which must have exactly the base checkpoint's layout.
  """
  model_cfg, init = _state_init(config)
  method = model_cfg.peft.method
  rng = jax.random.key(config.seed)
  boxed = jax.eval_shape(init, rng)
  state_shardings = sharding.logical_shardings(boxed, mesh, rules)
  sharding.check_divisible(nn.unbox(boxed), state_shardings, mesh)
  state = jax.jit(lambda key: nn.unbox(init(key)), out_shardings=state_shardings)(rng)

  boxed_params = jax.eval_shape(
      lambda key: GPT(model_cfg).init(key, jnp.zeros((1, config.data.seq_len), jnp.int32)),
      rng)['params']
  _, boxed_frozen = peft.split_trainable(boxed_params, method)
  frozen_shardings = sharding.logical_shardings(boxed_frozen, mesh, rules)
  expected = state.params if method == 'full' else nn.unbox(boxed_frozen)
  layout = lambda tree: {jax.tree_util.keystr(p): (x.shape, x.dtype)
                         for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  if layout(expected) != layout(base_params):
    raise ValueError('The base checkpoint\'s parameters do not match the fine-tuned model\'s '
                     'frozen part; the fine-tune config changes the architecture.')
  if method == 'full':
    state = state.replace(params=jax.device_put(base_params, state_shardings.params))
    return SplitState(state, state_shardings, {}, {})
  return SplitState(state, state_shardings, jax.device_put(base_params, frozen_shardings),
                    frozen_shardings)


def load_params(workdir: str) -> tuple[ml_collections.ConfigDict, Any]:
  """Any run's config and the whole parameter tree its model applies: a pre-trained run's
  checkpoint, or a fine-tune's trained parameters combined with its base's."""
  config = run_dir.read_config(workdir)
  if 'finetune' not in config:
    return train.load_params(workdir)
  _, base_params = load_base(config.finetune.init_from)
  if os.path.exists(os.path.join(workdir, BASE_FILE)):
    check_base(workdir, base_identity(config.finetune.init_from, base_params))
  model_cfg, init = _state_init(config)
  abstract = nn.unbox(jax.eval_shape(init, jax.random.key(config.seed)))
  trainable = checkpointing.restore_params(workdir, abstract)
  if model_cfg.peft.method == 'full':
    return config, trainable
  return config, peft.combine(trainable, base_params)


def plain_run(workdir: str) -> tuple[ml_collections.ConfigDict, Any]:
  """A run as the plain model: a LoRA fine-tune with its factors merged into the weights, or a
  pre-trained / fully fine-tuned run as it is. Other methods add modules the plain model lacks."""
  config, params = load_params(workdir)
  if 'finetune' not in config or config.finetune.method == 'full':
    return config, params
  if config.finetune.method != 'lora':
    raise ValueError(f'{workdir} was fine-tuned with finetune.method={config.finetune.method!r}, '
                     'whose modules the plain model does not have; only LoRA merges into the '
                     'weights.')
  merged = peft.merge_lora(params, GPTConfig.from_run_config(config))
  plain = ml_collections.ConfigDict(config.to_dict())
  del plain['finetune']
  return plain, merged
