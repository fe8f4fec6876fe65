"""Evaluation tasks as examples: read from a user's JSONL file, with every defect named by line.

Two kinds of file:
- generation, one `{"input": ..., "target": ...}` per line: the model continues the input, and its
  greedy continuation up to the first newline is compared with the target (so a target holds no
  newline; few-shot demonstrations are separated by newlines);
- multiple choice, one `{"context": ..., "choices": [...], "label": i}` per line: each choice is
  scored as a continuation of the context and the most likely one is the answer.
Continuations are scored exactly as written: a choice or target that should follow the context
after a space carries the space itself (" Paris"), as in lm-evaluation-harness.
"""

from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class GenerationExample:
  input: str
  target: str


@dataclasses.dataclass(frozen=True)
class ChoiceExample:
  context: str
  choices: tuple[str, ...]
  label: int


def _rows(path: str) -> list[tuple[int, dict]]:
  try:
    with open(path, encoding='utf-8') as f:
      lines = list(enumerate(f, start=1))
  except OSError as e:
    raise ValueError(f'Cannot read the task file {path}: {e.strerror}.') from None
  rows = []
  for number, line in lines:
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}:{number}: not valid JSON ({e.msg}).') from None
    if not isinstance(row, dict):
      raise ValueError(f'{path}:{number}: expected an object, got {type(row).__name__}.')
    rows.append((number, row))
  if not rows:
    raise ValueError(f'{path} holds no examples; write one JSON object per line.')
  return rows


def _string(path: str, number: int, row: dict, key: str, allow_newline: bool = True) -> str:
  if key not in row:
    raise ValueError(f'{path}:{number}: missing the key {key!r} (has {sorted(row)}).')
  value = row[key]
  if not isinstance(value, str):
    raise ValueError(f'{path}:{number}: {key!r} must be a string, got {type(value).__name__}.')
  if not allow_newline and '\n' in value:
    raise ValueError(f'{path}:{number}: {key!r} holds a newline; a generation target ends at the '
                     'first newline, so put multi-line answers in a multiple-choice file.')
  return value


def read_generation(path: str) -> list[GenerationExample]:
  examples = []
  for number, row in _rows(path):
    target = _string(path, number, row, 'target', allow_newline=False)
    if not target:
      raise ValueError(f'{path}:{number}: "target" is empty.')
    examples.append(GenerationExample(_string(path, number, row, 'input'), target))
  return examples


def read_choices(path: str) -> list[ChoiceExample]:
  examples = []
  for number, row in _rows(path):
    context = _string(path, number, row, 'context')
    choices = row.get('choices')
    if not (isinstance(choices, list) and len(choices) >= 2
            and all(isinstance(c, str) and c for c in choices)):
      raise ValueError(f'{path}:{number}: "choices" must be a list of 2 or more non-empty '
                       'strings.')
    label = row.get('label')
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
      raise ValueError(f'{path}:{number}: "label" must be an index into the {len(choices)} '
                       f'choices (0..{len(choices) - 1}), got {label!r}.')
    examples.append(ChoiceExample(context, tuple(choices), label))
  return examples
