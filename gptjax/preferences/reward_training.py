"""The reward model: a scalar-headed GPT started from the policy's run, fitted to preference pairs.

  python -m gptjax.preferences reward --config=experiments/configs/preferences.py:reward \
      --init_from=runs/tiny_sft --pairs=runs/pairs --workdir=runs/rm

The trunk starts as the --init_from run's (the SFT model, as in Ouyang et al. 2022, so the reward
model reads text as the policy does) and the head is new (`reward_model.attach_scalar_head`). A
sequence's reward is the score at its last real token: the EOS of a complete response, the last
token of a truncated one. Each step takes data.batch_size pairs and minimises the Bradley-Terry
loss of their rewards (`preference_losses.bradley_terry_loss`); reward.max_pairs > 0 trains on
the first that many pairs only. Records: `train_loss`, `train_accuracy`, `train_margin`; each
evaluation adds `eval_loss`, `eval_accuracy` (pairs ranked the right way round, a tie counting
half) and `eval_margin` over the held-out pairs.

PPO reads the trained model back with `load_reward_model`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gptjax.data.tokenizer import load_tokenizer
from gptjax.model.config import GPTConfig
from gptjax.parallel import sharding
from gptjax.preferences import (pair_data, pairs as preference_pairs, reward_model,
                                stage as preference_stage)
from gptjax.preferences.losses import bradley_terry_loss
from gptjax.runs import run_dir
from gptjax.train import checkpointing, optim
from gptjax.train.steps import TrainState

Array = jax.Array
EVAL_NAMES = ('accuracy', 'loss', 'margin')


def example_inputs(seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  return np.zeros((1, seq_len), np.int32), np.ones((1, seq_len), bool)


def pair_rewards(params: Any, model_cfg: GPTConfig, batch_Bx2x2xT: Array) -> Array:
  """[B, 2]: the rewards of each pair's chosen and rejected sequence, in one forward pass."""
  b, _, _, t = batch_Bx2x2xT.shape
  tokens_Bx2xT, segments_Bx2xT = batch_Bx2x2xT[:, :, 0], batch_Bx2x2xT[:, :, 1]
  rewards_2B = reward_model.rewards(params, model_cfg, tokens_Bx2xT.reshape(2 * b, t),
                                    segments_Bx2xT.reshape(2 * b, t) != pair_data.PAD)
  return rewards_2B.reshape(b, 2)


def train_step(state: TrainState, batch_Bx2x2xT: Array, *, model_cfg: GPTConfig, optimizer,
               schedule) -> tuple[TrainState, dict[str, Array]]:
  def loss_fn(params):
    rewards_Bx2 = pair_rewards(params, model_cfg, batch_Bx2x2xT)
    return bradley_terry_loss(rewards_Bx2[:, 0], rewards_Bx2[:, 1])

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state, update_metrics = preference_stage.optimizer_update(state, grads, optimizer, schedule)
  return state, {'train_loss': loss, 'train_accuracy': metrics['accuracy'],
                 'train_margin': metrics['margin'], **update_metrics}


def eval_step(params: Any, batch_Bx2x2xT: Array, *, model_cfg: GPTConfig) -> Array:
  """The per-pair loss, accuracy and margin summed over the batch's real pairs, and their count."""
  rewards_Bx2 = pair_rewards(params, model_cfg, batch_Bx2x2xT)
  per_pair = jax.vmap(lambda r_2: bradley_terry_loss(r_2[:1], r_2[1:]))(rewards_Bx2)
  loss_B, metrics = per_pair
  return preference_stage.summed({'loss': loss_B, 'accuracy': metrics['accuracy'],
                                  'margin': metrics['margin']}, batch_Bx2x2xT)


class Steps(NamedTuple):
  shardings: Any  # of the train state
  train: Callable  # (state, batch) -> (state, metrics); the state is donated
  evaluate: Callable  # (params, batch) -> summed per-pair metrics (`eval_step`)


@functools.lru_cache(maxsize=8)
def compiled_steps(model_cfg: GPTConfig, train_config: ml_collections.FrozenConfigDict,
                   seq_len: int, mesh: Mesh, rules: sharding.Rules) -> Steps:
  """The steps jitted with explicit shardings, once per model, training config and mesh (the
  runs of one process, a study's or a resumed test's, compile them once)."""
  optimizer = optim.make_optimizer(train_config, model_cfg)
  shardings = preference_stage.train_state_shardings(
      reward_model.ScalarHeadGPT(model_cfg), example_inputs(seq_len), optimizer, mesh, rules)
  step_fn = functools.partial(train_step, model_cfg=model_cfg, optimizer=optimizer,
                              schedule=optim.learning_rate_schedule(train_config))
  batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  jit_train = jax.jit(sharding.traced_under(mesh, rules, step_fn, 'reward_train_step'),
                      in_shardings=(shardings, batch_sharding),
                      out_shardings=(shardings, replicated), donate_argnums=0)
  jit_eval = jax.jit(sharding.traced_under(
      mesh, rules, functools.partial(eval_step, model_cfg=model_cfg), 'reward_eval_step'),
      in_shardings=(shardings.params, batch_sharding), out_shardings=replicated)
  return Steps(shardings, jit_train, jit_eval)


def abstract_state(config: ml_collections.ConfigDict) -> TrainState:
  model_cfg = dataclasses.replace(GPTConfig.from_run_config(config), attention_impl='xla')
  return preference_stage.abstract_train_state(
      reward_model.ScalarHeadGPT(model_cfg), example_inputs(config.data.seq_len),
      optim.make_optimizer(config.train, model_cfg))


def load_reward_model(workdir: str) -> tuple[ml_collections.ConfigDict, Any]:
  """A reward run's config and the parameters of its latest checkpoint, on the host."""
  config = run_dir.read_config(workdir)
  if 'reward' not in config:
    raise ValueError(f'{workdir} is not a reward-model run; pass the --workdir of `python -m '
                     'gptjax.preferences reward`.')
  params = checkpointing.restore_params(workdir, abstract_state(config))
  return config, jax.device_get(params)


def train_reward_model(config: ml_collections.ConfigDict, init_from: str, workdir: str, *,
                       allow_config_change: bool = False) -> dict[str, Any]:
  """Trains the reward model `config` describes into `workdir`; returns the last record.

  The policy run, the pairs and the config are read and checked before the workdir is touched.
  """
  if 'reward' not in config:
    raise ValueError('The reward stage reads a config with a reward section; pass '
                     '--config=experiments/configs/preferences.py:reward.')
  config = preference_stage.resolve_config(config, init_from)
  mesh = sharding.make_mesh(config.mesh)
  preference_stage.check_train_config(config, mesh)
  if not isinstance(config.reward.max_pairs, int) or config.reward.max_pairs < 0:
    raise ValueError(f'reward.max_pairs={config.reward.max_pairs!r} must be a whole number >= 0 '
                     '(0 trains on every pair).')
  tokenizer = load_tokenizer(init_from)
  path = preference_pairs.pairs_path(config.preferences.pairs_from)
  train_pairs, eval_pairs = preference_pairs.split_pairs(
      preference_pairs.read_pairs(path), config.preferences.eval_fraction, path)
  if config.reward.max_pairs:
    train_pairs = train_pairs[:config.reward.max_pairs]
  batch_sharding = sharding.batch_sharding(mesh)
  block, blocks = sharding.process_batch_block(batch_sharding, config.data.batch_size, 2)
  pairs = pair_data.build_pair_data(config, tokenizer, train_pairs, eval_pairs,
                                    process_index=block, process_count=blocks)
  policy = preference_stage.load_policy(init_from)
  model_cfg = preference_stage.policy_model(config, mesh)
  params = jax.device_get(reward_model.attach_scalar_head(policy, model_cfg, seed=config.seed))
  sources = {'init_from': preference_stage.params_source(init_from, policy),
             'pairs': preference_stage.file_source(path)}
  with preference_stage.taken_workdir(config, workdir, allow_config_change, sources) as changed:
    rules = sharding.logical_rules(config.mesh)
    state, shardings = preference_stage.place_train_state(
        reward_model.ScalarHeadGPT(model_cfg), example_inputs(config.data.seq_len), params,
        optim.make_optimizer(config.train, model_cfg), mesh, rules)
    steps = compiled_steps(model_cfg, ml_collections.FrozenConfigDict(config.train),
                           config.data.seq_len, mesh, rules)
    to_global = preference_stage.pair_to_global(config, mesh)
    evaluate_with = lambda params, batches: preference_stage.evaluate_pairs(
        steps.evaluate, params, batches, to_global, EVAL_NAMES)
    return preference_stage.train_on_pairs(config, workdir, mesh, rules, model_cfg, state,
                                           shardings, pairs, steps.train, evaluate_with,
                                           changed=changed)

