"""Sweeps: what a sweep file is, how its members resolve to configs, and the IsoFLOP design.

A sweep file is a Python file with `get_sweep() -> (base, members)`: `base` is an
`ml_collections.ConfigDict` every member starts from, and each `Member` is a name plus dotted
overrides such as `{'model.d_model': 96, 'train.num_steps': 400}`. Launchers (`launch/sweep.py`
on this machine, `launch/slurm.py` and `launch/tpu_vm.py` on a cluster) only need this module:
they resolve each member, check it, and start `python -m gptjax.main` with the overrides as flags,
`--config=launch/__init__.py:<sweep file>` (this module's `get_config` returns the sweep's base).

IsoFLOP design (Hoffmann et al. 2022, approach 2): for each compute budget C, several model sizes,
each trained on D = C / (FLOPs per token) tokens. The FLOPs per token come from `gptjax.cost.flops`,
the same function that writes the records' `flops_<method>` column, so every member of a budget
spends the budget in the records themselves (within one step). With method='full' (the default,
Chinchilla's accounting) C counts every FLOP the model spends, the readout over the vocabulary and
attention included, and N is the total parameter count; the runs' names carry their budget, so the
fits group them by design in either accounting. method='kaplan' designs in Kaplan's C,
(6N + 6·L·T·d_model)·D with non-embedding N, which leaves out the readout: for the CPU sweep's
byte-level models it is 1.3 to 2.3 times under what they spend, and most for the smallest.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import re
from typing import Any, Mapping, Sequence

import ml_collections

from gptjax.cost import flops
from gptjax.model import GPTConfig
from gptjax.scaling import accounting, records
from gptjax.train import optim

_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')
RESERVED_NAMES = ('fit', 'plots', 'slurm')  # the runner's own sub-directories of a sweep's workdir
CONFIG_FILE = 'launch/__init__.py'  # this module, from the repository root: see get_config
_FLAG_TYPES = (bool, int, float, str)  # what `--config.x=value` can carry


@dataclasses.dataclass(frozen=True)
class Member:
  """One run of a sweep: its directory name, and dotted overrides of the base config.

  `budget` is the compute the design aimed at (None outside an IsoFLOP design); dry runs show it
  next to the compute the rounded step count actually gives.
  """

  name: str
  overrides: Mapping[str, Any]
  budget: float | None = None


@dataclasses.dataclass(frozen=True)
class Size:
  """A model shape, the peak learning rate it trains well with, and how many seeds train it.

  Seeds beyond the first are replicas: the same size and budget, another initialisation and data
  order (`config.seed` + 1, + 2, ...). The fits average them and measure their spread, the noise
  a single run's loss carries.
  """

  d_model: int
  num_layers: int
  num_heads: int
  learning_rate: float
  seeds: int = 1

  @property
  def name(self) -> str:
    return f'd{self.d_model}l{self.num_layers}'


# ---------------------------------------------------------------- resolving and checking members


def _set(config: ml_collections.ConfigDict, key: str, value: Any, member: str) -> None:
  parts = key.split('.')
  node = config
  for depth, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, keys, n=1)
      hint = f" Did you mean '{'.'.join(parts[:depth] + close)}'?" if close else ''
      raise ValueError(f'Member {member!r} overrides {key!r}, but the base config has no '
                       f"{part!r} in {'.'.join(parts[:depth]) or 'its top level'}.{hint}")
    if depth < len(parts) - 1:
      node = node[part]
  if not isinstance(value, _FLAG_TYPES):
    raise ValueError(f'Member {member!r} sets {key!r} to {value!r} ({type(value).__name__}); '
                     'overrides travel as --config flags, so they must be bool, int, float or '
                     'str. Put structured values in the base config.')
  try:
    node[parts[-1]] = value
  except TypeError as e:  # ConfigDict keeps each field's type
    raise ValueError(f'Member {member!r} sets {key!r} to {value!r}: {e}') from e


def _apply(base: ml_collections.ConfigDict, member: Member) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(base.to_dict())  # a copy: `base` is untouched
  for key, value in member.overrides.items():
    _set(config, key, value, member.name)
  return config


def resolve(base: ml_collections.ConfigDict, member: Member) -> ml_collections.ConfigDict:
  """The member's full config, checked as far as it can be without training: a valid model whose
  position table fits the sequences, a valid learning-rate schedule. The data pipeline is checked
  by `gptjax.main` when the member starts; planning a sweep imports none of the training stack.
  """
  config = _apply(base, member)
  try:
    GPTConfig.from_run_config(config)
    optim.learning_rate_schedule(config.train)
  except ValueError as e:
    raise ValueError(f'Member {member.name!r}: {e}') from e
  return config


def check_members(base: ml_collections.ConfigDict, members: Sequence[Member]) -> None:
  """Names usable as directories and unique; every member resolves."""
  if not members:
    raise ValueError('The sweep has no members; get_sweep() must return (base, [Member, ...]).')
  seen: set[str] = set()
  for member in members:
    if not _NAME.match(member.name):
      raise ValueError(f'Member name {member.name!r} is not a plain directory name; use letters, '
                       'digits, and _ . - (not leading).')
    if member.name in RESERVED_NAMES:
      raise ValueError(f'Member name {member.name!r} is reserved for the sweep runner\'s output '
                       f'({RESERVED_NAMES}); rename the member.')
    if member.name in seen:
      raise ValueError(f'Two members are named {member.name!r}; each needs its own workdir.')
    seen.add(member.name)
    resolve(base, member)


def member_flags(member: Member) -> list[str]:
  """The member's overrides as `--config.x=y` flags; a float keeps its repr, so 1e-05 stays one."""
  return [f'--config.{key}={repr(value) if isinstance(value, float) else value}'
          for key, value in member.overrides.items()]


def get_config(sweep_path: str) -> ml_collections.ConfigDict:
  """The sweep's base config, so `--config=launch/__init__.py:<sweep file>` feeds gptjax.main;
  each member's overrides follow as `--config.x=y` flags."""
  return load_sweep_file(sweep_path)[0]


def load_sweep_file(path: str) -> tuple[ml_collections.ConfigDict, list[Member]]:
  """Imports a sweep file and returns its checked `(base, members)`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Sweep file {path!r} does not exist; pass --sweep=path/to/sweep.py.')
  module_name = '_sweep_' + re.sub(r'\W', '_', os.path.abspath(path))
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'{path} defines no get_sweep(); a sweep file returns (base config, '
                     'list of launch.Member) from get_sweep().')
  result = module.get_sweep()
  if not (isinstance(result, tuple) and len(result) == 2
          and isinstance(result[0], ml_collections.ConfigDict)):
    raise ValueError(f'{path}: get_sweep() returned {type(result).__name__}; it must return '
                     '(ml_collections.ConfigDict, list of launch.Member).')
  base, members = result[0], list(result[1])
  if 'log' in base and base.log.wandb_project and not base.log.wandb_group:
    base.log.wandb_group = os.path.splitext(os.path.basename(path))[0]  # W&B groups the members
  check_members(base, members)
  return base, members


# ---------------------------------------------------------------- sizes, tokens and compute


@dataclasses.dataclass(frozen=True)
class Plan:
  """What one resolved member will do: its size, tokens and compute under `method`."""

  d_model: int
  num_layers: int
  num_heads: int
  params: int  # N under `method`: non-embedding (kaplan) or total (full)
  params_total: int
  steps: int
  tokens: int
  flops: float
  flops_per_token: float
  learning_rate: float
  method: str


def plan(config: ml_collections.ConfigDict, method: str = 'full') -> Plan:
  if method not in accounting.ACCOUNTINGS:
    raise ValueError(f'method={method!r}; choose one of {tuple(accounting.ACCOUNTINGS)}.')
  cfg = GPTConfig.from_run_config(config)
  counts = flops.param_counts(cfg)
  tokens = config.train.num_steps * config.data.batch_size * config.data.seq_len
  per_token = flops.flops_per_token(cfg, config.data.seq_len, method)
  return Plan(d_model=cfg.d_model, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
              params=counts.non_embedding if method == 'kaplan' else counts.total,
              params_total=counts.total, steps=config.train.num_steps, tokens=tokens,
              flops=per_token * tokens, flops_per_token=per_token,
              learning_rate=config.train.learning_rate, method=method)


def schedule_overrides(num_steps: int, *, warmup_fraction: float, num_evals: int,
                       checkpoints: int, log_lines: int) -> dict[str, int]:
  """Warmup, eval, checkpoint and log intervals in proportion to the run's length.

  The eval interval is a whole number of log intervals (evals land on log lines) and is rounded
  up, so `num_evals` evals fit in the run with the last at num_steps itself (the loop always evals
  and saves at the final step; a rounded-down interval would add one just before it).
  """
  if num_evals < 1 or checkpoints < 1 or log_lines < 1:
    raise ValueError(f'num_evals={num_evals}, checkpoints={checkpoints}, log_lines={log_lines} '
                     'must all be at least 1.')
  logs_per_eval = max(1, log_lines // num_evals)
  log_every = math.ceil(num_steps / (num_evals * logs_per_eval))
  eval_every = log_every * logs_per_eval
  return {
      'train.num_steps': num_steps,
      'train.warmup_steps': max(1, round(warmup_fraction * num_steps)),
      'train.eval_every': eval_every,
      'train.checkpoint_every': eval_every * math.ceil(num_evals / checkpoints),
      'train.log_every': log_every,
  }


def isoflop_members(base: ml_collections.ConfigDict, budgets: Mapping[float, Sequence[Size]], *,
                    method: str = 'full', warmup_fraction: float = 0.05, num_evals: int = 4,
                    checkpoints: int = 2, log_lines: int = 8, min_steps: int = 50) -> list[Member]:
  """For each budget C and each of its sizes, a member trained on D = C / flops_per_token tokens
  (and one more per extra seed of the size, named `<member>_s1`, `_s2`, ...).

  Every member's cosine schedule ends at its own token budget (warmup `warmup_fraction` of its
  steps); it evaluates `num_evals` times evenly (the last at the final step), so the loss-vs-compute
  curves have points along each run, and checkpoints `checkpoints` times (resume granularity).
  A member whose D rounds to fewer than `min_steps` steps raises: its loss would measure warmup and
  schedule length, not model size.
  """
  if not budgets:
    raise ValueError('isoflop_members() got no budgets; pass {C: [Size, ...], ...}.')
  tokens_per_step = base.data.batch_size * base.data.seq_len
  members = []
  for budget, sizes in budgets.items():
    if not budget > 0:
      raise ValueError(f'Compute budget {budget} must be positive (FLOPs).')
    for size in sizes:
      name = f'c{records.budget_tag(budget)}_{size.name}'
      if size.seeds < 1:
        raise ValueError(f'Member {name!r}: seeds={size.seeds} must be at least 1.')
      shape = {'model.d_model': size.d_model, 'model.num_layers': size.num_layers,
               'model.num_heads': size.num_heads, 'train.learning_rate': size.learning_rate}
      try:
        cfg = GPTConfig.from_run_config(_apply(base, Member(name, shape)))
      except ValueError as e:
        raise ValueError(f'Member {name!r}: {e}') from e
      per_token = flops.flops_per_token(cfg, base.data.seq_len, method)
      tokens = budget / per_token
      steps = round(tokens / tokens_per_step)
      if steps < min_steps:
        raise ValueError(
            f'Member {name!r}: C={budget:.3g} buys {tokens:,.0f} tokens = {steps} steps of '
            f'{tokens_per_step} tokens, fewer than min_steps={min_steps}. Drop this size from the '
            'budget (it is far too large for it), raise the budget, or lower data.batch_size.')
      overrides = {**shape, **schedule_overrides(
          steps, warmup_fraction=warmup_fraction, num_evals=num_evals, checkpoints=checkpoints,
          log_lines=log_lines)}
      members.append(Member(name, overrides, budget=float(budget)))
      members += [Member(f'{name}_s{replica}', {**overrides, 'seed': base.seed + replica},
                         budget=float(budget)) for replica in range(1, size.seeds)]
  check_members(base, members)
  return members
