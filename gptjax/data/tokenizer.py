"""Tokenizers: raw UTF-8 bytes, or a byte-level BPE trained on the run's own training split (or
GPT-2's released one, for a run imported by `gptjax.convert`).

Both share one small interface (`Tokenizer`) and save themselves as `tokenizer.json` in the run's
workdir, so a resumed run, an eval or a sampler decodes with exactly the tokenizer the model was
trained on, and a BPE is never retrained once that file exists.

Documents are separated by `eos_id` when the data layer packs them into one stream:
  'byte': id 0 (the NUL byte). Source text essentially never contains NUL, and reusing a byte keeps
          the vocabulary at exactly 256 (the model's default vocab_size); a '\\n' separator would be
          indistinguishable from the ends of lines.
  'bpe':  a dedicated special token '<|endoftext|>'. The same characters appearing inside a document
          are encoded as ordinary text, never as the separator, so `decode(encode(s)) == s` and no
          document can forge a boundary.
"""

from __future__ import annotations

import abc
import json
import os
from typing import Iterable, Iterator, Sequence

import ml_collections
import numpy as np
import tokenizers
from absl import logging

from gptjax.data import corpus
from gptjax.runs import run_dir

EOS_TOKEN = '<|endoftext|>'
_BYTE_MARKER = 'gptjax_byte_tokenizer'
MAX_BPE_VOCAB = 2**20  # four times the largest published vocabularies (256K)


class Tokenizer(abc.ABC):
  """Text <-> int32 token ids. `decode(encode(s)) == s` for every str that is valid Unicode."""

  name: str
  vocab_size: int
  eos_id: int  # appended after every document when documents are packed into one stream

  @abc.abstractmethod
  def encode(self, text: str) -> np.ndarray:
    """Token ids of `text`, int32 [num_tokens], without any separator."""

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [self.encode(text) for text in texts]

  def encode_documents(self, texts: Sequence[str], dtype: str) -> np.ndarray:
    """The documents' ids in order, each followed by `eos_id`, as `dtype`: the layout of every
    token stream (the run's cache and prepared shards)."""
    eos = np.array([self.eos_id], dtype)
    return np.concatenate([part for doc in self.encode_batch(texts)
                           for part in (doc.astype(dtype), eos)])

  @abc.abstractmethod
  def decode(self, ids: Iterable[int] | np.ndarray) -> str:
    """Text of `ids`; bytes that are not valid UTF-8 (model samples can be) become U+FFFD."""

  @abc.abstractmethod
  def to_json(self) -> str:
    """Everything needed to rebuild this tokenizer (the content of tokenizer.json)."""

  def save(self, directory: str) -> str:
    """Writes `directory/tokenizer.json` so a reader never sees half a file; returns its path."""
    return run_dir.write_atomic(os.path.join(directory, run_dir.TOKENIZER_FILE), self.to_json())


class ByteTokenizer(Tokenizer):
  """One token per UTF-8 byte; vocab 256; nothing to train."""

  name = 'byte'
  vocab_size = 256
  eos_id = 0

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

  def encode_documents(self, texts: Sequence[str], dtype: str) -> np.ndarray:
    # EOS is byte 0, so the stream is the documents' UTF-8 joined by NUL, in one copy.
    joined = b'\x00'.join(text.encode('utf-8') for text in texts) + b'\x00'
    return np.frombuffer(joined, np.uint8).astype(dtype)

  def decode(self, ids: Iterable[int] | np.ndarray) -> str:
    ids = _as_ids(ids)
    if ids.size and (ids.min() < 0 or ids.max() > 255):
      raise ValueError(f'Byte tokenizer ids must be in [0, 255], got {ids.min()}..{ids.max()}.')
    return ids.astype(np.uint8).tobytes().decode('utf-8', errors='replace')

  def to_json(self) -> str:
    return json.dumps({_BYTE_MARKER: 1, 'vocab_size': 256, 'eos_id': 0})


class BPETokenizer(Tokenizer):
  """Byte-level BPE (GPT-2 style) backed by the `tokenizers` library."""

  name = 'bpe'

  def __init__(self, hf_tokenizer):
    self._tok = hf_tokenizer
    # Not stored in tokenizer.json, so it is set on every load: '<|endoftext|>' inside a document
    # is plain text, and only the data layer inserts the separator id.
    self._tok.encode_special_tokens = True
    eos_id = self._tok.token_to_id(EOS_TOKEN)
    if eos_id is None:
      raise ValueError(f'BPE tokenizer has no {EOS_TOKEN!r} token; it cannot separate documents. '
                       'Train one with this module or add the token to the tokenizer.')
    self.eos_id = int(eos_id)
    self.vocab_size = int(self._tok.get_vocab_size())

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    # Parallel over documents inside the Rust library; offsets are not needed, hence `_fast`.
    encodings = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, np.int32) for e in encodings]

  def decode(self, ids: Iterable[int] | np.ndarray) -> str:
    return self._tok.decode(_as_ids(ids).tolist(), skip_special_tokens=False)

  def to_json(self) -> str:
    return self._tok.to_str()


def train_bpe(texts: Iterator[str], vocab_size: int) -> BPETokenizer:
  """Trains a byte-level BPE with `vocab_size` entries (fewer if the corpus runs out of merges)."""
  _check_bpe_vocab_size(vocab_size)
  tok = _byte_level(tokenizers.Tokenizer(tokenizers.models.BPE()))
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())  # every byte, seen or not
  tok.train_from_iterator(texts, trainer=trainer)
  return BPETokenizer(tok)


def gpt2_bpe(vocab_path: str, merges_path: str) -> BPETokenizer:
  """GPT-2's own byte-level BPE, from the `vocab.json` and `merges.txt` it was released with."""
  tok = _byte_level(tokenizers.Tokenizer(tokenizers.models.BPE.from_file(vocab_path, merges_path)))
  tok.add_special_tokens([EOS_TOKEN])  # in GPT-2's vocabulary already: marks it, adds no id
  return BPETokenizer(tok)


def _byte_level(tok: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
  """GPT-2's byte-level pre-tokenizer (its regex, no prefix space) and the matching decoder.

  With no normaliser the two are exact inverses, so any text (whitespace, non-ASCII, control
  characters) round-trips unchanged.
  """
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = tokenizers.decoders.ByteLevel()
  return tok


def load_tokenizer(directory: str) -> Tokenizer:
  """Loads the tokenizer a run saved in `directory` (its workdir)."""
  path = os.path.join(directory, run_dir.TOKENIZER_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'No {run_dir.TOKENIZER_FILE} in {directory!r}; build_data() writes '
                            'one there.')
  return _read_tokenizer_file(path, 'restore it, or train the run afresh in a new workdir')


def _read_tokenizer_file(path: str, fix: str) -> Tokenizer:
  """The tokenizer a tokenizer.json holds; a damaged or foreign file is a ValueError that names
  it and `fix`, not the JSON or Rust parser's bare message."""
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
    spec = json.loads(text)
    if isinstance(spec, dict) and _BYTE_MARKER in spec:
      return ByteTokenizer()
    return BPETokenizer(tokenizers.Tokenizer.from_str(text))
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise ValueError(f'{path} is not a tokenizer file ({error}); {fix}.') from None
  except Exception as error:  # pylint: disable=broad-except  (the tokenizers library's own errors)
    reason = ' '.join(str(error).split())[:200]
    raise ValueError(f'{path} is not a tokenizer the tokenizers library reads ({reason}); '
                     f'{fix}.') from None


def check_config(d: ml_collections.ConfigDict) -> None:
  """Raises, naming the field and the fix, for a tokenizer setting that cannot work; reads no
  data."""
  if d.tokenizer not in ('byte', 'bpe'):
    raise ValueError(f"data.tokenizer={d.tokenizer!r}; choose 'byte' or 'bpe'.")
  if d.tokenizer == 'bpe' and d.get('tokenizer_path', ''):
    if not os.path.isfile(os.path.expanduser(d.tokenizer_path)):
      raise ValueError(f'data.tokenizer_path={d.tokenizer_path!r} is not a file; name a '
                       'tokenizer.json, or leave it empty to train a BPE.')
  elif d.tokenizer == 'bpe' and d.source == 'tokens':
    raise ValueError("data.source='tokens' with data.tokenizer='bpe' cannot train a BPE (there is "
                     'no text); set data.tokenizer_path to the tokenizer.json that produced the '
                     'shards.')
  elif d.tokenizer == 'bpe':
    _check_bpe_vocab_size(d.bpe_vocab_size)


def _check_bpe_vocab_size(vocab_size: int) -> None:
  """Refuses a size below the byte symbols plus EOS, and one above MAX_BPE_VOCAB, which the BPE
  trainer would try to allocate tables for (1e9 asks for tens of GB and aborts the process)."""
  if not isinstance(vocab_size, int) or vocab_size < 257:
    raise ValueError(f'data.bpe_vocab_size={vocab_size} must exceed the 256 byte symbols plus '
                     f'{EOS_TOKEN!r}; use data.tokenizer="byte" for a 256-token vocabulary.')
  if vocab_size > MAX_BPE_VOCAB:
    raise ValueError(f'data.bpe_vocab_size={vocab_size:,} exceeds {MAX_BPE_VOCAB:,}, the largest '
                     'vocabulary trained here (published tokenizers use 32K to 256K); pick a '
                     'smaller size.')


def load_or_train_tokenizer(config: ml_collections.ConfigDict, workdir: str) -> Tokenizer:
  """The run's tokenizer: reloaded from `workdir/tokenizer.json` if present, else built and saved.

  A BPE is trained on the TRAIN split of `config.data` only (validation text never shapes the
  vocabulary), or copied from `data.tokenizer_path` when that is set.
  """
  d = config.data
  check_config(d)
  path = os.path.join(workdir, run_dir.TOKENIZER_FILE)
  if os.path.exists(path):
    tokenizer = load_tokenizer(workdir)
    if tokenizer.name != d.tokenizer:
      raise ValueError(f'{path} holds a {tokenizer.name!r} tokenizer but data.tokenizer='
                       f'{d.tokenizer!r}; use a fresh workdir (the saved tokens and checkpoints '
                       'belong to the other tokenizer).')
    logging.info('Reusing the %s tokenizer in %s (vocab %d).', tokenizer.name, path,
                 tokenizer.vocab_size)
    return tokenizer

  if d.tokenizer == 'byte':
    tokenizer = ByteTokenizer()
  elif d.get('tokenizer_path', ''):
    source = os.path.expanduser(d.tokenizer_path)
    tokenizer = _read_tokenizer_file(source, 'set data.tokenizer_path to a tokenizer.json written '
                                     'by the tokenizers library')
    if not isinstance(tokenizer, BPETokenizer):
      raise ValueError(f"data.tokenizer_path={d.tokenizer_path!r} holds the byte tokenizer; set "
                       "data.tokenizer='byte' instead.")
    logging.info('Using the BPE tokenizer %s (vocab %d).', source, tokenizer.vocab_size)
  else:
    train_split = corpus.text_splits(d)[0]
    logging.info('Training a %d-token BPE on %d train documents...', d.bpe_vocab_size,
                 train_split.num_documents)
    tokenizer = train_bpe(train_split.texts(d.decode_errors), d.bpe_vocab_size)
    logging.info('Trained BPE: vocab %d.', tokenizer.vocab_size)
  tokenizer.save(workdir)
  return tokenizer


def _as_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
  ids = ids if isinstance(ids, np.ndarray) else np.asarray(list(ids), np.int64)
  return ids.reshape(-1).astype(np.int64)
