"""Generation tasks with k shots: exact match of greedy continuations, and the target's
log-likelihood as the smooth metric beside it.

Exact match jumps from 0 only once a model gets every token of an answer right; the mean
per-token log-likelihood of the target moves with every improvement on the way (Schaeffer et al.
2023). Both come from the same prompts. Greedy decoding runs the KV-cache decoder
(`gptjax/generate/decoding.py`) jitted once per bucket of prompt lengths; a continuation is cut at
its first newline (or EOS) and compared with the target.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gptjax.evals import fewshot
from gptjax.evals.scoring import Scorer
from gptjax.evals.task_files import GenerationExample
from gptjax.runs import seeds

_BUCKET = 32


def greedy_continuations(scorer: Scorer, prompts: Sequence[Sequence[int]],
                         max_new_tokens: int) -> list[list[int]]:
  """Each prompt's greedy continuation of up to `max_new_tokens` tokens (EOS cut off). A prompt
  too long for the model loses its oldest tokens."""
  eos = int(scorer.tokenizer.eos_id)
  room = scorer.model_cfg.max_seq_len - max_new_tokens + 1
  if room < 1:
    raise ValueError(f'{max_new_tokens} new tokens leave no room for a prompt in '
                     f'model.max_seq_len={scorer.model_cfg.max_seq_len}; shorten the targets.')
  prompts = [list(p)[-room:] or [eos] for p in prompts]
  width = min(-(-max(map(len, prompts)) // _BUCKET) * _BUCKET, room)
  size, out = scorer.batch_size, []
  for start in range(0, len(prompts), size):
    chunk = prompts[start:start + size]
    chunk = chunk + [chunk[-1]] * (size - len(chunk))
    tokens_BxP = np.full((size, width), eos, np.int32)
    mask_BxP = np.zeros((size, width), bool)
    for row, prompt in enumerate(chunk):
      tokens_BxP[row, width - len(prompt):] = prompt
      mask_BxP[row, width - len(prompt):] = True
    tokens_BxN, lengths_B = scorer.greedy(tokens_BxP, mask_BxP, max_new_tokens)
    out += [[int(t) for t in tokens_BxN[row, :lengths_B[row]] if t != eos]
            for row in range(min(size, len(prompts) - start))]
  return out


def evaluate(scorer: Scorer, queries: Sequence[GenerationExample],
             pool: Sequence[GenerationExample], shots: int, seed: int) -> dict[str, float]:
  """Exact match (with its 95% Wilson interval over the queries) and the target's mean per-token
  log-likelihood (with its standard error over the queries) at `shots` demonstrations."""
  tok = scorer.tokenizer
  prompts = [[int(i) for i in tok.encode(fewshot.prompt(q, pool, shots, seed, i))]
             for i, q in enumerate(queries)]
  targets = [[int(i) for i in tok.encode(q.target)] for q in queries]
  total, count, _ = scorer.continuation_scores(prompts, targets)
  per_token = total / count
  longest = max(map(len, targets)) + 2  # room for the newline that ends an answer
  continuations = greedy_continuations(scorer, prompts, longest)
  hits = sum(tok.decode(c).split('\n')[0] == q.target for c, q in zip(continuations, queries))
  lo, hi = seeds.binomial_interval(hits, len(queries))
  return {'exact_match': hits / len(queries), 'exact_match_lo': lo, 'exact_match_hi': hi,
          'target_logprob': float(np.mean(per_token)),
          'target_logprob_se': float(np.std(per_token, ddof=1) / np.sqrt(len(per_token)))
          if len(per_token) > 1 else float('nan')}
