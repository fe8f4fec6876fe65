"""Tokenizers: exact round trips, save/reload identity, and the never-retrain rule."""

import os

import numpy as np
import pytest

from experiments.configs import base
from gptjax.data import tokenizer as tok_lib
from gptjax.runs import run_dir

TEXTS = [
    '',
    'hello world\n',
    '  leading spaces and\ttabs\r\nand CRLF',
    'naïve café, Grüße, 日本語, emoji 🙂👍🏽, Ελληνικά, עברית',
    'NUL \x00 inside, and the separator spelled out: <|endoftext|>',
    'def f(x):\n    return x ** 2  # comment\n',
]
CORPUS = ['def add(a, b):\n    return a + b\n', 'class Foo:\n    pass\n',
          'print("héllo wörld")\n', 'for i in range(10):\n    print(i)\n'] * 20


@pytest.fixture(scope='module')
def bpe():
  return tok_lib.train_bpe(iter(CORPUS), vocab_size=300)


def test_byte_round_trip_and_ids():
  tok = tok_lib.ByteTokenizer()
  assert tok.vocab_size == 256 and tok.eos_id == 0
  np.testing.assert_array_equal(tok.encode('aé'), np.array([97, 0xC3, 0xA9], np.int32))
  for text in TEXTS:
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert len(ids) == len(text.encode('utf-8'))
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text


def test_byte_decode_of_invalid_utf8_and_range():
  tok = tok_lib.ByteTokenizer()
  assert tok.decode([104, 0xFF, 105]) == 'h\ufffdi'
  with pytest.raises(ValueError, match='256|255'):
    tok.decode([300])


def test_bpe_round_trip_and_compression(bpe):
  assert 257 < bpe.vocab_size <= 300
  for text in TEXTS + CORPUS[:4]:
    ids = bpe.encode(text)
    assert ids.dtype == np.int32
    assert bpe.decode(ids) == text, text
  # Merges learned from the corpus: fewer tokens than bytes on text like it.
  assert len(bpe.encode(CORPUS[0])) < 0.6 * len(CORPUS[0].encode('utf-8'))
  batch = bpe.encode_batch(TEXTS)
  for text, ids in zip(TEXTS, batch):
    np.testing.assert_array_equal(ids, bpe.encode(text))


def test_bpe_separator_cannot_be_forged(bpe):
  ids = bpe.encode('a <|endoftext|> b')
  assert bpe.eos_id not in ids.tolist()
  assert bpe.decode([bpe.eos_id]) == tok_lib.EOS_TOKEN


def test_save_and_reload_give_identical_ids(bpe, tmp_path):
  bpe.save(str(tmp_path / 'bpe'))
  tok_lib.ByteTokenizer().save(str(tmp_path / 'byte'))
  again = tok_lib.load_tokenizer(str(tmp_path / 'bpe'))
  assert isinstance(again, tok_lib.BPETokenizer)
  assert (again.vocab_size, again.eos_id) == (bpe.vocab_size, bpe.eos_id)
  for text in TEXTS:
    np.testing.assert_array_equal(again.encode(text), bpe.encode(text))
  assert isinstance(tok_lib.load_tokenizer(str(tmp_path / 'byte')), tok_lib.ByteTokenizer)


def _bpe_config(tmp_path):
  for i, text in enumerate(CORPUS[:4]):
    (tmp_path / f'doc{i}.py').write_text(text * 5)
  config = base.get_config()
  config.data.source = 'text'
  config.data.paths = str(tmp_path / '*.py')
  config.data.tokenizer = 'bpe'
  config.data.bpe_vocab_size = 280
  return config


def test_load_or_train_trains_once_then_reloads(tmp_path):
  config = _bpe_config(tmp_path)
  workdir = str(tmp_path / 'run')
  first = tok_lib.load_or_train_tokenizer(config, workdir)
  path = os.path.join(workdir, run_dir.TOKENIZER_FILE)
  mtime = os.stat(path).st_mtime_ns
  config.data.bpe_vocab_size = 1000  # ignored now: the saved tokenizer wins
  second = tok_lib.load_or_train_tokenizer(config, workdir)
  assert os.stat(path).st_mtime_ns == mtime
  assert second.vocab_size == first.vocab_size
  np.testing.assert_array_equal(second.encode(TEXTS[3]), first.encode(TEXTS[3]))


def test_load_or_train_refuses_a_mismatched_workdir(tmp_path):
  config = _bpe_config(tmp_path)
  tok_lib.ByteTokenizer().save(str(tmp_path / 'run'))
  with pytest.raises(ValueError, match="holds a 'byte' tokenizer.*fresh workdir"):
    tok_lib.load_or_train_tokenizer(config, str(tmp_path / 'run'))


def test_bad_tokenizer_settings(tmp_path):
  config = _bpe_config(tmp_path)
  config.data.tokenizer = 'wordpiece'
  with pytest.raises(ValueError, match="data.tokenizer='wordpiece'"):
    tok_lib.load_or_train_tokenizer(config, str(tmp_path / 'a'))
  with pytest.raises(ValueError, match='bpe_vocab_size=100'):
    tok_lib.train_bpe(iter(CORPUS), vocab_size=100)
  config = base.get_config()
  config.data.update(tokenizer='bpe', bpe_vocab_size=10**9)
  with pytest.raises(ValueError, match='bpe_vocab_size=1,000,000,000 exceeds 1,048,576'):
    tok_lib.check_config(config.data)  # refused by the config check, before any training


def test_tokenizer_path_is_copied_into_the_workdir(bpe, tmp_path):
  bpe.save(str(tmp_path / 'given'))
  config = base.get_config()
  config.data.source, config.data.tokenizer = 'tokens', 'bpe'
  with pytest.raises(ValueError, match='set data.tokenizer_path'):
    tok_lib.load_or_train_tokenizer(config, str(tmp_path / 'run'))
  config.data.tokenizer_path = str(tmp_path / 'given' / run_dir.TOKENIZER_FILE)
  loaded = tok_lib.load_or_train_tokenizer(config, str(tmp_path / 'run'))
  np.testing.assert_array_equal(loaded.encode(TEXTS[3]), bpe.encode(TEXTS[3]))
  assert os.path.exists(tmp_path / 'run' / run_dir.TOKENIZER_FILE)


@pytest.mark.parametrize('content', [b'{garbled', b'\xb0\xff binary', b'{"model": 3}', b'[1, 2]'])
def test_a_damaged_tokenizer_file_is_refused_by_name(tmp_path, content):
  """A run's own tokenizer.json and a data.tokenizer_path file alike: the error names the file."""
  path = tmp_path / run_dir.TOKENIZER_FILE
  path.write_bytes(content)
  with pytest.raises(ValueError, match=rf'{path} is not a tokenizer.*restore it'):
    tok_lib.load_tokenizer(str(tmp_path))
  config = base.get_config()
  config.data.update(tokenizer='bpe', tokenizer_path=str(path))
  with pytest.raises(ValueError, match=rf'{path} is not a tokenizer.*set data.tokenizer_path'):
    tok_lib.load_or_train_tokenizer(config, str(tmp_path / 'run'))


def test_the_byte_tokenizers_document_stream_equals_the_generic_one():
  texts = ['def f():\n    return 1\n', '', 'naïve — ünïcode ✓', 'a\x00b', 'x' * 1000]
  tokenizer = tok_lib.ByteTokenizer()
  for dtype in ('uint16', 'uint32'):
    fast = tokenizer.encode_documents(texts, dtype)
    generic = tok_lib.Tokenizer.encode_documents(tokenizer, texts, dtype)
    assert fast.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(fast, generic)
