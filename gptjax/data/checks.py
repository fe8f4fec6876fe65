"""The checks of the `data` section: sizes, the source and the tokenizer, before anything is
read."""

from __future__ import annotations

import ml_collections

from gptjax.data import corpus, tokenizer

_AT_LEAST_ONE = ('batch_size', 'seq_len')


def check_config(d: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the `data.` field and the fix; reads no data."""
  for field in _AT_LEAST_ONE:
    if not isinstance(d[field], int) or d[field] < 1:
      raise ValueError(f'data.{field}={d[field]!r} must be a whole number >= 1.')
  if d.max_corpus_bytes < 0:
    raise ValueError(f'data.max_corpus_bytes={d.max_corpus_bytes} must be >= 0 (0 reads the whole '
                     'corpus).')
  corpus.check_config(d)
  tokenizer.check_config(d)
