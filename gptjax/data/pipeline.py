"""Input pipeline (grain): token streams -> windows -> shuffled, repeated, per-process batches.

The token streams come from `gptjax.data.tokens` (a text source's tokenised cache, written on the
first call, or token shards); this module only reads them. Each stream is cut into non-overlapping
windows of seq_len + 1 tokens (inputs are window[:-1], targets window[1:]); the last partial window
is dropped. Training shuffles the windows with `config.seed` (reshuffled each epoch, repeated
forever) and groups them into global batches of `data.batch_size` rows; process p of P reads only
rows [p*l, (p+1)*l), l = batch_size / P, of each global batch, so the processes together see exactly
the one-process batch, in the same order.

Under the MLM objective (`train.objective='mlm'`, `gptjax/data/masking.py`) each window is masked
before batching by a grain random map seeded with the run's seed (the evaluation's with a fixed
one), and a batch is int32 [B, 2, seq_len] of inputs and labels instead; the windows are the same.

Checkpointing the position: `Data.train_iter` is a grain `DatasetIterator`; `get_state()` returns a
small JSON-able dict and `set_state()` resumes exactly. With orbax, save it next to the model:
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data.train_iter)))
  mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data.train_iter)))  # restores train_iter in place
grain's handler writes one `process_<i>-of-<n>.json` per process, using jax.process_index/count.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import grain
import ml_collections
import numpy as np
from absl import logging

from gptjax.data import masking, tokens
from gptjax.data.tokenizer import Tokenizer, load_or_train_tokenizer

_EVAL_SEED = 0  # fixed, so every run (whatever its seed) evaluates on the same windows
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=16)  # memmap reads are cheap
_SPLITS = ('train', 'validation')


@dataclasses.dataclass
class Data:
  tokenizer: Tokenizer
  train_iter: grain.DatasetIterator  # np.int32 [local_batch, *row_shape(config)], forever
  eval_batches: Callable[[], Iterator[np.ndarray]]  # a fresh, identical iterator on every call
  unigram_entropy: float  # of the validation tokens, nats: the loss of the best context-free model
  train_tokens: int
  val_tokens: int
  val_bytes: int = 0  # raw bytes of validation text (0 for token shards); bits/byte =
  #                     loss_nats * val_tokens / (val_bytes * ln 2)


def build_data(config: ml_collections.ConfigDict, workdir: str, *, process_index: int = 0,
               process_count: int = 1) -> Data:
  """The run's tokenizer, training iterator and evaluation batches; quick when called again.

  Call it on every process with that process's index and count. `data.worker_count > 0` moves batch
  assembly into grain worker processes (same batches, same state); they need parsed absl flags
  (absl.app.run) and a `__main__` guard in the entry script. Reads are memmap slices, so 0 (two
  reader threads in this process) is usually enough.
  """
  d = config.data
  local_batch_size(d.batch_size, process_index, process_count)
  tokenizer = load_or_train_tokenizer(config, workdir)
  train, val, meta = tokens.token_streams(config, tokenizer, workdir)
  window = d.seq_len + 1
  for name, stream in zip(_SPLITS, (train, val)):
    if len(stream) // window < d.batch_size:
      raise ValueError(
          f'The {name} split has {len(stream)} tokens = {len(stream) // window} windows of '
          f'seq_len+1={window} tokens, fewer than one batch of data.batch_size={d.batch_size}; '
          'lower data.batch_size or data.seq_len, raise data.max_corpus_bytes, or add data.')

  masker = None
  if config.train.objective == 'mlm':
    data_vocab = config.model.vocab_size if d.source == 'tokens' else tokenizer.vocab_size
    masker = masking.Masker(data_vocab, special_ids=(tokenizer.eos_id,))
  train_ds = window_batches(train, d.seq_len, d.batch_size, seed=config.seed, repeat=True,
                            process_index=process_index, process_count=process_count,
                            transform=masker)
  train_iter_ds = train_ds.to_iter_dataset(_READ_OPTIONS)
  if d.worker_count > 0:
    workers = grain.MultiprocessingOptions(num_workers=d.worker_count)
    train_iter_ds = train_iter_ds.mp_prefetch(workers)
  val_ds = window_batches(val, d.seq_len, d.batch_size, seed=_EVAL_SEED, repeat=False,
                          process_index=process_index, process_count=process_count,
                          transform=masker)
  num_eval = min(config.train.eval_batches, len(val) // window // d.batch_size)
  if num_eval < config.train.eval_batches:
    logging.warning('Validation split holds only %d batches; evaluating on those, not '
                    'train.eval_batches=%d.', num_eval, config.train.eval_batches)

  def eval_batches() -> Iterator[np.ndarray]:
    return (val_ds[i] for i in range(num_eval))

  return Data(tokenizer=tokenizer, train_iter=iter(train_iter_ds), eval_batches=eval_batches,
              unigram_entropy=meta['val_unigram_entropy'], train_tokens=len(train),
              val_tokens=len(val), val_bytes=meta['validation'].get('bytes', 0))


def row_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The shape of one batch row: a next-token window, or a masked example's inputs and labels."""
  if config.train.objective == 'mlm':
    return (2, config.data.seq_len)
  return (config.data.seq_len + 1,)


def local_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, process_count='
                     f'{process_count}).')
  if batch_size % process_count:
    raise ValueError(f'data.batch_size={batch_size} is not divisible by process_count='
                     f'{process_count}; every process must read the same number of rows.')
  return batch_size // process_count


class Windows:
  """Random access to the non-overlapping `length`-token windows of a stream, as int32."""

  def __init__(self, stream: tokens.TokenStream, length: int):
    self.stream, self.length = stream, length

  def __len__(self) -> int:
    return len(self.stream) // self.length

  def __getitem__(self, index: int) -> np.ndarray:
    if not 0 <= index < len(self):
      raise IndexError(f'window {index} of {len(self)}')
    start = index * self.length
    return self.stream.read(start, start + self.length).astype(np.int32)


def window_batches(stream: tokens.TokenStream, seq_len: int, batch_size: int, *,
                   seed: int | None, repeat: bool, process_index: int = 0,
                   process_count: int = 1, transform=None) -> grain.MapDataset:
  """This process's rows of each global batch of windows: int32 [batch_size / P, seq_len + 1],
  or what `transform(window, rng)` makes of each window (a grain random map seeded with `seed`).

  Consecutive groups of l = batch_size / P windows form local batches; global batch i is local
  batches i*P .. i*P + P-1, so process p takes every P-th local batch starting at p.
  """
  local = local_batch_size(batch_size, process_index, process_count)
  ds = grain.MapDataset.source(Windows(stream, seq_len + 1))
  if seed is not None:
    ds = ds.shuffle(seed=seed)
  if repeat:
    ds = ds.repeat(None)  # reshuffled every epoch; shuffle before repeat keeps epochs whole
  if transform is not None:  # after repeat: each epoch draws new random choices
    ds = ds.random_map(transform, seed=seed or 0)
  return ds.batch(local, drop_remainder=True)[process_index::process_count]
