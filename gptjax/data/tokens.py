"""Token streams: the tokenised cache of a text source, or pre-tokenised shards read in place.

Each text split (`gptjax.data.corpus`) is tokenised once into `workdir/data/<fingerprint>/{train,
validation}.bin` (the nanoGPT layout, read back through np.memmap), every document followed by the
tokenizer's `eos_id`, with the splits' stats in `meta.json` beside them. The fingerprint covers
every setting that changes the token stream, so a resumed run reuses the cache and a changed config
never reads a stale one. `meta.json` also records each file's token count and checksum, verified
whenever the cache is opened: a truncated or altered cache (or an unreadable `meta.json`) is
rebuilt with a warning naming it, never read. Hashing costs a fraction of a second per hundred
megabytes, far less than the tokenising it protects.

Token shards (`data.source='tokens'`) are files of `data.token_dtype` ids (`ndarray.tofile`),
memory-mapped as one stream by `TokenStream` and never copied; the last `data.val_fraction` of the
stream is validation unless `data.val_paths` names the validation shards. Their cache directory
holds only `meta.json`: the largest id (checked against `model.vocab_size`) and the validation
unigram entropy, each a full scan that is made once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from typing import Any, Iterator, Sequence

import ml_collections
import numpy as np
from absl import logging

from gptjax.data import corpus
from gptjax.data.tokenizer import Tokenizer
from gptjax.runs import run_dir

TOKEN_DTYPES = ('uint16', 'uint32')
_CACHE_VERSION = 1  # bump when the cached token layout changes
_SPLITS = ('train', 'validation')
ENCODE_BYTES = 1 << 23  # text per encode_batch call: parallel inside it, and bounded memory
_META_FILE = 'meta.json'
_TEXT_KEYS = ('dtype', 'train', 'validation', 'val_unigram_entropy')  # what a cache's meta holds
_SHARD_KEYS = ('train', 'validation', 'max_id', 'max_id_file', 'max_id_offset',
               'val_unigram_entropy')


class TokenStream:
  """Token files read as one concatenated stream, restricted to [start, stop); memory-mapped.

  Picklable (the maps are reopened lazily), so grain worker processes can read it too.
  """

  def __init__(self, paths: Sequence[str], dtype: str, start: int = 0, stop: int | None = None):
    self.paths = tuple(paths)
    self.dtype = np.dtype(dtype)
    lengths = []
    for path in self.paths:
      nbytes = os.path.getsize(path)
      if nbytes % self.dtype.itemsize:
        raise ValueError(f'{path} has {nbytes} bytes, not a multiple of {self.dtype.itemsize} '
                         f'({self.dtype.name}); is data.token_dtype right?')
      lengths.append(nbytes // self.dtype.itemsize)
    self._offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # [files + 1]
    self.start = start
    self.stop = int(self._offsets[-1]) if stop is None else stop
    self._maps: dict[int, np.memmap] = {}

  def __len__(self) -> int:
    return self.stop - self.start

  def __getstate__(self):
    return {**self.__dict__, '_maps': {}}

  def slice(self, start: int, stop: int) -> TokenStream:
    """The sub-stream [start, stop) of this one (positions relative to it)."""
    view = object.__new__(TokenStream)
    view.__dict__.update(self.__getstate__())
    view.start, view.stop = self.start + start, self.start + min(stop, len(self))
    return view

  def locate(self, position: int) -> tuple[str, int]:
    """(file, token offset in that file) of stream `position`."""
    absolute = self.start + position
    shard = int(np.searchsorted(self._offsets, absolute, side='right')) - 1
    return self.paths[shard], absolute - int(self._offsets[shard])

  def read(self, start: int, stop: int) -> np.ndarray:
    """Tokens [start, stop) of this stream, as a new array of the files' dtype."""
    a, b = self.start + start, self.start + min(stop, len(self))
    pieces = []
    while a < b:
      shard = int(np.searchsorted(self._offsets, a, side='right')) - 1
      end = min(b, int(self._offsets[shard + 1]))
      if shard not in self._maps:
        self._maps[shard] = np.memmap(self.paths[shard], dtype=self.dtype, mode='r')
      base = int(self._offsets[shard])
      pieces.append(self._maps[shard][a - base:end - base])
      a = end
    return np.concatenate(pieces) if pieces else np.zeros(0, self.dtype)

  def chunks(self, size: int = 1 << 24) -> Iterator[tuple[int, np.ndarray]]:
    """(position, tokens) pieces covering the stream, for scans that must not load it whole."""
    for position in range(0, len(self), size):
      yield position, self.read(position, position + size)


def token_splits(d: ml_collections.ConfigDict) -> tuple[TokenStream, TokenStream]:
  """(train, validation) streams of `data.source='tokens'`."""
  corpus.check_config(d)
  if d.token_dtype not in TOKEN_DTYPES:
    raise ValueError(f'data.token_dtype={d.token_dtype!r}; choose one of {TOKEN_DTYPES}.')
  itemsize = np.dtype(d.token_dtype).itemsize
  cap = d.max_corpus_bytes // itemsize if d.max_corpus_bytes > 0 else None
  files = corpus.glob_files(d.paths, 'paths')
  if d.val_paths:
    val_files = corpus.glob_files(d.val_paths, 'val_paths')
    val_set = {f.path for f in val_files}
    train = TokenStream([f.path for f in files if f.path not in val_set], d.token_dtype)
    val = TokenStream([f.path for f in val_files], d.token_dtype)
    if cap is not None:
      val_cap = max(1, round(cap * d.val_fraction))
      train, val = train.slice(0, max(1, cap - val_cap)), val.slice(0, val_cap)
  else:
    stream = TokenStream([f.path for f in files], d.token_dtype)
    if cap is not None:
      stream = stream.slice(0, cap)
    n_val = max(1, round(len(stream) * d.val_fraction))
    cut = len(stream) - n_val
    train, val = stream.slice(0, cut), stream.slice(cut, len(stream))
  for name, stream in (('train', train), ('validation', val)):
    if len(stream) <= 0:
      raise ValueError(f'The {name} split of token shards {d.paths!r} is empty; add tokens or '
                       'change data.val_fraction / data.val_paths.')
  return train, val


def token_streams(config: ml_collections.ConfigDict, tokenizer: Tokenizer, workdir: str
                  ) -> tuple[TokenStream, TokenStream, dict]:
  """(train, validation) token streams and their stats, tokenising on the first call only."""
  d = config.data
  if d.source == 'tokens':
    train, val = token_splits(d)
    # Shards can be rewritten in place, so their sizes and the ranges used are part of the key.
    cache = os.path.join(workdir, run_dir.DATA_DIR, fingerprint(d, tokenizer, [
        (s.paths, [os.path.getsize(p) for p in s.paths], s.start, s.stop) for s in (train, val)]))
    meta_path = os.path.join(cache, _META_FILE)
    meta = _read_meta(meta_path)
    problem = _meta_problem(meta, _SHARD_KEYS) if meta is not None else ''
    if problem:
      logging.warning('The token cache %s fails its check (%s): rebuilding it.', cache, problem)
    if meta is None or problem:  # scan once for the largest id and the unigram entropy
      meta = {'source': 'tokens', 'train': {'files': len(train.paths)},
              'validation': {'files': len(val.paths)}, **_max_token(train, val),
              'val_unigram_entropy': unigram_entropy_nats(val)}
      run_dir.write_atomic(meta_path, json.dumps(meta, indent=1))
  else:
    cache = os.path.join(workdir, run_dir.DATA_DIR,
                         fingerprint(d, tokenizer, corpus.source_identity(d)))
    meta_path = os.path.join(cache, _META_FILE)
    bins = [os.path.join(cache, f'{name}.bin') for name in _SPLITS]
    dtype = 'uint16' if tokenizer.vocab_size <= 1 << 16 else 'uint32'
    meta = _read_meta(meta_path) if all(map(os.path.exists, bins)) else None
    damage = _cache_damage(meta, bins, dtype) if meta is not None else ''
    if damage:
      logging.warning('The token cache %s fails its check (%s): rebuilding it.', cache, damage)
    if meta is None or damage:
      meta = {'source': d.source, 'tokenizer': tokenizer.name, 'dtype': dtype}
      for split, path in zip(corpus.text_splits(d), bins):
        meta[split.name] = _tokenize(split, tokenizer, d.decode_errors, path, dtype)
      meta['val_unigram_entropy'] = unigram_entropy_nats(TokenStream([bins[1]], dtype))
      run_dir.write_atomic(meta_path, json.dumps(meta, indent=1))
    train, val = (TokenStream([path], dtype) for path in bins)

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


def _read_meta(path: str) -> dict[str, Any] | None:
  """The cache's meta.json, or None if it is missing or unreadable (then the cache is rebuilt)."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, 'rb') as f:
      meta = json.loads(f.read().decode())
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    logging.warning('%s is unreadable (%s): rebuilding the token cache it describes.', path, error)
    return None
  return meta if isinstance(meta, dict) else None


def _file_checksum(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, _new_hash).hexdigest()


def _new_hash():
  return hashlib.blake2b(digest_size=16)


def _meta_problem(meta: dict[str, Any], keys: Sequence[str]) -> str:
  """What a meta.json that parses lacks or holds wrongly ('' if nothing): a hand-edited or foreign
  file is a reason to rebuild, like a damaged one, not a traceback later."""
  absent = [key for key in keys if key not in meta]
  if absent:
    return f'{_META_FILE} lacks {absent}'
  entropy = meta['val_unigram_entropy']
  if (isinstance(entropy, bool) or not isinstance(entropy, (int, float))
      or not math.isfinite(entropy)):
    return f'{_META_FILE} has val_unigram_entropy={entropy!r}, not a finite number'
  return ''


def _cache_damage(meta: dict[str, Any], bins: Sequence[str], dtype: str) -> str:
  """Why the cached token files do not match their meta.json, written as `dtype` ('' if they
  do)."""
  problem = _meta_problem(meta, _TEXT_KEYS)
  if problem:
    return problem
  if meta['dtype'] != dtype:
    return f'{_META_FILE} names dtype {meta["dtype"]!r}; this tokenizer\'s cache is {dtype!r}'
  itemsize = np.dtype(dtype).itemsize
  for name, path in zip(_SPLITS, bins):
    info = meta.get(name)
    if not isinstance(info, dict) or 'tokens' not in info or 'checksum' not in info:
      return f'{_META_FILE} has no token count and checksum for {name}'
    if os.path.getsize(path) != info['tokens'] * itemsize:
      return (f'{path} has {os.path.getsize(path)} bytes, {info["tokens"]} tokens of '
              f'{itemsize} bytes were written')
    if _file_checksum(path) != info['checksum']:
      return f'{path} does not match the checksum written with it'
  return ''


def unigram_entropy_nats(tokens: np.ndarray | TokenStream) -> float:
  """-sum_v p(v) log p(v) of the tokens' unigram distribution: the loss a model must beat."""
  counts = np.zeros(0, np.int64)  # [largest id seen + 1]
  pieces = tokens.chunks() if isinstance(tokens, TokenStream) else [(0, np.asarray(tokens))]
  for _, piece in pieces:
    piece_counts = np.bincount(piece.reshape(-1).astype(np.int64))
    if len(piece_counts) > len(counts):
      counts = np.pad(counts, (0, len(piece_counts) - len(counts)))
    counts[:len(piece_counts)] += piece_counts
  if not counts.sum():
    raise ValueError('unigram_entropy_nats() of an empty token stream.')
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def fingerprint(d: ml_collections.ConfigDict, tokenizer: Tokenizer, extra=None) -> str:
  """A short key of everything that decides the token streams: the cache directory's name."""
  fields = ('source', 'paths', 'val_paths', 'val_fraction', 'decode_errors', 'max_corpus_bytes',
            'token_dtype')
  key = {name: d[name] for name in fields}
  key.update(version=_CACHE_VERSION, extra=extra,
             tokenizer=hashlib.sha256(tokenizer.to_json().encode()).hexdigest())
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def text_batches(texts: Iterator[str], limit: int) -> Iterator[tuple[list[str], int]]:
  """Consecutive documents, cut after each `limit` bytes of UTF-8 text; with their bytes."""
  batch, size = [], 0
  for text in texts:
    batch.append(text)
    size += len(text.encode('utf-8'))
    if size >= limit:
      yield batch, size
      batch, size = [], 0
  if batch:
    yield batch, size


def _tokenize(split: corpus.TextSplit, tokenizer: Tokenizer, decode_errors: str, path: str,
              dtype: str) -> dict:
  """Writes the split's documents, each followed by eos, to `path`; returns its stats.

  The tokens are streamed to a temporary file that is renamed over `path` once complete, like
  `run_dir.write_atomic` does, but without holding a whole split's tokens in memory.
  """
  stats = corpus.ReadStats()
  num_tokens, checksum = 0, _new_hash()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path) + '.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      for batch, _ in text_batches(split.texts(decode_errors, stats), ENCODE_BYTES):
        ids = tokenizer.encode_documents(batch, dtype).tobytes()
        f.write(ids)
        checksum.update(ids)
        num_tokens += len(ids) // np.dtype(dtype).itemsize
    if not stats.bytes:
      raise ValueError(f'The {split.name} split is empty: {split.num_documents} documents, '
                       f'{len(stats.skipped)} skipped as undecodable {stats.skipped[:3]}, the rest '
                       "empty; add non-empty files or set data.decode_errors='replace'.")
    os.chmod(tmp, 0o644)  # mkstemp's 0o600 would hide the cache from other users of the workdir
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return {'files': stats.documents, 'bytes': stats.bytes, 'tokens': num_tokens,
          'checksum': checksum.hexdigest(), 'skipped': stats.skipped,
          'replaced': len(stats.replaced)}


def _max_token(*streams: TokenStream) -> dict:
  """The largest id in `streams` and where it first occurs, for the vocab_size check."""
  best = {'max_id': -1, 'max_id_file': '', 'max_id_offset': -1}
  for stream in streams:
    for position, piece in stream.chunks():
      i = int(np.argmax(piece))
      if int(piece[i]) > best['max_id']:
        file, offset = stream.locate(position + i)
        best = {'max_id': int(piece[i]), 'max_id_file': file, 'max_id_offset': offset}
  return best
