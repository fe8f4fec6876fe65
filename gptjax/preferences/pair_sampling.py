"""The pairs stage: a policy's responses to a task's prompts, labelled into preference pairs.

  python -m gptjax.preferences pairs --config=experiments/configs/preferences.py:pairs \
      --init_from=runs/tiny_sft --workdir=runs/pairs

The prompts are those of a fine-tuning task's training split (`gptjax/finetune/tasks.py`; by default
the docstring task: a function's signature and docstring, whose body the policy writes), cut to
their last preferences.max_prompt_tokens tokens. Each gets pairs.samples_per_prompt responses from
the policy at temperature 1, and every two of them become a pair labelled by the gold reward
preferences.gold (`gptjax/preferences/pairs.py`). The pairs go to `<workdir>/pairs.jsonl`; a rerun
with the same config and policy finds them there and samples nothing.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from gptjax.data.tokenizer import load_tokenizer
from gptjax.finetune import tasks
from gptjax.model.gpt import GPT
from gptjax.parallel import sharding
from gptjax.preferences import (gold_rewards, pairs as preference_pairs, policy_sampling, rollouts,
                                stage as preference_stage)
from gptjax.preferences.pairs import Pair


def check_config(config: ml_collections.ConfigDict) -> None:
  s = config.pairs
  gold_rewards.get(config.preferences.gold)
  for name, least in (('num_prompts', 1), ('samples_per_prompt', 2)):
    if not isinstance(s[name], int) or s[name] < least:
      raise ValueError(f'pairs.{name}={s[name]!r} must be a whole number >= {least}.')
  if not s.bt_noise >= 0:
    raise ValueError(f'pairs.bt_noise={s.bt_noise} must be >= 0 (0 labels without noise).')


def task_prompts(config: ml_collections.ConfigDict) -> list[str]:
  """The distinct prompts of the task's training split, at most pairs.num_prompts of them."""
  s = config.pairs
  task = ml_collections.ConfigDict({
      'seed': config.seed, 'data': config.data.to_dict(),
      'finetune': {'task': s.prompt_task, 'task_path': s.task_path, 'eval_path': '',
                   'num_examples': s.num_prompts, 'eval_examples': 1}})
  prompts = list(dict.fromkeys(e.prompt for e in tasks.load_task(task).train))
  return prompts[:s.num_prompts]


def sample_pairs(config: ml_collections.ConfigDict, params: Any, sampler: policy_sampling.Sampler,
                 prompts: list[str]) -> list[Pair]:
  """Every prompt's responses, in batches of data.batch_size rows (a prompt's K responses side by
  side), labelled in prompt order with one generator seeded by the run's seed."""
  p, s = config.preferences, config.pairs
  k, batch = s.samples_per_prompt, config.data.batch_size
  rows = np.repeat(rollouts.prompt_rows(sampler.tokenizer, prompts, p.max_prompt_tokens), k, 0)
  filled = np.concatenate([rows, rows[:1].repeat(-len(rows) % batch, 0)])  # whole batches
  texts, truncated = [], []
  for rollout in sampler.batches(params, filled, jax.random.key(config.seed)):
    batch_texts, batch_truncated = rollouts.responses(sampler.tokenizer, rollout)
    texts += batch_texts
    truncated += batch_truncated
  gold = gold_rewards.get(p.gold)
  rng = np.random.default_rng(config.seed)
  pairs = []
  for i, prompt in enumerate(prompts):
    samples = list(zip(texts[i * k:(i + 1) * k], truncated[i * k:(i + 1) * k]))
    pairs += preference_pairs.label_samples(prompt, samples, gold, rng, bt_noise=s.bt_noise,
                                            skip_ties=s.skip_ties)
  scores = rollouts.gold_scores(texts[:len(rows)], gold)
  logging.info('Sampled %d responses to %d prompts: mean gold reward %.4f; %d pairs.', len(rows),
               len(prompts), scores.mean(), len(pairs))
  return pairs


def make_pairs(config: ml_collections.ConfigDict, init_from: str, workdir: str, *,
               allow_config_change: bool = False) -> tuple[list[Pair], bool]:
  """The stage's pairs and whether they were sampled now (False: found from an earlier run).

  Everything is read and checked (the policy, the prompts, their held-out split) before the
  workdir is created, locked or written.
  """
  config = preference_stage.resolve_config(config, init_from)
  check_config(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(config.data.batch_size, mesh)
  tokenizer = load_tokenizer(init_from)
  model_cfg = preference_stage.policy_model(config, mesh)
  params = preference_stage.load_policy(init_from)
  prompts = task_prompts(config)
  preference_pairs.split_pairs([Pair(prompt, '', '') for prompt in prompts],
                               config.preferences.eval_fraction, f'pairs.prompt_task='
                               f'{config.pairs.prompt_task!r}')
  sources = {'init_from': preference_stage.params_source(init_from, params)}
  path = os.path.join(workdir, preference_pairs.PAIRS_FILE)
  with preference_stage.taken_workdir(config, workdir, allow_config_change, sources) as changed:
    if os.path.exists(path) and not changed:
      logging.info('Reusing the pairs in %s.', path)
      return preference_pairs.read_pairs(path), False
    preference_stage.write_config(workdir, config, tokenizer, changed=changed, start_step=0)
    rules = sharding.logical_rules(config.mesh)
    plain = GPT(model_cfg)
    placed = preference_stage.place_params(params, preference_stage.param_shardings(
        plain, [np.zeros((1, 1), np.int32)], mesh, rules, params))
    sampler = policy_sampling.Sampler(model_cfg, tokenizer, config.preferences.max_new_tokens,
                                      config.data.batch_size, mesh, rules)
    with jax.set_mesh(mesh):
      pairs = sample_pairs(config, placed, sampler, prompts)
    if not pairs:
      raise ValueError('Every pair of responses tied on the gold reward; sample more per prompt '
                       '(pairs.samples_per_prompt) or keep ties (pairs.skip_ties=False).')
    if jax.process_index() == 0:
      preference_pairs.write_pairs(path, pairs)
    return pairs, True
