r"""The preference study: the gold reward a policy reaches against its KL from the SFT policy, for
PPO against reward models fitted to different numbers of pairs and for DPO at several betas.

  python -m experiments.preference_study --workdir=runs/preference_study \
      [--base_run=runs/tiny] [--sft_steps=40] [--reward_pairs=150,600,0] [--betas=0.1,0.3,1]

Every stage is a run directory under --workdir, made by the library's own stage functions, so a
rerun resumes or reuses what is there:
  base/            a tiny pre-trained GPT (d_model 64, 2 layers, byte tokens; or --base_run)
  sft/             the base fine-tuned briefly on the docstring task (--sft_steps=0: the base is
                   the policy)
  pairs/           4 responses to each of 512 docstring prompts, every two labelled by count_e_20
  rm_<n>/          reward models on the first n training pairs (0: all of them)
  ppo_rm_<n>/      PPO against each reward model
  dpo_beta_<b>/    DPO at each beta
Then it prints the table (final and best gold reward, KL, the reward models' held-out accuracy),
checks that PPO and DPO each end above the SFT policy's gold reward, and draws
<workdir>/plots/preference_study.png: gold reward against KL for every run (left) and PPO's proxy
reward, the reward model's score, against KL (right). Every point is an evaluation on the same
held-out prompts with the same sampling keys; step 0 is the SFT policy itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments.configs import base, preferences  # noqa: E402
from gptjax import train
from gptjax.preferences import dpo_training, pair_sampling, ppo_training, reward_training
from gptjax.runs import cli, run_dir

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLD = 'eval_gold_reward'


def _set(config, overrides: dict):
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def base_run(workdir: str) -> str:
  """A tiny GPT pre-trained on the standard library (or the --base_run given)."""
  if FLAGS.base_run:
    return FLAGS.base_run
  path = os.path.join(workdir, 'base')
  train.train_and_evaluate(_set(base.get_config(), {
      'model.d_model': 64, 'model.num_layers': 2, 'model.num_heads': 4, 'model.max_seq_len': 128,
      'data.seq_len': 128, 'data.batch_size': 16, 'train.num_steps': 600,
      'train.warmup_steps': 50, 'train.learning_rate': 2e-3, 'train.log_every': 50,
      'train.eval_every': 200, 'train.checkpoint_every': 200}), path)
  return path


def sft_run(workdir: str, base_path: str) -> str:
  """The base fine-tuned on the docstring task for --sft_steps steps (or the base itself)."""
  if FLAGS.sft_steps == 0:
    return base_path
  path = os.path.join(workdir, 'sft')
  overrides = {'data.seq_len': 128, 'data.batch_size': 16, 'train.num_steps': FLAGS.sft_steps,
               'train.warmup_steps': min(10, FLAGS.sft_steps - 1),
               'train.eval_every': FLAGS.sft_steps, 'train.checkpoint_every': FLAGS.sft_steps,
               'finetune.task': 'docstring', 'finetune.num_examples': 2000,
               'finetune.eval_examples': 200}
  # Its command line, not its module: gptjax.finetune defines flags this script defines too.
  subprocess.run([sys.executable, '-m', 'gptjax.finetune', '--config=experiments/configs/'
                  'finetune.py', f'--init_from={base_path}', f'--workdir={path}',
                  *(f'--config.{key}={value}' for key, value in overrides.items())],
                 check=True, cwd=ROOT)
  return path


def _stage(stage: str, overrides: dict):
  return _set(preferences.get_config(stage), overrides)


def _ppo_against_reward_model(workdir: str, policy: str, pairs: str, *, trunk: str, max_pairs: int,
                              tag: str, label: str) -> dict:
  """A reward model on `trunk` (`max_pairs` training pairs, 0: all) in rm_<tag>, then PPO of the
  policy against it in ppo_rm_<tag>; returns the PPO run's entry for the table."""
  rm = os.path.join(workdir, f'rm_{tag}')
  reward_training.train_reward_model(_stage('reward', {
      'preferences.pairs_from': pairs, 'reward.max_pairs': max_pairs,
      'train.num_steps': FLAGS.rm_steps, 'train.eval_every': FLAGS.rm_steps}), trunk, rm)
  accuracy = _evals(rm)[-1]['eval_accuracy']
  ppo = os.path.join(workdir, f'ppo_rm_{tag}')
  ppo_training.train_ppo(_stage('ppo', {
      'preferences.pairs_from': pairs, 'ppo.reward_from': rm, 'ppo.kl_beta': FLAGS.ppo_kl_beta,
      'train.num_steps': FLAGS.ppo_steps, 'train.eval_every': 10}), policy, ppo)
  return {'dir': ppo, 'kind': 'ppo', 'rm_accuracy': accuracy,
          'label': f'{label} (acc {accuracy:.2f})'}


def run_all(workdir: str) -> dict[str, dict]:
  """Every stage; returns {run name: {'dir', 'kind', 'label', ...}} of the trained policies."""
  policy = sft_run(workdir, base_run(workdir))
  pairs = os.path.join(workdir, 'pairs')
  pair_sampling.make_pairs(preferences.get_config('pairs'), policy, pairs)
  runs = {}
  for n in [int(n) for n in FLAGS.reward_pairs.split(',')]:
    runs[f'ppo_rm_{n}'] = _ppo_against_reward_model(
        workdir, policy, pairs, trunk=policy, max_pairs=n, tag=str(n),
        label=f'PPO, RM on {n or "all"} pairs')
  for trunk in [t for t in FLAGS.reward_trunks.split(',') if t]:
    # A reward model of another size: the trunk of another pre-trained run (same tokenizer), on
    # every training pair; PPO still trains the same policy against it.
    name = os.path.basename(os.path.normpath(trunk))
    runs[f'ppo_rm_{name}'] = _ppo_against_reward_model(
        workdir, policy, pairs, trunk=trunk, max_pairs=0, tag=name,
        label=f'PPO, RM {name} on all pairs')
  for beta in FLAGS.betas.split(','):
    dpo = os.path.join(workdir, f'dpo_beta_{beta}')
    dpo_training.train_dpo(_stage('dpo', {
        'preferences.pairs_from': pairs, 'dpo.beta': float(beta),
        'train.num_steps': FLAGS.dpo_steps, 'train.eval_every': 25}), policy, dpo)
    runs[f'dpo_beta_{beta}'] = {'dir': dpo, 'kind': 'dpo', 'label': f'DPO, beta {beta}'}
  return runs


def _evals(workdir: str) -> list[dict]:
  rows = [r for r in run_dir.read_metrics(workdir) if 'eval_loss' in r or GOLD in r]
  return sorted(rows, key=lambda r: r['step'])


def report(runs: dict[str, dict]) -> str:
  """The table and the check against the SFT policy's gold reward (every run's step 0)."""
  sft_gold = _evals(next(iter(runs.values()))['dir'])[0][GOLD]
  lines = [f'SFT policy: gold reward {sft_gold:.4f} (KL 0)', '',
           f'{"run":<16} {"RM acc":>6} {"KL":>7} {"gold":>6} {"best gold (KL)":>16} '
           f'{"proxy":>7} {"gold > SFT":>10}']
  for name, run in runs.items():
    curve = [r for r in _evals(run['dir']) if GOLD in r]
    final, best = curve[-1], max(curve, key=lambda r: r[GOLD])
    accuracy = f'{run["rm_accuracy"]:.3f}' if 'rm_accuracy' in run else '-'
    proxy = f'{final["eval_reward"]:.3f}' if 'eval_reward' in final else '-'
    lines.append(f'{name:<16} {accuracy:>6} {final["eval_kl"]:>7.2f} {final[GOLD]:>6.3f} '
                 f'{best[GOLD]:>7.3f} ({best["eval_kl"]:>5.2f}) {proxy:>7} '
                 f'{"yes" if final[GOLD] > sft_gold else "NO":>10}')
  return '\n'.join(lines)


def plot(runs: dict[str, dict], path: str) -> None:
  figure, (gold_axis, proxy_axis) = plt.subplots(1, 2, figsize=(12, 4.6))
  colors = plt.get_cmap('tab10')
  for i, run in enumerate(runs.values()):
    curve = [r for r in _evals(run['dir']) if GOLD in r]
    style = '-' if run['kind'] == 'ppo' else '--'
    axes = [(gold_axis, GOLD)] + ([(proxy_axis, 'eval_reward')] if run['kind'] == 'ppo' else [])
    for axis, key in axes:  # each evaluation in step order; the last one large
      kl, value = [r['eval_kl'] for r in curve], [r[key] for r in curve]
      axis.plot(kl, value, style, marker='o', markersize=3, linewidth=1, alpha=0.7,
                color=colors(i), label=run['label'])
      axis.plot(kl[-1:], value[-1:], marker='o', markersize=8, color=colors(i))
  gold_axis.set_ylabel('gold reward (count_e_20) of held-out samples')
  proxy_axis.set_ylabel("reward model's score (PPO's proxy reward)")
  for axis in (gold_axis, proxy_axis):
    axis.set_xlabel('KL(policy || SFT policy), nats per response')
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
  figure.suptitle('Learning from preferences: PPO (solid) and DPO (dashed) from the SFT policy')
  figure.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  figure.savefig(path, dpi=120)
  plt.close(figure)


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'The study directory.', required=True)
  flags.DEFINE_string('base_run', '', 'A pre-trained run to start from; empty pre-trains one.')
  flags.DEFINE_integer('sft_steps', 40, 'Fine-tuning steps on the docstring task; 0 uses the '
                       'base as the policy.')
  flags.DEFINE_string('reward_pairs', '150,600,0', 'Training pairs of each reward model (0: all).')
  flags.DEFINE_string('reward_trunks', '', 'Pre-trained runs of other sizes (byte tokens) whose '
                      'trunks start further reward models, e.g. '
                      'runs/clm_vs_mlm_lr/clm_d32_lr0.008,'
                      'runs/clm_vs_mlm_lr/clm_d128_lr0.002.')
  flags.DEFINE_string('betas', '0.1,0.3,1', "DPO's betas.")
  flags.DEFINE_integer('rm_steps', 200, 'Reward-model training steps.')
  flags.DEFINE_integer('ppo_steps', 80, 'PPO rollout batches.')
  flags.DEFINE_float('ppo_kl_beta', 0.02, "PPO's KL weight.")
  flags.DEFINE_integer('dpo_steps', 150, 'DPO steps.')
  flags.DEFINE_string('out', None, 'The figure; default <workdir>/plots/preference_study.png.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  runs = run_all(FLAGS.workdir)
  print(report(runs))
  out = FLAGS.out or os.path.join(FLAGS.workdir, 'plots', 'preference_study.png')
  plot(runs, out)
  print(f'Figure: {out}')


if __name__ == '__main__':
  define_flags()
  cli.run(main, 'experiments.preference_study')
