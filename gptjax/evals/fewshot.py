"""k-shot prompts: k solved examples from a separate pool in front of the query.

The demonstrations of query i are drawn without replacement from the pool with a generator seeded
by (seed, i), so a prompt is the same at every evaluation of every run: differences between
checkpoints or shot counts are the model's, not the draw's. A demonstration whose input or target
equals the query's is never drawn, so no prompt shows the answer it asks for.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gptjax.evals.task_files import GenerationExample

SEPARATOR = '\n\n'  # between demonstrations; a generation ends at its first newline


def prompt(query: GenerationExample, pool: Sequence[GenerationExample], shots: int, seed: int,
           index: int) -> str:
  """The k-shot prompt of query `index`: demonstrations, each input + target + SEPARATOR, then the
  query's input."""
  if shots == 0:
    return query.input
  allowed = [d for d in pool if d.input != query.input and d.target != query.target]
  if len(allowed) < shots:
    raise ValueError(f'{shots} shots need {shots} demonstrations besides the query; the pool '
                     f'holds {len(allowed)}. Lower --shots or give a larger demonstration pool.')
  rng = np.random.default_rng([seed, index])
  demos = [allowed[i] for i in rng.choice(len(allowed), size=shots, replace=False)]
  return ''.join(d.input + d.target + SEPARATOR for d in demos) + query.input
