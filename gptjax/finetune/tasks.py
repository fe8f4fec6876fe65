"""Prompt/response examples for supervised fine-tuning, built in code or read from the user's file.

Every task needs no download:
- 'reverse', 'sort', 'add': verifiable synthetic tasks written as Python expressions, so a model
  pre-trained on Python source meets a familiar notation ("reverse('abc') == '" -> "cba'"). Each
  has one right answer, so generation is scored by exact match.
- 'docstring': from the embedded corpus, a function's signature and docstring as the prompt and its
  body as the response; the files are split into train and validation exactly as for pre-training
  (`gptjax.data.corpus.text_splits`), so no validation function was seen in either stage.
- 'jsonl': the user's file of {"prompt": ..., "response": ...} lines (`finetune.task_path`), with
  validation from `finetune.eval_path` or, without one, a stable 5% of the lines.

Examples are plain strings here; `gptjax/finetune/sft_data.py` tokenizes them and builds the
batches.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import string
from typing import Iterator

import ml_collections
import numpy as np

from gptjax.data import corpus, split_hash
from gptjax.runs import run_dir

SYNTHETIC_TASKS = ('reverse', 'sort', 'add')
TASKS = SYNTHETIC_TASKS + ('docstring', 'jsonl')
_EVAL_SEED_OFFSET = 1_000_003  # validation draws from its own stream, disjoint from training's
_JSONL_VAL_FRACTION = 0.05


@dataclasses.dataclass(frozen=True)
class Example:
  prompt: str
  response: str


@dataclasses.dataclass(frozen=True)
class TaskSplits:
  train: list[Example]
  validation: list[Example]
  exact_match: bool  # whether a response has one right answer, so generation can be scored


def _letters(rng: np.random.Generator) -> str:
  length = int(rng.integers(3, 9))
  return ''.join(rng.choice(list(string.ascii_lowercase), size=length))


def _synthetic_example(task: str, rng: np.random.Generator) -> Example:
  if task == 'add':
    a, b = (int(x) for x in rng.integers(0, 1000, size=2))
    return Example(f'{a} + {b} == ', f'{a + b}')
  s = _letters(rng)
  if task == 'reverse':
    return Example(f"reverse('{s}') == '", f"{s[::-1]}'")
  return Example(f"sorted('{s}') == '", f"{''.join(sorted(s))}'")


def synthetic_examples(task: str, count: int, seed: int, exclude: set[str] = frozenset()
                       ) -> list[Example]:
  """`count` distinct examples of a synthetic task drawn with `seed`, none whose prompt is in
  `exclude` (the validation prompts, so training never sees them)."""
  rng = np.random.default_rng(seed)
  seen, examples = set(exclude), []
  for _ in range(50 * count):
    example = _synthetic_example(task, rng)
    if example.prompt not in seen:
      seen.add(example.prompt)
      examples.append(example)
      if len(examples) == count:
        return examples
  raise ValueError(f'The {task!r} task has fewer than {count} distinct examples; lower '
                   'finetune.num_examples or finetune.eval_examples.')


def synthetic_validation(task: str, count: int, seed: int) -> list[Example]:
  """The validation examples of a synthetic task for a run seeded with `seed`."""
  return synthetic_examples(task, count, seed + _EVAL_SEED_OFFSET)


def function_examples(source: str) -> Iterator[Example]:
  """(signature + docstring, body) of every function in `source` that has a docstring and a body
  after it; source that does not parse yields nothing."""
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return
  lines = source.splitlines(keepends=True)
  for node in ast.walk(tree):
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or len(node.body) < 2:
      continue
    first = node.body[0]
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
      continue
    start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
    prompt = ''.join(lines[start:first.end_lineno])
    response = ''.join(lines[first.end_lineno:node.end_lineno])
    if response.strip():
      yield Example(prompt, response)


def _docstring_split(split: corpus.TextSplit, decode_errors: str, limit: int) -> list[Example]:
  examples = []
  for text in split.texts(decode_errors):
    examples.extend(function_examples(text))
    if len(examples) >= limit:
      break
  return examples[:limit]


def _read_jsonl(path: str) -> list[Example]:
  examples = []
  for number, row in run_dir.read_json_lines(path, '{"prompt": "...", "response": "..."}'):
    if not (isinstance(row, dict) and isinstance(row.get('prompt'), str)
            and isinstance(row.get('response'), str)):
      raise ValueError(f'{path}:{number}: expected an object with string fields "prompt" and '
                       f'"response", got {json.dumps(row)[:80]}.')
    if not row['response']:
      raise ValueError(f'{path}:{number}: the response is empty; there is nothing to learn from '
                       'this line. Remove it or fill in the response.')
    examples.append(Example(row['prompt'], row['response']))
  if not examples:
    raise ValueError(f'{path} holds no examples; give one {{"prompt": ..., "response": ...}} object '
                     'per line.')
  return examples


def _jsonl_splits(f: ml_collections.ConfigDict) -> tuple[list[Example], list[Example]]:
  if not f.task_path:
    raise ValueError("finetune.task='jsonl' reads finetune.task_path, which is empty; point it at "
                     'a JSONL file of {"prompt": ..., "response": ...} lines.')
  examples = _read_jsonl(f.task_path)
  if f.eval_path:
    return examples, _read_jsonl(f.eval_path)
  is_val = np.array([split_hash.hash_unit(e.prompt + '\x00' + e.response) < _JSONL_VAL_FRACTION
                     for e in examples])
  if not is_val.any():  # a small file: its last example validates
    is_val[-1] = True
  if is_val.all():
    raise ValueError(f'{f.task_path} has too few examples to split off a validation set; give '
                     'more lines or a separate finetune.eval_path.')
  return ([e for e, v in zip(examples, is_val) if not v],
          [e for e, v in zip(examples, is_val) if v])


def load_task(config: ml_collections.ConfigDict) -> TaskSplits:
  """The fine-tuning task's train and validation examples for a resolved fine-tuning config."""
  f = config.finetune
  check_config(f)
  if f.task in SYNTHETIC_TASKS:
    val = synthetic_validation(f.task, f.eval_examples, config.seed)
    train = synthetic_examples(f.task, f.num_examples, config.seed, {e.prompt for e in val})
    return TaskSplits(train, val, exact_match=True)
  if f.task == 'docstring':
    train_split, val_split = corpus.text_splits(config.data)
    decode = config.data.decode_errors
    return TaskSplits(_docstring_split(train_split, decode, f.num_examples),
                      _docstring_split(val_split, decode, f.eval_examples), exact_match=False)
  train, val = _jsonl_splits(f)
  return TaskSplits(train, val, exact_match=False)


def check_config(f: ml_collections.ConfigDict) -> None:
  """Raises, naming the field, for an unknown task or counts below one."""
  if f.task not in TASKS:
    raise ValueError(f'finetune.task={f.task!r}; choose one of {TASKS}.')
  for name in ('num_examples', 'eval_examples'):
    if not isinstance(f[name], int) or f[name] < 1:
      raise ValueError(f'finetune.{name}={f[name]!r} must be a whole number >= 1.')

