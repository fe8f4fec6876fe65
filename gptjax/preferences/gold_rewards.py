"""Programmatic "gold" rewards on decoded text, and preference labels drawn from them.

RL from preferences is normally judged by people; here a program plays the person, so every stage
can be checked without one: pairs are labelled by a gold reward (`label_pair`), a reward model
learns it from the labels alone, and PPO or DPO is scored by how far it raises the gold reward
itself, not the learned one it optimises.

Each gold reward maps a string to a float in [0, 1], deterministically and in microseconds, and
never raises: an input it cannot judge scores 0. `GOLD_REWARDS` names the ones a run can choose.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable

import numpy as np

MAX_CHARS = 100_000  # longer texts score 0: compiling or scanning them is not worth the time


def python_compiles(text: str) -> float:
  """1 if the text is non-blank Python source that compiles, else 0.

  Blank text compiles too, but rewarding it would make "stop at once" an optimal policy. Any
  failure counts as not compiling, whatever its type: SyntaxError, ValueError for a NUL byte,
  RecursionError or MemoryError for pathological nesting. Warnings (an invalid escape sequence)
  are silenced so the result never depends on the warning filters in force.
  """
  if not text.strip() or len(text) > MAX_CHARS:
    return 0.0
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      compile(text, '<completion>', 'exec', dont_inherit=True)
  except Exception:  # noqa: BLE001  (any failure means "does not compile")
    return 0.0
  return 1.0


def length_closeness(text: str, target_chars: int) -> float:
  """1 at exactly target_chars characters, falling linearly to 0 at 0 and at 2 * target_chars."""
  if target_chars <= 0:
    raise ValueError(f'target_chars={target_chars} must be positive.')
  return max(0.0, 1.0 - abs(len(text) - target_chars) / target_chars)


def char_count(text: str, char: str, cap: int) -> float:
  """The number of occurrences of `char`, up to `cap`, over `cap`: more is better until the cap."""
  if len(char) != 1 or cap <= 0:
    raise ValueError(f'char_count needs one character and a positive cap, got {char!r}, {cap}.')
  return min(text.count(char, 0, MAX_CHARS), cap) / cap


def pep8_layout(text: str) -> float:
  """The share of non-blank lines that are at most 79 characters long and indented by a multiple
  of 4 spaces (no tabs); 0 for blank text."""
  lines = [line for line in text[:MAX_CHARS].splitlines() if line.strip()]
  if not lines:
    return 0.0

  def conforms(line: str) -> bool:
    indent = line[:len(line) - len(line.lstrip())]
    return len(line) <= 79 and '\t' not in indent and len(indent) % 4 == 0

  return sum(map(conforms, lines)) / len(lines)


GOLD_REWARDS: dict[str, Callable[[str], float]] = {
    'python_compiles': python_compiles,
    'length_200': functools.partial(length_closeness, target_chars=200),
    'count_e_20': functools.partial(char_count, char='e', cap=20),
    'pep8_layout': pep8_layout,
}


def get(name: str) -> Callable[[str], float]:
  if name not in GOLD_REWARDS:
    raise ValueError(f'Unknown gold reward {name!r}; choose one of {sorted(GOLD_REWARDS)}.')
  return GOLD_REWARDS[name]


def label_pair(text_a: str, text_b: str, reward_fn: Callable[[str], float],
               rng: np.random.Generator, bt_noise: float = 0.0) -> int:
  """Which text the labeller prefers: 0 for text_a, 1 for text_b.

  With bt_noise = 0 the higher gold reward wins and a tie is a fair coin. With bt_noise > 0 the
  labeller is a Bradley-Terry one: it prefers text_a with probability
  sigmoid((r_a - r_b) / bt_noise), so close pairs are often mislabelled, as people's are, and a
  reward model fitted to the labels recovers (r_a - r_b) / bt_noise.
  """
  if bt_noise < 0:
    raise ValueError(f'bt_noise={bt_noise} must be >= 0 (0 labels without noise).')
  margin = reward_fn(text_a) - reward_fn(text_b)
  if bt_noise == 0.0:
    p_a = 1.0 if margin > 0 else 0.0 if margin < 0 else 0.5
  else:
    p_a = 0.5 * (1.0 + math.tanh(0.5 * margin / bt_noise))  # sigmoid, without overflow
  return 0 if rng.random() < p_a else 1
