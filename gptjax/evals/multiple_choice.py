"""Multiple choice by log-likelihood: each choice scored as a continuation of the context.

Two answers per example, as lm-evaluation-harness reports them: `acc` takes the choice with the
highest summed log-probability, which favours short choices (fewer tokens to pay for); `acc_norm`
divides each sum by the choice's length in characters first, a tokenizer-free normalisation. Both
come with their 95% Wilson interval over the examples, and `chance` is the mean of 1/choices.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gptjax.evals.scoring import Scorer
from gptjax.evals.task_files import ChoiceExample
from gptjax.runs import seeds


def answers(scores: Sequence[np.ndarray], examples: Sequence[ChoiceExample]
            ) -> tuple[np.ndarray, np.ndarray]:
  """(raw, length-normalised) chosen indices from each example's summed log-probabilities."""
  raw = np.array([int(np.argmax(s)) for s in scores])
  normalised = np.array([int(np.argmax(s / np.array([len(c) for c in e.choices])))
                         for s, e in zip(scores, examples)])
  return raw, normalised


def evaluate(scorer: Scorer, examples: Sequence[ChoiceExample]) -> dict[str, float]:
  tok = scorer.tokenizer
  contexts, continuations, owner = [], [], []
  for index, example in enumerate(examples):
    context = [int(i) for i in tok.encode(example.context)]
    for choice in example.choices:
      contexts.append(context)
      continuations.append([int(i) for i in tok.encode(choice)])
      owner.append(index)
  total, _, _ = scorer.continuation_scores(contexts, continuations)
  owner = np.array(owner)
  scores = [total[owner == i] for i in range(len(examples))]
  labels = np.array([e.label for e in examples])
  result = {'chance': float(np.mean([1 / len(e.choices) for e in examples]))}
  for name, chosen in zip(('acc', 'acc_norm'), answers(scores, examples)):
    hits = int(np.sum(chosen == labels))
    lo, hi = seeds.binomial_interval(hits, len(examples))
    result.update({name: hits / len(examples), f'{name}_lo': lo, f'{name}_hi': hi})
  return result
