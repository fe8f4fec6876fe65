"""Built-in tasks that need no download: made by programs, or from the run's own validation text.

Generation tasks (scored by exact match and by the target's log-likelihood, with k shots):
- 'copy': `x = 'qwzrt'` then `assert x == '` -> `qwzrt'`: copy a string seen earlier in the
  context, the induction-head behaviour in Python notation;
- 'reverse', 'sort', 'add': the synthetic fine-tuning tasks (`gptjax/finetune/tasks.py`), which a
  pre-trained model can only do from demonstrations, if at all.
Multiple choice:
- 'next_line': up to 8 lines of a validation file, then the true next line among 3 lines drawn from
  elsewhere in the validation split. It needs a text source (the stdlib, text files, ArrayRecord).
Each task draws its queries and its pool of demonstrations from separate seeded streams; the pool
never holds a query's input.
"""

from __future__ import annotations

import string

import ml_collections
import numpy as np

from gptjax.data import corpus
from gptjax.evals.task_files import ChoiceExample, GenerationExample
from gptjax.finetune import tasks as finetune_tasks

GENERATION = ('copy', 'reverse', 'sort', 'add')
CHOICE = ('next_line',)
_POOL_SEED_OFFSET = 7_777  # demonstrations come from their own stream
_CONTEXT_LINES = 8
_DISTRACTORS = 3


def _copy_examples(count: int, rng: np.random.Generator,
                   exclude: frozenset[str] = frozenset()) -> list[GenerationExample]:
  examples, seen = [], set(exclude)
  while len(examples) < count:
    s = ''.join(rng.choice(list(string.ascii_lowercase), size=int(rng.integers(4, 11))))
    example = GenerationExample(f"x = '{s}'\nassert x == '", f"{s}'")
    if example.input not in seen:
      seen.add(example.input)
      examples.append(example)
  return examples


def generation_task(name: str, count: int, pool_size: int, seed: int
                    ) -> tuple[list[GenerationExample], list[GenerationExample]]:
  """(queries, demonstration pool) of a built-in generation task, disjoint by input."""
  if name == 'copy':
    queries = _copy_examples(count, np.random.default_rng(seed))
    pool = _copy_examples(pool_size, np.random.default_rng(seed + _POOL_SEED_OFFSET),
                          frozenset(q.input for q in queries))
    return queries, pool
  as_examples = lambda items: [GenerationExample(e.prompt, e.response) for e in items]
  queries = finetune_tasks.synthetic_examples(name, count, seed)
  pool = finetune_tasks.synthetic_examples(name, pool_size, seed + _POOL_SEED_OFFSET,
                                           {q.prompt for q in queries})
  return as_examples(queries), as_examples(pool)


def _candidate_lines(lines: list[str], max_chars: int) -> list[int]:
  """Indices of lines worth predicting: 8 to `max_chars` characters of something, after 3+
  lines."""
  return [i for i, line in enumerate(lines)
          if i >= 3 and 8 <= len(line.strip()) and len(line) <= max_chars]


def next_line_task(data_config: ml_collections.ConfigDict, count: int, seed: int,
                   max_chars: int = 80) -> list[ChoiceExample]:
  """`count` next-line questions from the validation split of the run's text source, each line at
  most `max_chars` characters (the caller keeps it within the model's context)."""
  if data_config.source == 'tokens':
    raise ValueError("The 'next_line' task reads text and the run trains on token shards "
                     "(data.source='tokens'); choose other tasks or give a JSONL task file.")
  _, validation = corpus.text_splits(data_config)
  files = [text.split('\n') for text in validation.texts(data_config.decode_errors)]
  places = [(f, i) for f, lines in enumerate(files) for i in _candidate_lines(lines, max_chars)]
  distinct = len({files[f][i] for f, i in places})
  if len(places) < count or distinct < _DISTRACTORS + 1:
    raise ValueError(f'The validation split holds {len(places)} usable lines ({distinct} '
                     f'distinct), too few for {count} next-line questions with {_DISTRACTORS} '
                     'distractors each; lower --examples or add validation text.')
  rng = np.random.default_rng(seed)
  chosen = rng.choice(len(places), size=count, replace=False)
  examples = []
  for index in chosen:
    f, i = places[index]
    truth = files[f][i]
    distractors: list[str] = []
    while len(distractors) < _DISTRACTORS:
      g, j = places[int(rng.integers(len(places)))]
      if files[g][j] != truth and files[g][j] not in distractors:
        distractors.append(files[g][j])
    choices = distractors + [truth]
    order = rng.permutation(len(choices))
    context = '\n'.join(files[f][max(0, i - _CONTEXT_LINES):i]) + '\n'
    examples.append(ChoiceExample(context, tuple(choices[k] for k in order),
                                  int(np.argmax(order == len(choices) - 1))))
  return examples
