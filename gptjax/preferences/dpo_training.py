"""Direct preference optimisation: the policy trained on pairs against a frozen reference.

  python -m gptjax.preferences dpo --config=experiments/configs/preferences.py:dpo \
      --init_from=runs/tiny_sft --pairs=runs/pairs --workdir=runs/dpo

The policy and the reference both start as the --init_from run's parameters (Rafailov et al.
2023). The train state holds the policy alone; the reference is a separate, never-donated copy
that each step reads and no step writes, so it stays bitwise the run's parameters (and a resume
reads it from the run again, refused if that run has changed: `preference_stage.check_sources`).
A sequence's log-prob is the sum over its response tokens (EOS included for a complete response)
of `rollouts.token_logprobs`, one full forward pass per side; the loss is
`preference_losses.dpo_loss` with beta = dpo.beta.

Records: `train_loss`, `train_accuracy`, `train_margin` and the implicit rewards
`train_reward_chosen`, `train_reward_rejected`. Each evaluation adds the same over the held-out
pairs (`eval_*`) and samples the policy on preferences.eval_samples held-out prompts:
`eval_gold_reward`, `eval_kl` (KL(policy || reference), nats per response, from the samples) and
`eval_response_tokens` (`gptjax/preferences/policy_sampling.py`).

The run directory is a plain run's (its checkpoint holds a GPT's train state), so
`gptjax.generate` samples from it and a later stage can start from it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gptjax.data.tokenizer import load_tokenizer
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.parallel import sharding
from gptjax.preferences import (gold_rewards, pair_data, pairs as preference_pairs, policy_sampling,
                                rollouts, stage as preference_stage)
from gptjax.preferences.losses import dpo_loss
from gptjax.train import optim
from gptjax.train.steps import TrainState

Array = jax.Array
EVAL_NAMES = ('accuracy', 'loss', 'margin', 'reward_chosen', 'reward_rejected')


def pair_logprobs(params: Any, model_cfg: GPTConfig, batch_Bx2x2xT: Array) -> Array:
  """[B, 2]: log pi(response | prompt) of each pair's chosen and rejected side."""
  b, _, _, t = batch_Bx2x2xT.shape
  tokens_2BxT = batch_Bx2x2xT[:, :, 0].reshape(2 * b, t)
  segments_2BxT = batch_Bx2x2xT[:, :, 1].reshape(2 * b, t)
  logp_2BxT = rollouts.token_logprobs(params, model_cfg, tokens_2BxT,
                                      segments_2BxT != pair_data.PAD,
                                      segments_2BxT == pair_data.RESPONSE)
  return logp_2BxT.sum(-1).reshape(b, 2)


def train_step(state: TrainState, batch_Bx2x2xT: Array, ref_params: Any, *, model_cfg: GPTConfig,
               beta: float, optimizer, schedule) -> tuple[TrainState, dict[str, Array]]:
  """One optimizer step of the policy; `ref_params` are read only."""
  ref_Bx2 = jax.lax.stop_gradient(pair_logprobs(ref_params, model_cfg, batch_Bx2x2xT))

  def loss_fn(params):
    policy_Bx2 = pair_logprobs(params, model_cfg, batch_Bx2x2xT)
    return dpo_loss(policy_Bx2[:, 0], policy_Bx2[:, 1], ref_Bx2[:, 0], ref_Bx2[:, 1], beta)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state, update_metrics = preference_stage.optimizer_update(state, grads, optimizer, schedule)
  return state, {'train_loss': loss, **{f'train_{k}': v for k, v in metrics.items()},
                 **update_metrics}


def eval_step(params: Any, batch_Bx2x2xT: Array, ref_params: Any, *, model_cfg: GPTConfig,
              beta: float) -> Array:
  """The per-pair DPO loss and its metrics summed over the batch's real pairs, and their count."""
  policy_Bx2 = pair_logprobs(params, model_cfg, batch_Bx2x2xT)
  ref_Bx2 = pair_logprobs(ref_params, model_cfg, batch_Bx2x2xT)
  loss_B, metrics = jax.vmap(lambda p_2, r_2: dpo_loss(p_2[:1], p_2[1:], r_2[:1], r_2[1:], beta))(
      policy_Bx2, ref_Bx2)
  return preference_stage.summed({'loss': loss_B, **metrics}, batch_Bx2x2xT)


class Steps(NamedTuple):
  shardings: Any  # of the policy's train state
  train: Callable  # (state, batch, ref_params) -> (state, metrics); the state is donated
  evaluate: Callable  # (params, batch, ref_params) -> summed per-pair metrics (`eval_step`)


@functools.lru_cache(maxsize=8)
def compiled_steps(model_cfg: GPTConfig, train_config: ml_collections.FrozenConfigDict,
                   beta: float, seq_len: int, mesh: Mesh, rules: sharding.Rules) -> Steps:
  """The steps jitted with explicit shardings, once per model, settings and mesh (the runs of
  one process, a study's or a resumed test's, compile them once)."""
  optimizer = optim.make_optimizer(train_config, model_cfg)
  shardings = preference_stage.train_state_shardings(
      GPT(model_cfg), example_inputs(seq_len), optimizer, mesh, rules)
  step_fn = functools.partial(train_step, model_cfg=model_cfg, beta=beta, optimizer=optimizer,
                              schedule=optim.learning_rate_schedule(train_config))
  batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  jit_train = jax.jit(sharding.traced_under(mesh, rules, step_fn, 'dpo_train_step'),
                      in_shardings=(shardings, batch_sharding, shardings.params),
                      out_shardings=(shardings, replicated), donate_argnums=0)
  jit_eval = jax.jit(sharding.traced_under(
      mesh, rules, functools.partial(eval_step, model_cfg=model_cfg, beta=beta), 'dpo_eval_step'),
      in_shardings=(shardings.params, batch_sharding, shardings.params), out_shardings=replicated)
  return Steps(shardings, jit_train, jit_eval)


def example_inputs(seq_len: int) -> list[np.ndarray]:
  return [np.zeros((1, seq_len), np.int32)]


def initial_state(config: ml_collections.ConfigDict, mesh: Mesh, rules: sharding.Rules,
                  model_cfg: GPTConfig, params: Any) -> tuple[TrainState, Any]:
  """(the policy's train state, the reference parameters): two copies of `params` in their
  shardings that share no buffer, so donating the state never touches the reference."""
  state, shardings = preference_stage.place_train_state(
      GPT(model_cfg), example_inputs(config.data.seq_len), params,
      optim.make_optimizer(config.train, model_cfg), mesh, rules)
  return state, preference_stage.place_params(params, shardings.params)


def train_dpo(config: ml_collections.ConfigDict, init_from: str, workdir: str, *,
              allow_config_change: bool = False) -> dict[str, Any]:
  """Trains the policy `config` describes into `workdir`; returns the last record.

  The policy run, the pairs and the config are read and checked before the workdir is touched.
  """
  if 'dpo' not in config:
    raise ValueError('The dpo stage reads a config with a dpo section; pass '
                     '--config=experiments/configs/preferences.py:dpo.')
  config = preference_stage.resolve_config(config, init_from)
  mesh = sharding.make_mesh(config.mesh)
  preference_stage.check_train_config(config, mesh)
  if not config.dpo.beta > 0:
    raise ValueError(f'dpo.beta={config.dpo.beta} must be > 0.')
  gold = gold_rewards.get(config.preferences.gold)
  tokenizer = load_tokenizer(init_from)
  path = preference_pairs.pairs_path(config.preferences.pairs_from)
  train_pairs, eval_pairs = preference_pairs.split_pairs(
      preference_pairs.read_pairs(path), config.preferences.eval_fraction, path)
  batch_sharding = sharding.batch_sharding(mesh)
  block, blocks = sharding.process_batch_block(batch_sharding, config.data.batch_size, 2)
  pairs = pair_data.build_pair_data(config, tokenizer, train_pairs, eval_pairs,
                                    process_index=block, process_count=blocks)
  p = config.preferences
  eval_rows = rollouts.prompt_rows(
      tokenizer, pair_data.eval_prompt_cycle(pairs.eval_prompts, p.eval_samples),
      p.max_prompt_tokens)
  params = preference_stage.load_policy(init_from)
  sources = {'init_from': preference_stage.params_source(init_from, params),
             'pairs': preference_stage.file_source(path)}
  with preference_stage.taken_workdir(config, workdir, allow_config_change, sources) as changed:
    model_cfg = preference_stage.policy_model(config, mesh)
    rules = sharding.logical_rules(config.mesh)
    state, ref_params = initial_state(config, mesh, rules, model_cfg, params)
    steps = compiled_steps(model_cfg, ml_collections.FrozenConfigDict(config.train),
                           float(config.dpo.beta), config.data.seq_len, mesh, rules)
    sampler = policy_sampling.Sampler(model_cfg, tokenizer, p.max_new_tokens,
                                      config.data.batch_size, mesh, rules)
    to_global = preference_stage.pair_to_global(config, mesh)

    def evaluate_with(params, batches) -> dict[str, float]:
      held_out = preference_stage.evaluate_pairs(
          lambda params, batch: steps.evaluate(params, batch, ref_params), params, batches,
          to_global, EVAL_NAMES)
      return {**held_out, **policy_sampling.policy_report(
          sampler, params, ref_params, eval_rows, gold, policy_sampling.eval_key(config.seed))}

    return preference_stage.train_on_pairs(
        config, workdir, mesh, rules, model_cfg, state, steps.shardings, pairs,
        lambda state, batch: steps.train(state, batch, ref_params), evaluate_with, changed=changed)
