"""Tokenising a corpus once, ahead of training, into the shards the `tokens` source reads.

  python -m gptjax.data prepare --config=experiments/configs/tiny.py --out=data/stdlib_bpe

Any text source of `config.data` is read exactly as a run reads it (the same documents, split and
byte cap) and tokenised with the run's tokenizer (`load_or_train_tokenizer`: bytes, a BPE trained
on the train split, or `data.tokenizer_path`; saved as `OUT/tokenizer.json`). Each split becomes
`OUT/<split>_NNNNN.bin` shards of `data.token_dtype`-sized ids in the nanoGPT layout, every document
followed by EOS, a new shard after every `shard_mb` megabytes of text: concatenated, the shards are
the very stream a run tokenising in place would cache. BPE batches go through `tokenizers`'
`encode_batch`, which spreads each batch over every core; bytes need no model and run at the speed
the corpus is read.

A shard is written to a temporary name, synced and renamed, and only then recorded in
`OUT/progress.jsonl` (documents, text bytes, tokens, sha256). A rerun after a crash or a kill reads
the documents of the recorded shards again without tokenising them, and writes the rest: the same
bytes as a run never stopped, because shard boundaries depend on the documents alone. The
settings are fixed in `OUT/settings.json`, so a rerun with another config or tokenizer is refused
rather than mixed in. `OUT/meta.json`, written last, holds every shard's counts and checksum and
the settings to train on the shards.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import time
from typing import Any, Sequence

import ml_collections
import numpy as np
from absl import logging

from gptjax.data import corpus, tokens
from gptjax.data.tokenizer import Tokenizer, load_or_train_tokenizer
from gptjax.runs import cli, run_dir

PROGRESS_FILE = 'progress.jsonl'
SETTINGS_FILE = 'settings.json'
META_FILE = 'meta.json'


def shard_name(split: str, index: int) -> str:
  return f'{split}_{index:05d}.bin'


def _settings(config: ml_collections.ConfigDict, tokenizer: Tokenizer, shard_bytes: int) -> dict:
  d = config.data
  return {'fingerprint': tokens.fingerprint(d, tokenizer, corpus.source_identity(d)),
          'shard_bytes': shard_bytes, 'tokenizer': tokenizer.name,
          'vocab_size': tokenizer.vocab_size}


def _fix_settings(out: str, settings: dict) -> None:
  path = os.path.join(out, SETTINGS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      held = json.load(f)
    if held != settings:
      raise ValueError(f'{out} holds shards prepared with other settings ({path}); use a fresh '
                       '--out, or delete it to start over.')
    return
  run_dir.write_atomic(path, json.dumps(settings, indent=1))


def _read_progress(out: str, itemsize: int) -> list[dict]:
  """The recorded shards, up to the first whose line was cut short or whose file is missing or
  of another size; the file is rewritten to hold just those, so the rest are written again."""
  path = os.path.join(out, PROGRESS_FILE)
  entries = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          entry = json.loads(line)
        except json.JSONDecodeError:
          break
        shard = os.path.join(out, entry['file'])
        if not (os.path.exists(shard) and os.path.getsize(shard) == entry['tokens'] * itemsize):
          logging.warning('%s is missing or damaged: writing it and the shards after it again.',
                          shard)
          break
        entries.append(entry)
    run_dir.write_atomic(path, ''.join(json.dumps(e) + '\n' for e in entries))
  return entries


def _expected_bytes(split: corpus.TextSplit) -> int | None:
  """The text bytes the split will yield, where known in advance (for the ETA)."""
  if split.max_bytes:
    return split.max_bytes
  if split.files and not split.hf_parts and split.record_ids is None:
    return sum((part.stop or os.path.getsize(part.path)) - part.start for part in split.files)
  return None


class _Progress:
  """A line every few seconds: documents, megabytes and their rate, tokens, shards, ETA."""

  def __init__(self, split: str, expected: int | None, every: float = 5.0):
    self.split, self.expected, self.every = split, expected, every
    self.start = self.last = time.perf_counter()
    self.documents = self.bytes = self.tokens = self.shards = 0

  def update(self, documents: int, text_bytes: int, token_count: int, force: bool = False):
    self.documents += documents
    self.bytes += text_bytes
    self.tokens += token_count
    now = time.perf_counter()
    if force or now - self.last >= self.every:
      self.last = now
      rate = self.bytes / max(now - self.start, 1e-9)
      eta = (f', ETA {cli.format_duration((self.expected - self.bytes) / rate)}'
             if self.expected and rate else '')
      print(f'{self.split}: {self.documents:,} documents, {self.bytes / 1e6:,.1f} MB '
            f'({rate / 1e6:.1f} MB/s), {self.tokens:,} tokens, {self.shards} shards{eta}',
            flush=True)


def _write_shard(out: str, name: str, texts: Sequence[str], tokenizer: Tokenizer,
                 dtype: str) -> dict:
  """One shard of `texts`, written whole or not at all; returns its progress entry."""
  path = os.path.join(out, name)
  digest, count, text_bytes = hashlib.sha256(), 0, 0
  with open(path + '.tmp', 'wb') as f:
    for batch, size in tokens.text_batches(iter(texts), tokens.ENCODE_BYTES):
      ids = tokenizer.encode_documents(batch, dtype).tobytes()
      f.write(ids)
      digest.update(ids)
      count += len(ids) // np.dtype(dtype).itemsize
      text_bytes += size
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + '.tmp', path)
  return {'file': name, 'documents': len(texts), 'bytes': text_bytes, 'tokens': count,
          'sha256': digest.hexdigest()}


def _prepare_split(split: corpus.TextSplit, config: ml_collections.ConfigDict, out: str,
                   tokenizer: Tokenizer, dtype: str, shard_bytes: int, done: list[dict]) -> None:
  recorded = [e for e in done if e['split'] == split.name]
  skip = sum(e['documents'] for e in recorded)
  progress = _Progress(split.name, _expected_bytes(split))
  progress.shards = len(recorded)
  progress.update(skip, sum(e['bytes'] for e in recorded), sum(e['tokens'] for e in recorded))
  texts = split.texts(config.data.decode_errors)
  for _ in range(skip):  # read again, not tokenised: the finished shards hold them
    next(texts)
  for shard_texts, _ in tokens.text_batches(texts, shard_bytes):
    entry = {'split': split.name, **_write_shard(out, shard_name(split.name, progress.shards),
                                                 shard_texts, tokenizer, dtype)}
    run_dir.append_json_line(os.path.join(out, PROGRESS_FILE), entry)
    progress.shards += 1
    progress.update(entry['documents'], entry['bytes'], entry['tokens'])
  progress.update(0, 0, 0, force=True)


def prepare(config: ml_collections.ConfigDict, out: str, shard_mb: float = 128.0) -> dict[str, Any]:
  """Tokenises `config.data`'s splits into shards under `out`; returns what meta.json holds."""
  d = config.data
  corpus.check_config(d)
  corpus.check_inputs(d)
  if d.source == 'tokens':
    raise ValueError("data.source='tokens' is tokenised already; prepare reads a text source.")
  if not shard_mb > 0:
    raise ValueError(f'--shard_mb={shard_mb} must be positive.')
  shard_bytes = int(shard_mb * 1e6)
  os.makedirs(out, exist_ok=True)
  tokenizer = load_or_train_tokenizer(config, out)
  dtype = 'uint16' if tokenizer.vocab_size <= 1 << 16 else 'uint32'
  settings = _settings(config, tokenizer, shard_bytes)
  _fix_settings(out, settings)
  itemsize = np.dtype(dtype).itemsize
  done = _read_progress(out, itemsize)
  for split in corpus.text_splits(d):
    _prepare_split(split, config, out, tokenizer, dtype, shard_bytes, done)
  entries = _read_progress(out, itemsize)
  recorded = {e['file'] for e in entries}
  for split in ('train', 'validation'):  # shards a killed run wrote past what is recorded now
    for path in glob.glob(os.path.join(out, f'{split}_*.bin*')):
      name = os.path.basename(path)
      if name not in recorded and re.fullmatch(rf'{split}_\d{{5}}\.bin(\.tmp)?', name):
        logging.warning('Removing %s, which no finished shard records.', path)
        os.remove(path)
  meta = _meta(entries, settings, dtype, tokenizer, out)
  run_dir.write_atomic(os.path.join(out, META_FILE), json.dumps(meta, indent=1))
  return meta


def _meta(entries: list[dict], settings: dict, dtype: str, tokenizer: Tokenizer,
          out: str) -> dict:
  splits = {}
  for name in ('train', 'validation'):
    shards = [e for e in entries if e['split'] == name]
    splits[name] = {'shards': shards, **{k: sum(e[k] for e in shards)
                                         for k in ('documents', 'bytes', 'tokens')}}
  train_with = {'data.source': 'tokens', 'data.paths': os.path.join(out, 'train_*.bin'),
                'data.val_paths': os.path.join(out, 'validation_*.bin'),
                'data.token_dtype': dtype, 'model.vocab_size': tokenizer.vocab_size}
  if tokenizer.name == 'bpe':
    train_with.update({'data.tokenizer': 'bpe',
                       'data.tokenizer_path': os.path.join(out, run_dir.TOKENIZER_FILE)})
  return {**settings, 'dtype': dtype, 'eos_id': tokenizer.eos_id, 'splits': splits,
          'train_with': train_with}
