r"""The preference study: the gold reward a policy reaches against its KL from the SFT policy, for PPO
at several KL weights and reward-model sizes and for DPO at several betas, over seeds.

  python -m experiments.preference_study --bases=runs/clm_vs_mlm_lr \
      --workdir=runs/preference_study

Every model comes from one pre-training recipe: the causal members of the objective study's rate
sweep (--bases; byte tokens, 2 layers, RoPE, 600 steps on the stdlib corpus). Every stage is a run
directory under --workdir made by the library's own stage functions, so a rerun skips what is
finished and resumes what is not:
  sft/                    the d64 base fine-tuned on the docstring task (the policy)
  pairs/                  4 responses to each of 512 docstring prompts, every two labelled by
                          count_e_20
  rm_d32/, rm_d64/, rm_d128/
                          reward models on every training pair, from the d32, d64 and d128
                          pre-trained trunks (trained once, seed 0)
  seed<k>/ppo_rm_<d>_beta<b>/
                          PPO from the SFT policy against a reward model, KL weight b; rewards
                          normalised to mean 0, unit variance on the SFT policy's samples
  seed<k>/dpo_beta<b>/    DPO at beta b
All grids below were fixed before any run of this design was seen.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from typing import Sequence

from absl import app, flags

from experiments import preference_tables as tables
from experiments.configs import preferences
from gptjax.preferences import dpo_training, pair_sampling, ppo_training, reward_training
from gptjax.runs import cli, run_dir

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICY_BASE = 'clm_d64_lr0.004'
REWARD_TRUNKS = {'d32': 'clm_d32_lr0.008', 'd64': 'clm_d64_lr0.004', 'd128': 'clm_d128_lr0.002'}
PPO_BETAS = (0.0, 0.03, 0.1)  # against the d64 reward model; beta 0 trains twice as long
SIZE_BETA = 0.03  # the reward-model size series' KL weight
DPO_BETAS = (0.1, 0.3, 1.0)


@dataclasses.dataclass(frozen=True)
class PolicyRun:
  """One PPO or DPO run from the SFT policy."""

  kind: str  # 'ppo' | 'dpo'
  beta: float
  seed: int
  steps: int
  reward: str = ''  # PPO: the reward model's trunk, a key of REWARD_TRUNKS

  @property
  def cell(self) -> str:
    """The run's settings without its seed: what the tables average over seeds."""
    if self.kind == 'ppo':
      return f'ppo_rm_{self.reward}_beta{self.beta:g}'
    return f'dpo_beta{self.beta:g}'

  @property
  def name(self) -> str:
    return f'seed{self.seed}/{self.cell}'


def plan(seeds: int, ppo_steps: int, dpo_steps: int) -> list[PolicyRun]:
  """Every policy run, seed-major: the KL-weight series, the reward-model size series, DPO."""
  runs = []
  for seed in range(seeds):
    runs += [PolicyRun('ppo', beta, seed, 2 * ppo_steps if beta == 0 else ppo_steps, 'd64')
             for beta in PPO_BETAS]
    runs += [PolicyRun('ppo', SIZE_BETA, seed, ppo_steps, reward)
             for reward in REWARD_TRUNKS if (reward, SIZE_BETA) != ('d64', SIZE_BETA)]
    runs += [PolicyRun('dpo', beta, seed, dpo_steps) for beta in DPO_BETAS]
  return runs


def _set(config, overrides: dict):
  for key, value in overrides.items():
    section, _, field = key.rpartition('.')
    (config[section] if section else config)[field] = value
  return config


def _stage(stage: str, overrides: dict):
  return _set(preferences.get_config(stage), overrides)


def _final(workdir: str) -> dict | None:
  return run_dir.final_record(workdir, (tables.GOLD, run_dir.EVAL_KEY))


def sft_run(workdir: str, base: str) -> str:
  """The base fine-tuned on the docstring task for --sft_steps steps: the policy."""
  path = os.path.join(workdir, 'sft')
  steps = FLAGS.sft_steps
  overrides = {'data.seq_len': 128, 'data.batch_size': 16, 'train.num_steps': steps,
               'train.warmup_steps': min(10, steps - 1), 'train.eval_every': steps,
               'train.checkpoint_every': steps, 'finetune.task': 'docstring',
               'finetune.num_examples': 2000, 'finetune.eval_examples': 200}
  # Its command line, not its module: gptjax.finetune defines flags this script defines too.
  subprocess.run([sys.executable, '-m', 'gptjax.finetune', '--config=experiments/configs/'
                  'finetune.py', f'--init_from={os.path.abspath(base)}',
                  f'--workdir={os.path.abspath(path)}',
                  *(f'--config.{key}={value}' for key, value in overrides.items())],
                 check=True, cwd=ROOT)
  return path


def reward_models(workdir: str, bases: str, pairs: str) -> dict[str, str]:
  """{trunk key: reward-model run}, each on every training pair from its pre-trained trunk."""
  runs = {}
  for key, trunk in REWARD_TRUNKS.items():
    runs[key] = os.path.join(workdir, f'rm_{key}')
    reward_training.train_reward_model(_stage('reward', {
        'preferences.pairs_from': pairs, 'train.num_steps': FLAGS.rm_steps,
        'train.eval_every': FLAGS.rm_steps}), os.path.join(bases, trunk), runs[key])
  return runs


def train_policy(run: PolicyRun, workdir: str, policy: str, pairs: str,
                 rms: dict[str, str]) -> None:
  path = os.path.join(workdir, run.name)
  common = {'seed': run.seed, 'preferences.pairs_from': pairs, 'train.num_steps': run.steps}
  if run.kind == 'ppo':
    ppo_training.train_ppo(_stage('ppo', {
        **common, 'ppo.reward_from': rms[run.reward], 'ppo.kl_beta': run.beta,
        'train.eval_every': 10}), policy, path)
  else:
    dpo_training.train_dpo(_stage('dpo', {**common, 'dpo.beta': run.beta,
                                          'train.eval_every': 25}), policy, path)


def run_all(workdir: str, bases: str, runs: Sequence[PolicyRun]) -> tuple[str, dict[str, str]]:
  """Every stage; returns the pairs run and the reward-model runs."""
  for key, trunk in {'policy': POLICY_BASE, **REWARD_TRUNKS}.items():
    if not _final(os.path.join(bases, trunk)):
      raise ValueError(f'{os.path.join(bases, trunk)} is not a finished pre-training run; train '
                       'the bases first: python -m launch.sweep --sweep=experiments/sweeps/'
                       f'clm_vs_mlm_lr.py --nofit --workdir={bases}')
  policy = sft_run(workdir, os.path.join(bases, POLICY_BASE))
  pairs = os.path.join(workdir, 'pairs')
  pair_sampling.make_pairs(preferences.get_config('pairs'), policy, pairs)
  rms = reward_models(workdir, bases, pairs)
  todo = [run for run in runs if not _final(os.path.join(workdir, run.name))]
  start = time.perf_counter()
  for index, run in enumerate(todo, start=1):
    train_policy(run, workdir, policy, pairs, rms)
    elapsed = time.perf_counter() - start
    print(f'[{index}/{len(todo)}] {run.name} done; {cli.format_duration(elapsed)} so far, ETA '
          f'{cli.format_duration(elapsed / index * (len(todo) - index))}', flush=True)
  return pairs, rms


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'The study directory.', required=True)
  flags.DEFINE_string('bases', 'runs/clm_vs_mlm_lr', 'The directory holding the pre-trained runs '
                      '(the objective study\'s rate sweep).')
  flags.DEFINE_integer('seeds', 3, 'Seeds of every PPO and DPO setting (0 .. seeds-1).')
  flags.DEFINE_integer('sft_steps', 40, 'Fine-tuning steps of the policy on the docstring task.')
  flags.DEFINE_integer('rm_steps', 200, 'Reward-model training steps.')
  flags.DEFINE_integer('ppo_steps', 80, 'PPO rollout batches (twice as many at beta 0).')
  flags.DEFINE_integer('dpo_steps', 150, 'DPO steps.')
  flags.DEFINE_bool('report_only', False, 'Only print the tables and draw the figure.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  if FLAGS.seeds < 2:
    raise ValueError(f'--seeds={FLAGS.seeds}: a standard error needs 2 or more (3 by default).')
  runs = plan(FLAGS.seeds, FLAGS.ppo_steps, FLAGS.dpo_steps)
  if FLAGS.report_only:
    pairs = os.path.join(FLAGS.workdir, 'pairs')
    rms = {key: os.path.join(FLAGS.workdir, f'rm_{key}') for key in REWARD_TRUNKS}
  else:
    pairs, rms = run_all(FLAGS.workdir, FLAGS.bases, runs)
  finished = [run for run in runs if _final(os.path.join(FLAGS.workdir, run.name))]
  curves = {run: tables.curve(os.path.join(FLAGS.workdir, run.name)) for run in finished}
  print(tables.format_reward_models(rms, FLAGS.bases, REWARD_TRUNKS, pairs), '\n')
  print(tables.format_finals(curves), '\n')
  print(tables.format_matched_kl(curves), '\n')
  print(tables.format_over_optimisation(curves))
  out = os.path.join(FLAGS.workdir, 'plots', 'preference_study.png')
  tables.plot(curves, out)
  print(f'Figure: {out}')


if __name__ == '__main__':
  define_flags()
  cli.run(main, 'experiments.preference_study')
