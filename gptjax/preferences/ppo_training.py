"""PPO against a learned reward model, with a KL penalty to the frozen starting policy.

  python -m gptjax.preferences ppo --config=experiments/configs/preferences.py:ppo \
      --init_from=runs/tiny_sft --reward_from=runs/rm --pairs=runs/pairs --workdir=runs/ppo

The policy and the reference start as the --init_from run's parameters, the critic as the reward
model's (--reward_from: trunk and head, the usual choice when the two share a size), and the reward
model scores every rollout. One step of the run (train.num_steps of them) is one rollout batch:
data.batch_size training prompts from the pairs file (shuffled and repeated by grain, so the
position is checkpointed with the model), one response each at temperature 1, then ppo.epochs x
ppo.minibatches optimizer steps (`gptjax/preferences/ppo_steps.py`). The learning-rate schedule
counts optimizer steps. beta starts at ppo.kl_beta and, with ppo.kl_target > 0, follows the adaptive
controller between batches (`kl_control.KLController`); it lives in the checkpointed state, so a
resumed run continues with the beta it had. All randomness comes from the run's seed and the step,
so a run resumed from a checkpoint takes the very steps of one never stopped.

Records per step: `reward` (the reward model's mean score), `gold_reward` (the gold reward of the
same responses), `kl` (mean k1 KL to the reference per response), `kl_beta`, `entropy`,
`clip_fraction`, `approx_kl`, `policy_loss` (as `train_loss`), `value_loss`, `value_clip_fraction`,
`response_tokens`, the norms and the rate. Each evaluation samples preferences.eval_samples held-out
prompts (`gptjax/preferences/policy_sampling.py`): `eval_gold_reward`, `eval_kl`, `eval_reward`,
`eval_response_tokens`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging

from gptjax import train
from gptjax.data.tokenizer import load_tokenizer
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.parallel import hardware, sharding
from gptjax.preferences import (dpo_training, gold_rewards, kl_control, pair_data,
                                pairs as preference_pairs, policy_sampling, reward_model,
                                reward_normalisation, reward_training, rollouts,
                                stage as preference_stage)
from gptjax.preferences.ppo_steps import PPOSettings, PPOState, ppo_update, rollout_step
from gptjax.runs import run_dir
from gptjax.train import checkpointing, optim, stopping
from gptjax.train.recorder import Recorder

EVAL_KEY = 'eval_gold_reward'


def check_config(config: ml_collections.ConfigDict, mesh) -> None:
  o = config.ppo
  for name in ('epochs', 'minibatches'):
    if not isinstance(o[name], int) or o[name] < 1:
      raise ValueError(f'ppo.{name}={o[name]!r} must be a whole number >= 1.')
  rows = config.data.batch_size // o.minibatches
  if config.data.batch_size % o.minibatches or rows % sharding.batch_shards(mesh):
    raise ValueError(f'data.batch_size={config.data.batch_size} must split into ppo.minibatches='
                     f'{o.minibatches} minibatches that each divide over the '
                     f'{sharding.batch_shards(mesh)} batch shards of the mesh.')
  checks = (('clip_eps', o.clip_eps > 0), ('value_clip', o.value_clip >= 0),
            ('gamma', 0 <= o.gamma <= 1), ('lam', 0 <= o.lam <= 1),
            ('entropy_coef', o.entropy_coef >= 0), ('kl_target', o.kl_target >= 0))
  for name, ok in checks:
    if not ok:
      raise ValueError(f'ppo.{name}={o[name]} is out of range (clip_eps > 0; value_clip, '
                       'entropy_coef, kl_target >= 0; gamma and lam in [0, 1]).')
  controller(o, o.kl_beta)  # beta and the adaptive controller's settings
  reward_normalisation.check_samples(o.reward_norm_samples)


def controller(o: ml_collections.ConfigDict, beta: float) -> kl_control.KLController:
  if o.kl_target:
    return kl_control.KLController.adaptive(beta, target=o.kl_target, horizon=o.kl_horizon)
  return kl_control.KLController.fixed(beta)


def summarise(per_minibatch: dict[str, np.ndarray], stats: dict[str, np.ndarray]
              ) -> dict[str, float]:
  """A step's record fields: minibatch means, the final parameter norm and rate, the rollout's."""
  record = {name: float(np.mean(values)) for name, values in per_minibatch.items()}
  for name in ('param_norm', 'learning_rate'):
    record[name] = float(per_minibatch[name][-1])
  record['train_loss'] = record['policy_loss']
  return {**record, **{name: float(value) for name, value in stats.items()}}


def train_ppo(config: ml_collections.ConfigDict, init_from: str, workdir: str, *,
              allow_config_change: bool = False) -> dict[str, Any]:
  """Trains the policy `config` describes into `workdir`; returns the last record.

  The policy, the reward model, the pairs and the config are read and checked before the workdir
  is touched.
  """
  if 'ppo' not in config:
    raise ValueError('The ppo stage reads a config with a ppo section; pass '
                     '--config=experiments/configs/preferences.py:ppo.')
  config = preference_stage.resolve_config(config, init_from)
  mesh = sharding.make_mesh(config.mesh)
  preference_stage.check_train_config(config, mesh)
  check_config(config, mesh)
  gold = gold_rewards.get(config.preferences.gold)
  tokenizer = load_tokenizer(init_from)
  reward_from = config.ppo.reward_from
  if not reward_from:
    raise ValueError('PPO needs a reward model: pass --reward_from=DIR (the --workdir of `python '
                     '-m gptjax.preferences reward`).')
  reward_config, reward_params = reward_training.load_reward_model(reward_from)
  if load_tokenizer(reward_from).to_json() != tokenizer.to_json():
    raise ValueError(f'{reward_from} reads text with another tokenizer than {init_from}; the '
                     'reward model scores the policy\'s tokens, so train it from the same run.')
  path = preference_pairs.pairs_path(config.preferences.pairs_from)
  train_pairs, eval_pairs = preference_pairs.split_pairs(
      preference_pairs.read_pairs(path), config.preferences.eval_fraction, path)
  block, blocks = sharding.process_batch_block(sharding.batch_sharding(mesh),
                                               config.data.batch_size, 2)
  train_prompts = preference_pairs.unique_prompts(train_pairs)
  data = pair_data.build_prompt_data(
      config, tokenizer, train_prompts, preference_pairs.unique_prompts(eval_pairs),
      process_index=block, process_count=blocks)
  norm_rows = reward_normalisation.prompt_rows(
      tokenizer, train_prompts, config.ppo.reward_norm_samples,
      config.preferences.max_prompt_tokens, config.data.batch_size
  ) if config.ppo.reward_norm_samples else None
  params = preference_stage.load_policy(init_from)
  sources = {'init_from': preference_stage.params_source(init_from, params),
             'reward_from': preference_stage.params_source(reward_from, reward_params),
             'pairs': preference_stage.file_source(path)}
  with preference_stage.taken_workdir(config, workdir, allow_config_change, sources) as changed:
    reward_cfg = hardware.resolve_attention(GPTConfig.from_run_config(reward_config),
                                            mesh.devices.flat[0])
    return _train(config, workdir, mesh, preference_stage.policy_model(config, mesh), params,
                  reward_cfg, reward_params, data, gold, norm_rows, changed=changed)


class Steps(NamedTuple):
  shardings: PPOState  # of the state
  rollout: Callable  # (state, prompts, key, ref_params, reward_params) -> ScoredRollout
  update: Callable  # (state, rollout, key) -> (state, per-minibatch metrics, stats); donates
  score: Callable  # (reward_params, rollout) -> the reward model's [B] scores


@functools.lru_cache(maxsize=8)
def compiled_steps(policy_cfg: GPTConfig, reward_cfg: GPTConfig, settings: PPOSettings,
                   train_config: ml_collections.FrozenConfigDict, seq_len: int,
                   max_new_tokens: int, eos_id: int, mesh, rules: sharding.Rules) -> Steps:
  """The steps jitted once per models, settings and mesh (the runs of one process, a study's or
  a resumed test's, compile them once). The critic has the reward model's architecture."""
  policy_optimizer = optim.make_optimizer(train_config, policy_cfg)
  critic_optimizer = optim.make_optimizer(train_config, reward_cfg)
  replicated = sharding.replicated(mesh)
  shardings = PPOState(
      policy=preference_stage.train_state_shardings(
          GPT(policy_cfg), dpo_training.example_inputs(seq_len), policy_optimizer, mesh, rules),
      critic=preference_stage.train_state_shardings(
          reward_model.ScalarHeadGPT(reward_cfg), reward_training.example_inputs(seq_len),
          critic_optimizer, mesh, rules),
      kl_beta=replicated)
  roll = functools.partial(rollout_step, policy_cfg=policy_cfg, critic_cfg=reward_cfg,
                           reward_cfg=reward_cfg, max_new_tokens=max_new_tokens, eos_id=eos_id)
  update = functools.partial(ppo_update, policy_cfg=policy_cfg, critic_cfg=reward_cfg,
                             settings=settings, policy_optimizer=policy_optimizer,
                             critic_optimizer=critic_optimizer,
                             schedule=optim.learning_rate_schedule(train_config))
  score = lambda params, rollout: rollouts.sequence_rewards(params, reward_cfg, rollout)
  return Steps(
      shardings=shardings,
      rollout=jax.jit(sharding.traced_under(mesh, rules, roll, 'ppo_rollout')),
      update=jax.jit(sharding.traced_under(mesh, rules, update, 'ppo_update'),
                     out_shardings=(shardings, replicated, replicated), donate_argnums=0),
      score=jax.jit(sharding.traced_under(mesh, rules, score, 'reward_scores')))


def initial_state(config, mesh, rules, policy_cfg: GPTConfig, params, reward_cfg: GPTConfig,
                  reward_params) -> tuple[PPOState, Any, Any]:
  """(state, reference params, reward model params), each a copy of its own in its shardings:
  the policy and the reference from `params`, the critic and the reward model from
  `reward_params`."""
  seq_len = config.data.seq_len
  policy, policy_shardings = preference_stage.place_train_state(
      GPT(policy_cfg), dpo_training.example_inputs(seq_len), params,
      optim.make_optimizer(config.train, policy_cfg), mesh, rules)
  critic, critic_shardings = preference_stage.place_train_state(
      reward_model.ScalarHeadGPT(reward_cfg), reward_training.example_inputs(seq_len),
      reward_params, optim.make_optimizer(config.train, reward_cfg), mesh, rules)
  kl_beta = jax.device_put(np.float32(config.ppo.kl_beta), sharding.replicated(mesh))
  return (PPOState(policy=policy, critic=critic, kl_beta=kl_beta),
          preference_stage.place_params(params, policy_shardings.params),
          preference_stage.place_params(reward_params, critic_shardings.params))


def _train(config, workdir, mesh, policy_cfg: GPTConfig, params, reward_cfg: GPTConfig,
           reward_params, data, gold, norm_rows, *, changed: bool) -> dict[str, Any]:
  rules = sharding.logical_rules(config.mesh)
  p, t = config.preferences, config.train
  steps = compiled_steps(policy_cfg, reward_cfg, PPOSettings.from_config(config.ppo),
                         ml_collections.FrozenConfigDict(t), config.data.seq_len,
                         p.max_new_tokens, int(data.tokenizer.eos_id), mesh, rules)
  sampler = policy_sampling.Sampler(policy_cfg, data.tokenizer, p.max_new_tokens,
                                    config.data.batch_size, mesh, rules)
  if config.ppo.reward_norm_samples:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      normalisation = reward_normalisation.load_or_measure(workdir, lambda: (
          reward_normalisation.measure(sampler, params, norm_rows,
                                       lambda r: steps.score(reward_params, r), config.seed)))
    logging.info('Reward scores normalised on %d samples of the starting policy: mean %.4g, '
                 'std %.4g.', normalisation.samples, normalisation.mean, normalisation.std)
    reward_params = reward_normalisation.fold_into_head(reward_params, normalisation)
  state, ref_params, frozen_reward = initial_state(config, mesh, rules, policy_cfg, params,
                                                   reward_cfg, reward_params)
  manager = checkpointing.make_manager(workdir, save_every=t.checkpoint_every,
                                       keep=t.keep_checkpoints, async_save=t.async_checkpoints)
  start_step, state = train.restore_or_start(manager, workdir, state, steps.shardings, data)
  preference_stage.write_config(workdir, config, data.tokenizer, changed=changed,
                                start_step=start_step)
  eval_rows = np.concatenate(list(data.eval_batches()))  # the held-out prompts, cycled

  def evaluate_now(state: PPOState) -> dict[str, float]:
    return policy_sampling.policy_report(
        sampler, state.policy.params, ref_params, eval_rows, gold,
        policy_sampling.eval_key(config.seed), lambda r: steps.score(frozen_reward, r))

  recorder = Recorder(config, policy_cfg, workdir, data, start_step)
  to_global = functools.partial(train.global_batch, batch_sharding=sharding.batch_sharding(mesh),
                                global_shape=(config.data.batch_size, 2, p.max_prompt_tokens))
  with (stopping.StopSignals().installed() as preemption, jax.set_mesh(mesh),
        nn.logical_axis_rules(rules)):
    if start_step in (0, t.num_steps):
      preference_stage.record_eval_once(workdir, recorder, start_step, EVAL_KEY,
                                        lambda: evaluate_now(state))
    record = _loop(config, state, start_step, data, to_global, steps, evaluate_now, manager,
                   recorder, preemption, ref_params, frozen_reward, gold)
  train.close_run(manager, recorder)
  preemption.raise_if_stopped()
  return record


def load_state(workdir: str) -> PPOState:
  """A PPO run's latest checkpointed state, on the host: the policy, the critic and beta."""
  config = run_dir.read_config(workdir)
  if 'ppo' not in config:
    raise ValueError(f'{workdir} is not a PPO run; pass the --workdir of `python -m '
                     'gptjax.preferences ppo`.')
  models = [dataclasses.replace(GPTConfig.from_run_config(c), attention_impl='xla')
            for c in (config, run_dir.read_config(config.ppo.reward_from))]
  seq_len = config.data.seq_len
  abstract = PPOState(
      policy=preference_stage.abstract_train_state(
          GPT(models[0]), dpo_training.example_inputs(seq_len),
          optim.make_optimizer(config.train, models[0])),
      critic=preference_stage.abstract_train_state(
          reward_model.ScalarHeadGPT(models[1]), reward_training.example_inputs(seq_len),
          optim.make_optimizer(config.train, models[1])),
      kl_beta=jax.ShapeDtypeStruct((), np.float32))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          abstract)
  manager = checkpointing.make_manager(workdir, save_every=1, keep=1_000_000, async_save=False)
  try:
    restored = checkpointing.restore_latest(manager, abstract, None, set_aside_unreadable=False)
  finally:
    manager.close()
  if restored is None:
    raise checkpointing.CheckpointError(f'No checkpoint in {workdir}: train the run first.')
  return jax.device_get(restored[1])


def _loop(config, state: PPOState, step: int, data, to_global, steps: Steps, evaluate_now, manager,
          recorder, preemption, ref_params, reward_params, gold):
  """Rollout batches from `step` to the end (or a stop signal); returns the last record."""
  t, o = config.train, config.ppo
  record: dict[str, Any] = {}
  run_key = jax.random.key(config.seed)
  replicated = state.kl_beta.sharding
  while step < t.num_steps:
    key = jax.random.fold_in(run_key, step)
    rollout = steps.rollout(state, to_global(next(data.train_iter)), jax.random.fold_in(key, 0),
                            ref_params, reward_params)
    texts, _ = rollouts.responses(data.tokenizer, rollout)
    beta = float(state.kl_beta)
    state, per_minibatch, stats = steps.update(state, rollout, jax.random.fold_in(key, 1))
    metrics = summarise(*jax.device_get((per_minibatch, stats)))
    metrics.update(gold_reward=float(np.mean(rollouts.gold_scores(texts, gold))), kl_beta=beta)
    step += 1
    stopping.check_finite(metrics, step, manager.latest_step())
    next_beta = controller(o, beta).update(metrics['kl'], config.data.batch_size).beta
    state = state.replace(kl_beta=jax.device_put(np.float32(next_beta), replicated))

    stop = preemption.reached(step)
    is_last = step == t.num_steps
    do_eval = step % t.eval_every == 0 or is_last
    if step % t.log_every == 0 or do_eval:
      record = recorder.record(step, metrics,
                               functools.partial(evaluate_now, state) if do_eval else None)
    if step % t.checkpoint_every == 0 or is_last or stop:
      checkpointing.save(manager, step, state, data.train_iter, force=True)
    if stop:
      preemption.stop(step)
      break
  return record
