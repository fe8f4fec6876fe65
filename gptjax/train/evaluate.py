"""Evaluation and the scaling record each eval adds to a run's `metrics.jsonl`.

The record carries everything a scaling fit needs (tokens seen, training FLOPs under both
accountings, parameter counts) so a sweep's fits read only the run directories;
`gptjax.scaling.records.load_sweep` gathers them into one table.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import jax
import numpy as np

from gptjax.cost import flops
from gptjax.model.config import GPTConfig


def evaluate(params: Any, eval_fn: Callable, batches: Iterator[np.ndarray],
             to_global: Callable[[np.ndarray], jax.Array], *,
             tokens_per_byte: float = 0.0) -> dict[str, float]:
  """Mean validation NLL over the predicted tokens of `batches`, its perplexity, the top-1 accuracy
  and bits per byte. The predicted tokens are every next token, or the masked ones under MLM.

  Bits per byte (`loss / ln 2 * tokens / bytes`) compares runs with different tokenizers;
  it is reported when the split's tokens-per-byte ratio is known.
  """
  totals = np.zeros(3)  # summed NLL, predicted tokens, top-1 hits
  for batch in batches:
    totals += np.asarray(eval_fn(params, to_global(batch)))
  if totals[1] == 0:
    raise ValueError('The validation split produced no batches; lower data.batch_size or give a '
                     'larger validation set (data.val_fraction or data.val_paths).')
  loss = totals[0] / totals[1]
  result = {'eval_loss': loss, 'eval_perplexity': math.exp(min(loss, 700.0)),
            'eval_accuracy': totals[2] / totals[1], 'eval_tokens': int(totals[1])}
  if tokens_per_byte:
    result['eval_bits_per_byte'] = loss / math.log(2) * tokens_per_byte
  return result


def scaling_record(cfg: GPTConfig, seq_len: int, tokens_seen: int) -> dict[str, float]:
  """Compute spent so far and model size, in the fields the scaling fits read."""
  counts = flops.param_counts(cfg)
  return {
      'tokens_seen': tokens_seen,
      'flops_kaplan': flops.training_flops(cfg, seq_len, tokens_seen, 'kaplan'),
      'flops_full': flops.training_flops(cfg, seq_len, tokens_seen, 'full'),
      'params_total': counts.total,
      'params_non_embedding': counts.non_embedding,
  }
