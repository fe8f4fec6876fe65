"""The checks of the `train` section, and the one place a run's whole config is checked.

Each package checks the fields it owns (`data.checks`, `model.config`, `parallel.hardware`, and
here `train.*`); `check_run_config` composes them when a run starts, before anything is written.
Fine-tuning and the preference stages pass the checks of the sections they add.
"""

from __future__ import annotations

from typing import Callable

import ml_collections
from jax.sharding import Mesh

from gptjax.data import checks as data_checks
from gptjax.model import config as model_config
from gptjax.parallel import hardware
from gptjax.train import optim, tracking

OBJECTIVES = ('clm', 'mlm')
_AT_LEAST_ONE = ('num_steps', 'log_every', 'eval_every', 'eval_batches', 'checkpoint_every',
                 'keep_checkpoints', 'grad_accum_steps', 'steps_per_call')


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the `train.` field and the fix: counts, the optimizer and its
  schedule, and the objective against the model's attention (a causal model cannot see the
  right-hand context MLM needs; a bidirectional one would see the token CLM asks it to predict)."""
  t = config.train
  for field in _AT_LEAST_ONE:
    if not isinstance(t[field], int) or t[field] < 1:
      raise ValueError(f'train.{field}={t[field]!r} must be a whole number >= 1.')
  optim.check_config(t)
  objective, causal = t.objective, config.model.causal
  if objective not in OBJECTIVES:
    raise ValueError(f'train.objective={objective!r}; choose one of {OBJECTIVES}.')
  if (objective == 'mlm') == bool(causal):
    wanted = 'False' if objective == 'mlm' else 'True'
    raise ValueError(f"train.objective={objective!r} needs model.causal={wanted}, not {causal}: "
                     f'set model.causal={wanted}.')


def check_one_step_per_call(config: ml_collections.ConfigDict, stage: str) -> None:
  """Refuses train.steps_per_call > 1 for a stage whose loop takes one step per call."""
  if config.train.steps_per_call != 1:
    raise ValueError(f'train.steps_per_call={config.train.steps_per_call}: {stage} takes one step '
                     'per call; set it to 1 (several steps per call are for pre-training).')


def check_run_config(config: ml_collections.ConfigDict, mesh: Mesh,
                     *stage_checks: Callable[[ml_collections.ConfigDict], None]) -> None:
  """Raises a ValueError naming the field and the fix if `config` cannot train on `mesh`.

  It needs nothing but the config and the devices, so a run calls it before it writes or reads
  anything. The model is checked with the config's own vocabulary size, which a tokenizer trained
  later may replace. `stage_checks` are the checks of the sections a stage adds (`finetune`,
  `preferences`, `ppo`), run last.
  """
  data_checks.check_config(config.data)
  check_config(config)
  model_config.check_config(config)
  hardware.check_config(config, mesh)
  tracking.check_config(config)
  for check in stage_checks:
    check(config)
