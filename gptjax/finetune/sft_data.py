"""Fine-tuning batches: tokenized prompt/response examples as right-padded rows with a loss mask.

A row is int32 [2, seq_len]: the inputs (prompt, response, EOS, then padding) and the labels, the
next token wherever it is a response token or the closing EOS and `masking.IGNORE` elsewhere (prompt
targets and padding). That is the masked-batch layout the training and evaluation steps already take
(`gptjax/train/steps.py`), so fine-tuning runs the pre-training step unchanged. Padding goes on the
right: under causal attention no real token attends to a later pad, so a padded example's loss and
gradient equal the unpadded one's, with no attention mask at all.

Training rows are shuffled with the run's seed, repeated and batched by grain, so the iterator's
position is checkpointed and restored with the model as in pre-training. Validation rows come in a
fixed order; the last batch is filled with rows that predict nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Sequence

import grain
import ml_collections
import numpy as np
from absl import logging

from gptjax import data as data_lib
from gptjax.data import masking
from gptjax.data.tokenizer import Tokenizer
from gptjax.finetune import tasks

_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=8)


@dataclasses.dataclass
class SFTData:
  data: data_lib.Data  # the loop's view: train iterator, eval batches, token counts
  validation: list[tasks.Example]  # the examples whose responses generation is scored on
  exact_match: bool


def example_row(tokenizer: Tokenizer, example: tasks.Example, seq_len: int
                ) -> np.ndarray | None:
  """int32 [2, seq_len] inputs and labels of one example, or None if it does not fit."""
  # An empty prompt starts from EOS, as generation does (`gptjax.generate`).
  prompt_ids = [int(i) for i in tokenizer.encode(example.prompt)] or [tokenizer.eos_id]
  ids = prompt_ids + [int(i) for i in tokenizer.encode(example.response)] + [tokenizer.eos_id]
  if len(ids) > seq_len + 1:
    return None
  row_2xT = np.full((2, seq_len), masking.IGNORE, np.int32)
  row_2xT[0] = tokenizer.eos_id  # padding inputs: never attended to by a real token
  row_2xT[0, :len(ids) - 1] = ids[:-1]
  first_target = len(prompt_ids) - 1  # the input position whose next token is the response's
  row_2xT[1, first_target:len(ids) - 1] = ids[first_target + 1:]
  return row_2xT


def example_rows(tokenizer: Tokenizer, examples: Sequence[tasks.Example], seq_len: int,
                 split: str) -> tuple[np.ndarray, list[tasks.Example]]:
  """[N, 2, seq_len] rows of the examples that fit, and those N examples; too long ones are dropped
  with a warning."""
  rows = [example_row(tokenizer, e, seq_len) for e in examples]
  kept = [(r, e) for r, e in zip(rows, examples) if r is not None]
  if len(kept) < len(rows):
    logging.warning('Dropped %d of %d %s examples longer than data.seq_len + 1 = %d tokens.',
                    len(rows) - len(kept), len(rows), split, seq_len + 1)
  if not kept:
    raise ValueError(f'No {split} example fits in data.seq_len + 1 = {seq_len + 1} tokens (prompt, '
                     'response and EOS); raise data.seq_len or give shorter examples.')
  return np.stack([r for r, _ in kept]), [e for _, e in kept]


def _response_entropy(rows_Nx2xT: np.ndarray) -> float:
  """Unigram entropy of the predicted tokens, nats: the loss of a model that ignores the prompt
  and the response so far."""
  labels = rows_Nx2xT[:, 1][rows_Nx2xT[:, 1] != masking.IGNORE]
  p = np.bincount(labels) / len(labels)
  p = p[p > 0]
  return float(-np.sum(p * np.log(p)))


def build_sft_data(config: ml_collections.ConfigDict, tokenizer: Tokenizer, *,
                   process_index: int = 0, process_count: int = 1) -> SFTData:
  """The task's training iterator and validation batches for this process of `process_count`."""
  d = config.data
  task = tasks.load_task(config)
  train_rows, _ = example_rows(tokenizer, task.train, d.seq_len, 'train')
  val_rows, validation = example_rows(tokenizer, task.validation, d.seq_len, 'validation')
  if len(train_rows) < d.batch_size:
    raise ValueError(f'The task has {len(train_rows)} training examples, fewer than one batch of '
                     f'data.batch_size={d.batch_size}; lower the batch size or add examples.')
  local = data_lib.local_batch_size(d.batch_size, process_index, process_count)

  train_ds = grain.MapDataset.source(train_rows).shuffle(seed=config.seed).repeat(None)
  train_ds = train_ds.batch(local, drop_remainder=True)[process_index::process_count]

  num_eval = math.ceil(len(val_rows) / d.batch_size)
  filler = np.full((num_eval * d.batch_size - len(val_rows), 2, d.seq_len), masking.IGNORE,
                   np.int32)
  filler[:, 0] = tokenizer.eos_id
  val_ds = grain.MapDataset.source(np.concatenate([val_rows, filler]))
  val_ds = val_ds.batch(local, drop_remainder=True)[process_index::process_count]

  def eval_batches() -> Iterator[np.ndarray]:
    return (val_ds[i] for i in range(num_eval))

  predicted = lambda rows: int(np.sum(rows[:, 1] != masking.IGNORE))
  data = data_lib.Data(
      tokenizer=tokenizer, train_iter=iter(train_ds.to_iter_dataset(_READ_OPTIONS)),
      eval_batches=eval_batches, unigram_entropy=_response_entropy(val_rows),
      train_tokens=predicted(train_rows), val_tokens=predicted(val_rows))
  logging.info('Task %r: %d training and %d validation examples; %d response tokens to train on.',
               config.finetune.task, len(train_rows), len(val_rows), data.train_tokens)
  return SFTData(data=data, validation=validation, exact_match=task.exact_match)
