"""The reward model, DPO and PPO on a tiny random policy and a synthetic preference task.

The task: a prompt of letters, responses of seven letters from 'xyze', and pairs labelled by the
count of 'e' (the gold reward `count_e_20`), each pair differing in that count. Checked: the reward
model ranks held-out pairs by the count; DPO's first loss is log 2 and its reference stays bitwise
frozen; PPO's first minibatch has ratio 1, approximate KL 0 and nothing clipped, and its reference
and reward model stay bitwise frozen; DPO and PPO runs resumed from a checkpoint equal straight
runs bit for bit; bad input is one line and writes nothing. The tests of a stage share its
compiled steps (`compiled_steps` caches them), so each stage compiles once.
"""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from preference_runs import policy_run, stage_config

from gptjax.data.tokenizer import ByteTokenizer
from gptjax.model.config import GPTConfig
from gptjax.parallel import hardware, sharding
from gptjax.preferences import (dpo_training, gold_rewards, pair_data, pairs as preference_pairs,
                                ppo_training, reward_normalisation, reward_training, rollouts,
                                stage as preference_stage)
from gptjax.preferences.pairs import Pair
from gptjax.train import loop

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
COUNT_E = gold_rewards.get('count_e_20')
RM_STEPS = 20
RM_ACCURACY = 0.8  # measured: 1.0 on the held-out pairs at steps 10 and 20, loss 0.693 -> 0.650
TIMING = ('step_time', 'tokens_per_s', 'eval_time', 'mfu')


def _e_count_pairs(count: int, seed: int = 0) -> list[Pair]:
  rng = np.random.default_rng(seed)
  pairs = []
  for _ in range(count):
    prompt = ''.join(rng.choice(list('abcd'), 6))
    a, b = 'e', 'e'
    while a.count('e') == b.count('e'):
      a, b = (''.join(rng.choice(list('xyze'), 7)) for _ in range(2))
    chosen, rejected = (a, b) if COUNT_E(a) > COUNT_E(b) else (b, a)
    pairs.append(Pair(prompt, chosen, rejected, COUNT_E(chosen), COUNT_E(rejected)))
  return pairs


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The policy run, the pairs file and a reward model trained on them."""
  root = tmp_path_factory.mktemp('preferences')
  policy = policy_run(str(root / 'policy'), std=0.02)
  pairs = str(root / 'pairs.jsonl')
  preference_pairs.write_pairs(pairs, _e_count_pairs(200))
  reward = str(root / 'reward')
  config = stage_config('reward', **{
      'train.num_steps': RM_STEPS, 'train.learning_rate': 3e-3, 'train.eval_every': 10,
      'train.log_every': 10, 'train.checkpoint_every': RM_STEPS,
      'preferences.pairs_from': pairs})
  reward_training.train_reward_model(config, policy, reward)
  return {'root': root, 'policy': policy, 'pairs': pairs, 'reward': reward}


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def _assert_bitwise_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def _differs(a, b) -> bool:
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(jax.device_get(a)),
                                                       jax.tree.leaves(jax.device_get(b))))


@pytest.mark.slow
def test_the_reward_model_ranks_held_out_pairs_by_the_count(runs):
  records = _records(runs['reward'])
  evals = [r for r in records if 'eval_accuracy' in r]
  assert [r['step'] for r in evals] == [0, 10, RM_STEPS]
  # At step 0 every margin is ~1e-6 and the loss log 2 (the sign of those margins alone can rank
  # many pairs right, so the accuracy is checked together with a loss that has fallen).
  assert evals[0]['eval_loss'] == pytest.approx(math.log(2), abs=1e-3)
  assert evals[-1]['eval_loss'] < math.log(2) - 0.03
  assert evals[-1]['eval_accuracy'] > RM_ACCURACY, evals
  assert {'train_loss', 'train_accuracy', 'train_margin', 'grad_norm'} <= set(records[-1])
  _, params = reward_training.load_reward_model(runs['reward'])
  assert set(params) == {'trunk', 'scalar_head'}


def _dpo_config(runs, **overrides):
  return stage_config('dpo', **{'preferences.pairs_from': runs['pairs'],
                                'preferences.eval_samples': 16, 'train.learning_rate': 1e-3,
                                'train.eval_every': 2, **overrides})


def _setup(config, policy):
  config = preference_stage.resolve_config(config, policy)
  mesh = sharding.make_mesh(config.mesh)
  return (config, mesh, sharding.logical_rules(config.mesh),
          preference_stage.policy_model(config, mesh), preference_stage.load_policy(policy))


def test_dpo_starts_at_log_2_and_never_moves_the_reference(runs):
  config, mesh, rules, model_cfg, params = _setup(_dpo_config(runs, **{'train.num_steps': 4}),
                                                  runs['policy'])
  state, ref_params = dpo_training.initial_state(config, mesh, rules, model_cfg, params)
  steps = dpo_training.compiled_steps(model_cfg, ml_collections.FrozenConfigDict(config.train),
                                      config.dpo.beta, config.data.seq_len, mesh, rules)
  rows = pair_data.pair_rows(ByteTokenizer(), _e_count_pairs(16, seed=1), config, 'test')
  batch = preference_stage.pair_to_global(config, mesh)(rows)
  losses = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):  # as the loop runs it: one compilation
    for _ in range(3):
      state, metrics = steps.train(state, batch, ref_params)
      losses.append(float(metrics['train_loss']))
  assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # the policy is the reference
  assert losses[-1] < losses[0] - 1e-4
  _assert_bitwise_equal(ref_params, params)
  assert _differs(state.params, params)


def _resumed_copy(workdir: str) -> str:
  """A copy of a finished run with its last checkpoint (step 4) gone, as a run killed after
  step 2's checkpoint would leave it."""
  copy = workdir + '_resumed'
  shutil.copytree(workdir, copy)
  shutil.rmtree(os.path.join(copy, 'checkpoints', '4'))
  return copy


@pytest.mark.slow
def test_dpo_resumes_exactly(runs):
  straight = str(runs['root'] / 'dpo')
  record = dpo_training.train_dpo(_dpo_config(runs, **{'train.num_steps': 4}), runs['policy'],
                                  straight)
  resumed = _resumed_copy(straight)
  dpo_training.train_dpo(_dpo_config(runs, **{'train.num_steps': 4}), runs['policy'], resumed)
  assert {'eval_gold_reward', 'eval_kl', 'eval_accuracy', 'eval_reward_chosen'} <= set(record)
  records = _records(straight)
  assert [r['step'] for r in records] == [0, 2, 4]
  assert records[0]['eval_kl'] == 0.0 and records[0]['eval_loss'] == pytest.approx(math.log(2))
  assert _records(resumed) == records
  # A DPO run is a plain run: the pre-training loader reads its policy.
  _assert_bitwise_equal(loop.load_params(resumed)[1], loop.load_params(straight)[1])


def _ppo_config(runs, **overrides):
  return stage_config('ppo', **{
      'preferences.pairs_from': runs['pairs'], 'ppo.reward_from': runs['reward'],
      'preferences.eval_samples': 16, 'train.learning_rate': 1e-3, 'train.eval_every': 2,
      'ppo.kl_target': 0.5, 'ppo.kl_horizon': 64.0, **overrides})


@pytest.mark.slow
def test_ppo_first_minibatch_has_ratio_one_and_frozen_models_stay_frozen(runs):
  config, mesh, rules, policy_cfg, params = _setup(_ppo_config(runs, **{'train.num_steps': 4}),
                                                   runs['policy'])
  reward_config, reward_params = reward_training.load_reward_model(runs['reward'])
  reward_cfg = hardware.resolve_attention(GPTConfig.from_run_config(reward_config),
                                          mesh.devices.flat[0])
  state, ref_params, frozen_reward = ppo_training.initial_state(
      config, mesh, rules, policy_cfg, params, reward_cfg, reward_params)
  steps = ppo_training.compiled_steps(
      policy_cfg, reward_cfg, ppo_training.PPOSettings.from_config(config.ppo),
      ml_collections.FrozenConfigDict(config.train), config.data.seq_len,
      config.preferences.max_new_tokens, 0, mesh, rules)
  prompts = [p.prompt for p in _e_count_pairs(16, seed=2)]
  rows = rollouts.prompt_rows(ByteTokenizer(), prompts, config.preferences.max_prompt_tokens)
  to_global = lambda x: loop.global_batch(x, sharding.batch_sharding(mesh), x.shape)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):  # as the loop runs it: one compilation
    for iteration in range(2):
      key = jax.random.key(iteration)
      rollout = steps.rollout(state, to_global(rows), key, ref_params, frozen_reward)
      state, per_minibatch, stats = steps.update(state, rollout, key)
      per_minibatch = jax.device_get(per_minibatch)
      if iteration == 0:
        assert float(stats['kl']) == 0.0  # the policy is the reference, bit for bit
        assert per_minibatch['max_ratio_deviation'][0] < 1e-6
        assert per_minibatch['approx_kl'][0] < 1e-9
        assert per_minibatch['clip_fraction'][0] == 0.0
        assert per_minibatch['max_ratio_deviation'][-1] > 1e-4  # after updates, ratios move
  _assert_bitwise_equal(ref_params, params)
  _assert_bitwise_equal(frozen_reward, reward_params)
  assert _differs(state.policy.params, params) and _differs(state.critic.params, reward_params)


@pytest.mark.slow
def test_ppo_resumes_exactly_with_its_adaptive_beta(runs):
  straight = str(runs['root'] / 'ppo')
  record = ppo_training.train_ppo(_ppo_config(runs, **{'train.num_steps': 4}), runs['policy'],
                                  straight)
  resumed = _resumed_copy(straight)
  ppo_training.train_ppo(_ppo_config(runs, **{'train.num_steps': 4}), runs['policy'], resumed)
  assert {'reward', 'gold_reward', 'kl', 'entropy', 'clip_fraction', 'approx_kl', 'value_loss',
          'eval_gold_reward', 'eval_kl', 'eval_reward'} <= set(record)
  records = _records(straight)
  assert [r['step'] for r in records] == [0, 2, 4] and records[0]['eval_kl'] == 0.0
  assert records[1]['kl_beta'] != records[-1]['kl_beta']  # the controller moved beta
  assert _records(resumed) == records
  _assert_bitwise_equal(ppo_training.load_state(resumed), ppo_training.load_state(straight))
  with open(os.path.join(straight, reward_normalisation.FILE)) as f:
    normalisation = json.load(f)
  assert normalisation['samples'] == 256 and normalisation['std'] > 0


def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path):
  bad_pairs = tmp_path / 'bad.jsonl'
  bad_pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n\n{"prompt": "p"}\n')
  small = ['--config.preferences.max_prompt_tokens=12', '--config.preferences.max_new_tokens=8']
  cases = {
      'missing': (['dpo', '--config=experiments/configs/preferences.py:dpo',
                   f'--init_from={tmp_path / "absent"}', f'--pairs={runs["pairs"]}'],
                  'is not a gptjax run directory'),
      'malformed': (['reward', '--config=experiments/configs/preferences.py:reward',
                     f'--init_from={runs["policy"]}', f'--pairs={bad_pairs}', *small],
                    f'{bad_pairs}:3: expected an object'),
  }
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  processes = {name: subprocess.Popen(
      [sys.executable, '-m', 'gptjax.preferences', *args, f'--workdir={tmp_path / name}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for name, (args, _) in cases.items()}
  for name, process in processes.items():
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2 and 'Traceback' not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith('gptjax.preferences: error: ') and cases[name][1] in last, last
    assert not (tmp_path / name).exists()
