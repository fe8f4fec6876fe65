"""Learning from preferences (`python -m gptjax.preferences STAGE`), one config per stage:
`preferences.py:pairs`, `:reward`, `:dpo`, `:ppo` (docs/preferences.md).

The model, tokenizer and data source come from the policy run named by --init_from; a stage's
config sets only what the stage changes, so its config.json names exactly what it depends on.

preferences (every stage):
  init_from: the policy run (an SFT run, or a pre-trained one); --init_from overrides it. gold: the
  gold reward that labels pairs and scores samples (`gptjax/preferences/gold_rewards.py`). The
    default counts the letter 'e' up to 20: every token can add to it, so a small model's policy
    and a small reward model both move it within minutes, and its cap bounds it at 1.
  eval_fraction: the share of prompts (by a stable hash) whose pairs every stage holds out.
  max_prompt_tokens, max_new_tokens: a rollout's shape; prompts keep their last max_prompt_tokens
    tokens, responses stop at EOS or after max_new_tokens. Their sum is the row length and must
    fit the policy's max_seq_len.
  pairs_from (reward, dpo, ppo): the pairs stage's --workdir or a pairs JSONL file (--pairs).
  eval_samples (dpo, ppo): responses to held-out prompts sampled at each evaluation; a multiple
    of data.batch_size.
pairs: prompt_task ('docstring', or any task of `gptjax/finetune/tasks.py`, with task_path for
  'jsonl'), num_prompts, samples_per_prompt (K: all K(K-1)/2 pairs of a prompt's responses are
  labelled), bt_noise (the labeller's Bradley-Terry temperature; 0 labels by the gold reward),
  skip_ties (drop pairs whose gold rewards are equal).
reward: max_pairs, the training pairs used (0: all).
dpo: beta, the KL weight of DPO's implicit reward.
ppo: reward_from (the reward run, --reward_from), epochs and minibatches per rollout batch,
  clip_eps, value_clip (0: none), gamma, lam (GAE), kl_beta (the KL penalty's weight), kl_target
  (0: a fixed beta; else Ziegler et al.'s adaptive controller with kl_horizon), entropy_coef,
  reward_norm_samples (the starting policy's samples whose reward-model scores set the mean and
  spread PPO's rewards are normalised by; 0: raw scores).
"""

import ml_collections

from experiments.configs import base

STAGES = ('pairs', 'reward', 'dpo', 'ppo')


def _train(num_steps: int, learning_rate: float) -> ml_collections.ConfigDict:
  t = base.get_config().train
  t.num_steps = num_steps
  t.learning_rate = learning_rate
  t.schedule = 'constant'
  t.warmup_steps = 10
  t.weight_decay = 0.0
  t.log_every = 10
  t.eval_every = 50
  t.checkpoint_every = 50
  return t


def get_config(stage: str = 'pairs') -> ml_collections.ConfigDict:
  if stage not in STAGES:
    raise ValueError(f'Unknown preference stage {stage!r}; choose one of {STAGES}.')
  pretraining = base.get_config()
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = ml_collections.ConfigDict({'batch_size': 32})
  config.mesh = pretraining.mesh
  config.distributed = pretraining.distributed

  p = config.preferences = ml_collections.ConfigDict()
  p.init_from = ''
  p.gold = 'count_e_20'
  p.eval_fraction = 0.1
  p.max_prompt_tokens = 48
  p.max_new_tokens = 48

  if stage == 'pairs':
    config.data.batch_size = 64
    s = config.pairs = ml_collections.ConfigDict()
    s.prompt_task = 'docstring'
    s.task_path = ''
    s.num_prompts = 512
    s.samples_per_prompt = 4
    s.bt_noise = 0.0
    s.skip_ties = True
    return config

  p.pairs_from = ''
  if stage == 'reward':
    config.train = _train(num_steps=300, learning_rate=3e-4)
    config.reward = ml_collections.ConfigDict({'max_pairs': 0})
    return config

  p.eval_samples = 64
  if stage == 'dpo':
    config.train = _train(num_steps=200, learning_rate=1e-4)
    config.dpo = ml_collections.ConfigDict({'beta': 0.1})
    return config

  config.train = _train(num_steps=100, learning_rate=3e-5)
  config.train.warmup_steps = 5
  config.train.eval_every = 20
  config.train.checkpoint_every = 20
  config.train.log_every = 5
  o = config.ppo = ml_collections.ConfigDict()
  o.reward_from = ''
  o.epochs = 2
  o.minibatches = 2
  o.clip_eps = 0.2
  o.value_clip = 0.2
  o.gamma = 1.0
  o.lam = 0.95
  o.kl_beta = 0.05
  o.kl_target = 0.0
  o.kl_horizon = 10000.0
  o.entropy_coef = 0.0
  o.reward_norm_samples = 256
  return config
