"""Preference pairs: their file, their held-out split, and labelling a policy's samples into them.

A pairs file is JSONL, one comparison a line:
  {"prompt": ..., "chosen": ..., "rejected": ..., "gold_chosen": 0.4, "gold_rejected": 0.1,
   "chosen_truncated": false, "rejected_truncated": true}
The gold values (the labeller's rewards) are optional: a file labelled by people has none. A
response is complete unless marked truncated: a complete response ends with EOS wherever it is
scored (the policy chose to stop there, as a fine-tuning response ends), a sampled one that ran
out of tokens does not.

The pairs of a prompt are held out (for evaluation) or trained on all together, decided by a
stable hash of the prompt and `preferences.eval_fraction`, so every stage that reads the file
(the reward model, DPO, PPO's prompts) holds out the same prompts.

`label_samples` turns K sampled responses per prompt into all K(K-1)/2 comparisons among them
(as InstructGPT's labellers ranked K at once), labelled by `gold_rewards.label_pair`; a pair whose
gold rewards tie is dropped by default, since without noise its label would be a coin flip.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable, Sequence

import numpy as np

from gptjax.data import split_hash
from gptjax.preferences import gold_rewards
from gptjax.runs import run_dir

PAIRS_FILE = 'pairs.jsonl'
_TEXT_FIELDS = ('prompt', 'chosen', 'rejected')


@dataclasses.dataclass(frozen=True)
class Pair:
  prompt: str
  chosen: str
  rejected: str
  gold_chosen: float | None = None
  gold_rejected: float | None = None
  chosen_truncated: bool = False
  rejected_truncated: bool = False


def pairs_path(pairs_from: str) -> str:
  """The pairs file of `pairs_from`: a pairs workdir (its pairs.jsonl) or a JSONL file itself."""
  if not pairs_from:
    raise ValueError('No preference pairs given: pass --pairs=DIR (the --workdir of `python -m '
                     'gptjax.preferences pairs`) or the path of a pairs JSONL file.')
  return os.path.join(pairs_from, PAIRS_FILE) if os.path.isdir(pairs_from) else pairs_from


def _pair_from_json(row: object, where: str) -> Pair:
  if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in _TEXT_FIELDS):
    raise ValueError(f'{where}: expected an object with string fields "prompt", "chosen" and '
                     f'"rejected", got {json.dumps(row)[:80]}.')
  for key in ('gold_chosen', 'gold_rejected'):
    value = row.get(key)
    if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                  and math.isfinite(value)):
      raise ValueError(f'{where}: "{key}" must be a finite number or absent, got {value!r}.')
  for key in ('chosen_truncated', 'rejected_truncated'):
    if not isinstance(row.get(key, False), bool):
      raise ValueError(f'{where}: "{key}" must be true or false, got {row[key]!r}.')
  return Pair(**{field.name: row.get(field.name, field.default)
                 for field in dataclasses.fields(Pair)})


def read_pairs(path: str) -> list[Pair]:
  """Every pair of a pairs file; a ValueError names the first line that is not one."""
  if not os.path.isfile(path):
    raise ValueError(f'{path}: no such pairs file; make one with `python -m gptjax.preferences '
                     'pairs` or point --pairs at a JSONL file of {"prompt", "chosen", "rejected"} '
                     'lines.')
  pairs = [_pair_from_json(row, f'{path}:{number}') for number, row in run_dir.read_json_lines(
      path, '{"prompt": "...", "chosen": "...", "rejected": "..."}')]
  if not pairs:
    raise ValueError(f'{path} holds no pairs; give one {{"prompt", "chosen", "rejected"}} object '
                     'per line.')
  return pairs


def write_pairs(path: str, pairs: Sequence[Pair]) -> None:
  lines = [json.dumps(dataclasses.asdict(pair), ensure_ascii=False) for pair in pairs]
  run_dir.write_atomic(path, ''.join(line + '\n' for line in lines))


def is_held_out(prompt: str, eval_fraction: float) -> bool:
  return split_hash.hash_unit('preference prompt\x00' + prompt) < eval_fraction


def split_pairs(pairs: Sequence[Pair], eval_fraction: float, where: str
                ) -> tuple[list[Pair], list[Pair]]:
  """(train, held-out) pairs by prompt; a ValueError if either side is empty."""
  if not 0.0 < eval_fraction < 1.0:
    raise ValueError(f'preferences.eval_fraction={eval_fraction} must be in (0, 1).')
  held_out = [is_held_out(pair.prompt, eval_fraction) for pair in pairs]
  train = [pair for pair, out in zip(pairs, held_out) if not out]
  evaluation = [pair for pair, out in zip(pairs, held_out) if out]
  if not train or not evaluation:
    prompts = len({pair.prompt for pair in pairs})
    raise ValueError(f'{where}: its {prompts} prompts leave {len(train)} pairs to train on and '
                     f'{len(evaluation)} to hold out at preferences.eval_fraction={eval_fraction}; '
                     'give pairs for more prompts or change the fraction.')
  return train, evaluation


def unique_prompts(pairs: Sequence[Pair]) -> list[str]:
  """The pairs' distinct prompts, in order of first appearance."""
  return list(dict.fromkeys(pair.prompt for pair in pairs))


def label_samples(prompt: str, samples: Sequence[tuple[str, bool]], gold: Callable[[str], float],
                  rng: np.random.Generator, *, bt_noise: float, skip_ties: bool) -> list[Pair]:
  """The labelled pairs among one prompt's sampled (response, truncated) tuples."""
  scores = [gold(text) for text, _ in samples]
  pairs = []
  for i in range(len(samples)):
    for j in range(i + 1, len(samples)):
      if skip_ties and scores[i] == scores[j]:
        continue
      first = gold_rewards.label_pair(samples[i][0], samples[j][0], gold, rng, bt_noise) == 0
      (c, r) = (i, j) if first else (j, i)
      pairs.append(Pair(prompt, samples[c][0], samples[r][0], scores[c], scores[r],
                        samples[c][1], samples[r][1]))
  return pairs


def summary(pairs: Sequence[Pair]) -> dict[str, float]:
  """Counts and the labels' agreement with the gold rewards (1 without noise and ties)."""
  golds = [(p.gold_chosen, p.gold_rejected) for p in pairs if p.gold_chosen is not None
           and p.gold_rejected is not None]
  agree = float(np.mean([c > r for c, r in golds])) if golds else float('nan')
  return {'pairs': len(pairs), 'prompts': len(unique_prompts(pairs)), 'gold_agreement': agree}
