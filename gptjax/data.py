"""Input pipeline: tokenise each split once, pack into windows, shuffle, repeat, batch (grain).

Each text split is tokenised once into `workdir/data/<fingerprint>/{train,validation}.bin` (the
nanoGPT layout, read back through np.memmap), every document followed by the tokenizer's `eos_id`.
The fingerprint covers every setting that changes the token stream, so a resumed run reuses the
cache and a changed config never reads a stale one. Token shards (`source='tokens'`) are
memory-mapped in place.

The stream is cut into non-overlapping windows of seq_len + 1 tokens (inputs are window[:-1],
targets window[1:]); the last partial window is dropped. Training shuffles the windows with
`config.seed` (reshuffled each epoch, repeated forever) and groups them into global batches of
`data.batch_size` rows; process p of P reads only rows [p*l, (p+1)*l), l = batch_size / P, of each
global batch, so the processes together see exactly the one-process batch, in the same order.

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
import hashlib
import json
import os
import tempfile
from typing import Callable, Iterator

from absl import logging
import grain
import ml_collections
import numpy as np

from gptjax import corpus
from gptjax.tokenizer import Tokenizer, load_or_train_tokenizer

_CACHE_VERSION = 1  # bump when the cached token layout changes
_EVAL_SEED = 0  # fixed, so every run (whatever its seed) evaluates on the same windows
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=16)  # memmap reads are cheap
_SPLITS = ('train', 'validation')


@dataclasses.dataclass
class Data:
  tokenizer: Tokenizer
  train_iter: grain.DatasetIterator  # np.int32 [local_batch, seq_len + 1], forever
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
  train, val, meta = token_streams(config, tokenizer, workdir)
  window = d.seq_len + 1
  for name, stream in zip(_SPLITS, (train, val)):
    if len(stream) // window < d.batch_size:
      raise ValueError(
          f'The {name} split has {len(stream)} tokens = {len(stream) // window} windows of '
          f'seq_len+1={window} tokens, fewer than one batch of data.batch_size={d.batch_size}; '
          'lower data.batch_size or data.seq_len, raise data.max_corpus_bytes, or add data.')

  train_ds = window_batches(train, d.seq_len, d.batch_size, seed=config.seed, repeat=True,
                            process_index=process_index, process_count=process_count)
  train_iter_ds = train_ds.to_iter_dataset(_READ_OPTIONS)
  if d.worker_count > 0:
    workers = grain.MultiprocessingOptions(num_workers=d.worker_count)
    train_iter_ds = train_iter_ds.mp_prefetch(workers)
  val_ds = window_batches(val, d.seq_len, d.batch_size, seed=_EVAL_SEED, repeat=False,
                          process_index=process_index, process_count=process_count)
  num_eval = min(config.train.eval_batches, len(val) // window // d.batch_size)
  if num_eval < config.train.eval_batches:
    logging.warning('Validation split holds only %d batches; evaluating on those, not '
                    'train.eval_batches=%d.', num_eval, config.train.eval_batches)

  def eval_batches() -> Iterator[np.ndarray]:
    return (val_ds[i] for i in range(num_eval))

  return Data(tokenizer=tokenizer, train_iter=iter(train_iter_ds), eval_batches=eval_batches,
              unigram_entropy=meta['val_unigram_entropy'], train_tokens=len(train),
              val_tokens=len(val), val_bytes=meta['validation'].get('bytes', 0))


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

  def __init__(self, stream: corpus.TokenStream, length: int):
    self.stream, self.length = stream, length

  def __len__(self) -> int:
    return len(self.stream) // self.length

  def __getitem__(self, index: int) -> np.ndarray:
    if not 0 <= index < len(self):
      raise IndexError(f'window {index} of {len(self)}')
    start = index * self.length
    return self.stream.read(start, start + self.length).astype(np.int32)


def window_batches(stream: corpus.TokenStream, seq_len: int, batch_size: int, *,
                   seed: int | None, repeat: bool, process_index: int = 0,
                   process_count: int = 1) -> grain.MapDataset:
  """This process's rows of each global batch of windows: int32 [batch_size / P, seq_len + 1].

  Consecutive groups of l = batch_size / P windows form local batches; global batch i is local
  batches i*P .. i*P + P-1, so process p takes every P-th local batch starting at p.
  """
  local = local_batch_size(batch_size, process_index, process_count)
  ds = grain.MapDataset.source(Windows(stream, seq_len + 1))
  if seed is not None:
    ds = ds.shuffle(seed=seed)
  if repeat:
    ds = ds.repeat(None)  # reshuffled every epoch; shuffle before repeat keeps epochs whole
  return ds.batch(local, drop_remainder=True)[process_index::process_count]


def unigram_entropy_nats(tokens: np.ndarray | corpus.TokenStream) -> float:
  """-sum_v p(v) log p(v) of the tokens' unigram distribution: the loss a model must beat."""
  counts = np.zeros(0, np.int64)
  pieces = tokens.chunks() if isinstance(tokens, corpus.TokenStream) else [(0, np.asarray(tokens))]
  for _, piece in pieces:
    piece_counts = np.bincount(piece.reshape(-1).astype(np.int64))
    if len(piece_counts) > len(counts):
      counts = np.pad(counts, (0, len(piece_counts) - len(counts)))
    counts[:len(piece_counts)] += piece_counts
  if not counts.sum():
    raise ValueError('unigram_entropy_nats() of an empty token stream.')
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def token_streams(config: ml_collections.ConfigDict, tokenizer: Tokenizer, workdir: str
                  ) -> tuple[corpus.TokenStream, corpus.TokenStream, dict]:
  """(train, validation) token streams and their stats, tokenising on the first call only."""
  d = config.data
  if d.source == 'tokens':
    train, val = corpus.token_splits(d)
    # Shards can be rewritten in place, so their sizes and the ranges used are part of the key.
    cache = os.path.join(workdir, 'data', _fingerprint(d, tokenizer, [
        (s.paths, [os.path.getsize(p) for p in s.paths], s.start, s.stop) for s in (train, val)]))
    meta_path = os.path.join(cache, 'meta.json')
    if not os.path.exists(meta_path):  # scan once for the largest id and the unigram entropy
      meta = {'source': 'tokens', 'train': {'files': len(train.paths)},
              'validation': {'files': len(val.paths)}, **_max_token(train, val),
              'val_unigram_entropy': unigram_entropy_nats(val)}
      _write_atomic(meta_path, json.dumps(meta, indent=1).encode())
  else:
    cache = os.path.join(workdir, 'data', _fingerprint(d, tokenizer))
    meta_path = os.path.join(cache, 'meta.json')
    bins = [os.path.join(cache, f'{name}.bin') for name in _SPLITS]
    dtype = 'uint16' if tokenizer.vocab_size <= 1 << 16 else 'uint32'
    if not (os.path.exists(meta_path) and all(map(os.path.exists, bins))):
      meta = {'source': d.source, 'tokenizer': tokenizer.name, 'dtype': dtype}
      for split, path in zip(corpus.text_splits(d), bins):
        meta[split.name] = _tokenize(split, tokenizer, d.decode_errors, path, dtype)
      meta['val_unigram_entropy'] = unigram_entropy_nats(corpus.TokenStream([bins[1]], dtype))
      _write_atomic(meta_path, json.dumps(meta, indent=1).encode())
    train, val = (corpus.TokenStream([path], dtype) for path in bins)
  with open(meta_path) as f:
    meta = json.load(f)

  if d.source == 'tokens' and meta['max_id'] >= config.model.vocab_size:
    raise ValueError(
        f"{meta['max_id_file']} holds token id {meta['max_id']} (at token offset "
        f"{meta['max_id_offset']}), but model.vocab_size={config.model.vocab_size}; set "
        f"model.vocab_size to at least {meta['max_id'] + 1}, or check that data.token_dtype="
        f'{d.token_dtype!r} matches how the shards were written.')
  for name, stream in zip(_SPLITS, (train, val)):
    info = meta[name]
    logging.info('Data %s (%s, %s tokenizer): %s files, %s bytes, %d tokens; cache %s.', name,
                 d.source, tokenizer.name, info.get('files', '?'), info.get('bytes', '?'),
                 len(stream), cache)
  return train, val, meta


def _fingerprint(d: ml_collections.ConfigDict, tokenizer: Tokenizer, extra=None) -> str:
  """A short key of everything that decides the token streams."""
  fields = ('source', 'paths', 'val_paths', 'val_fraction', 'decode_errors', 'max_corpus_bytes',
            'token_dtype')
  key = {name: d[name] for name in fields}
  key.update(version=_CACHE_VERSION, extra=extra,
             tokenizer=hashlib.sha256(tokenizer.to_json().encode()).hexdigest())
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _tokenize(split: corpus.TextSplit, tokenizer: Tokenizer, decode_errors: str, path: str,
              dtype: str) -> dict:
  """Writes the split's documents, each followed by eos, to `path`; returns its stats."""
  stats = corpus.ReadStats()
  eos = np.array([tokenizer.eos_id], dtype)
  num_tokens = 0
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path) + '.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      def flush(texts: list[str]):
        nonlocal num_tokens
        if texts:
          ids = np.concatenate([part for doc in tokenizer.encode_batch(texts)
                                for part in (doc.astype(dtype), eos)])
          f.write(ids.tobytes())
          num_tokens += len(ids)
      batch, chars = [], 0
      for text in split.texts(decode_errors, stats):
        batch.append(text)
        chars += len(text)
        if chars >= 1 << 23:  # ~8 MB of text per encode_batch: parallel, and bounded memory
          flush(batch)
          batch, chars = [], 0
      flush(batch)
    if not stats.bytes:
      raise ValueError(f'The {split.name} split is empty: {split.num_documents} documents, '
                       f'{len(stats.skipped)} skipped as undecodable {stats.skipped[:3]}, the rest '
                       "empty; add non-empty files or set data.decode_errors='replace'.")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return {'files': stats.documents, 'bytes': stats.bytes, 'tokens': num_tokens,
          'skipped': stats.skipped, 'replaced': len(stats.replaced)}


def _max_token(*streams: corpus.TokenStream) -> dict:
  best = {'max_id': -1, 'max_id_file': '', 'max_id_offset': -1}
  for stream in streams:
    for position, piece in stream.chunks():
      i = int(np.argmax(piece))
      if int(piece[i]) > best['max_id']:
        file, offset = stream.locate(position + i)
        best = {'max_id': int(piece[i]), 'max_id_file': file, 'max_id_offset': offset}
  return best


def _write_atomic(path: str, payload: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path) + '.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(payload)
    os.chmod(tmp, 0o644)  # mkstemp's 0o600 would hide the cache from other users of the workdir
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
