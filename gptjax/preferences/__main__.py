"""Learning from preferences, one sub-command per stage (docs/preferences.md):

  python -m gptjax.preferences pairs --config=experiments/configs/preferences.py:pairs \
      --init_from=runs/tiny_sft --workdir=runs/pairs
  python -m gptjax.preferences reward --config=experiments/configs/preferences.py:reward \
      --init_from=runs/tiny_sft --pairs=runs/pairs --workdir=runs/rm
  python -m gptjax.preferences dpo --config=experiments/configs/preferences.py:dpo \
      --init_from=runs/tiny_sft --pairs=runs/pairs --workdir=runs/dpo
  python -m gptjax.preferences ppo --config=experiments/configs/preferences.py:ppo \
      --init_from=runs/tiny_sft --pairs=runs/pairs --reward_from=runs/rm --workdir=runs/ppo

`pairs` samples the policy and labels its responses by the gold reward
(`gptjax/preferences/pair_sampling.py`); `reward` fits a reward model to the pairs
(`gptjax/preferences/reward_training.py`); `dpo` trains the policy on them directly
(`gptjax/preferences/dpo_training.py`); `ppo` trains it against the reward model
(`gptjax/preferences/ppo_training.py`). Each stage is a run directory: rerunning a command resumes
it (or, for `pairs`, reuses its pairs), and every input error ends in one line before anything is
written.
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import app, flags
from ml_collections import config_flags

from gptjax.parallel import distributed
from gptjax.preferences import dpo_training, pair_sampling, ppo_training, reward_training
from gptjax.runs import cli

STAGES = {'pairs': pair_sampling.make_pairs, 'reward': reward_training.train_reward_model,
          'dpo': dpo_training.train_dpo, 'ppo': ppo_training.train_ppo}

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'The stage\'s get_config() file, e.g. experiments/configs/preferences.py:dpo.',
    lock_config=True)
_INIT_FROM = flags.DEFINE_string('init_from', None, 'The policy run to start from (an SFT or '
                                 'pre-trained run); overrides preferences.init_from.')
_PAIRS = flags.DEFINE_string('pairs', None, 'reward, dpo, ppo: the pairs stage\'s workdir or a '
                             'pairs JSONL file; overrides preferences.pairs_from.')
_REWARD_FROM = flags.DEFINE_string('reward_from', None, 'ppo: the reward stage\'s workdir; '
                                   'overrides ppo.reward_from.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'The stage\'s run directory.')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Continue a workdir made with another config, with this one.')


def main(argv: Sequence[str]) -> None:
  if argv[1:] not in ([stage] for stage in STAGES):
    raise app.UsageError(f'Name one stage, {" | ".join(STAGES)}; got {argv[1:]}.')
  stage = argv[1]
  config = _CONFIG.value
  if not (config and _WORKDIR.value):
    raise ValueError(f'Pass --config (e.g. experiments/configs/preferences.py:{stage}), '
                     '--init_from and --workdir.')
  if stage not in config:
    raise ValueError(f'The config has no {stage} section; pass '
                     f'--config=experiments/configs/preferences.py:{stage}.')
  for flag, section, field in ((_PAIRS, 'preferences', 'pairs_from'),
                               (_REWARD_FROM, 'ppo', 'reward_from')):
    if flag.value is None:
      continue
    if section not in config or field not in config[section]:
      raise app.UsageError(f'--{flag.name} does not apply to the {stage} stage.')
    config[section][field] = os.path.expanduser(flag.value)
  distributed.configure_cpu_devices(config.mesh.cpu_devices)
  distributed.initialize(config.distributed)
  init_from = os.path.expanduser(_INIT_FROM.value or config.preferences.init_from)
  workdir = os.path.expanduser(_WORKDIR.value)
  result = STAGES[stage](config, init_from, workdir,
                         allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  if stage == 'pairs':
    pairs, sampled = result
    print(f'{"Sampled" if sampled else "Reused"} {len(pairs)} pairs in {workdir}.')
  elif result:
    summary = {k: round(float(v), 4) for k, v in result.items()
               if k.startswith('eval_') and k != 'eval_time'}
    print(f'Trained {workdir} ({stage}): {summary}')


if __name__ == '__main__':
  cli.run(main, 'gptjax.preferences')
