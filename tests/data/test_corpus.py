"""Sources and splits: determinism, disjointness, caps, decode policies and the error messages."""

import hashlib
import logging
import sysconfig

import numpy as np
import pytest

from experiments.configs import base
from gptjax.data import corpus, split_hash


def _config(source='text', **data):
  config = base.get_config()
  config.data.source = source
  for key, value in data.items():
    config.data[key] = value
  return config.data


def _write(directory, files: dict) -> None:
  for name, content in files.items():
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode('utf-8'))


def _names(split):
  return [f.name for f in split.files]


def test_hash_unit_is_sha256_based_not_python_hash():
  expected = int(hashlib.sha256(b'json/decoder.py').hexdigest()[:16], 16) / 2**64
  assert split_hash.hash_unit('json/decoder.py') == expected


def test_stdlib_split_is_deterministic_disjoint_and_excludes_site_packages():
  d = _config('stdlib')
  train, val = corpus.text_splits(d)
  train2, val2 = corpus.text_splits(d)
  assert _names(train) == _names(train2) and _names(val) == _names(val2)
  assert not set(_names(train)) & set(_names(val))
  names = _names(train) + _names(val)
  assert len(names) > 500 and 'os.py' in names and 'json/decoder.py' in names
  assert not any('site-packages' in n or 'dist-packages' in n for n in names)
  assert _names(train) == sorted(_names(train))
  assert 0.02 < len(val.files) / len(names) < 0.10  # val_fraction = 0.05
  for f in train.files + val.files:
    assert f.path.startswith(sysconfig.get_paths()['stdlib']) and f.path.endswith('.py')
  # The split is by hash of the relative name, against val_fraction.
  assert all(split_hash.hash_unit(n) < 0.05 for n in _names(val))


def test_text_glob_split_by_file_and_explicit_val_paths(tmp_path):
  _write(tmp_path, {f'sub/doc{i:02d}.txt': f'document {i}\n' * 10 for i in range(40)})
  _write(tmp_path, {'other.md': 'not matched'})
  d = _config(paths=str(tmp_path / '**' / '*.txt'), val_fraction=0.25)
  train, val = corpus.text_splits(d)
  assert len(train.files) + len(val.files) == 40 and train.files and val.files
  assert not set(_names(train)) & set(_names(val))
  assert all(n.startswith('sub/doc') for n in _names(train) + _names(val))
  assert set(_names(val)) == {f'sub/doc{i:02d}.txt' for i in range(40)
                              if split_hash.hash_unit(f'sub/doc{i:02d}.txt') < 0.25}

  d.val_paths = str(tmp_path / 'sub' / 'doc0*.txt')
  train, val = corpus.text_splits(d)
  assert _names(val) == [f'doc0{i}.txt' for i in range(10)]
  assert len(train.files) == 30 and not any(n.startswith('sub/doc0') for n in _names(train))


def test_both_splits_non_empty_even_when_hash_puts_all_in_one(tmp_path):
  _write(tmp_path, {'a.txt': 'aaa', 'b.txt': 'bbb'})
  for fraction in (1e-9, 0.999999):
    train, val = corpus.text_splits(_config(paths=str(tmp_path / '*.txt'), val_fraction=fraction))
    assert len(train.files) == 1 and len(val.files) == 1


def test_single_file_is_cut_at_a_line_boundary(tmp_path):
  text = ''.join(f'line {i} ünïcode\n' for i in range(100))
  _write(tmp_path, {'input.txt': text})
  train, val = corpus.text_splits(_config(paths=str(tmp_path / 'input.txt'), val_fraction=0.1))
  train_text, = train.texts('strict')
  val_text, = val.texts('strict')
  assert train_text + val_text == text
  assert train_text.endswith('\n') and val_text.startswith('line ')
  assert 0.05 < len(val_text) / len(text) < 0.15


def test_max_corpus_bytes_reads_first_files_and_cuts_cleanly(tmp_path):
  _write(tmp_path, {f'f{i:02d}.txt': 'é' * 500 for i in range(20)})  # 1000 bytes each
  d = _config(paths=str(tmp_path / '*.txt'), val_fraction=0.2, max_corpus_bytes=2501)
  train, val = corpus.text_splits(d)
  assert (train.max_bytes, val.max_bytes) == (2001, 500)
  stats = corpus.ReadStats()
  texts = list(train.texts('strict', stats))
  assert [len(t) for t in texts] == [500, 500]  # 2 whole files, then 1 byte: half a character
  assert stats.bytes == 2000 and stats.documents == 2
  texts = list(val.texts('strict'))
  assert texts == ['é' * 250]  # the first validation file only, cut at the cap


def test_decode_policies(tmp_path, caplog):
  _write(tmp_path, {'good.txt': 'fine text\n', 'latin1.txt': 'caf\xe9\n'.encode('latin-1'),
                    'more.txt': 'more text\n'})
  d = _config(paths=str(tmp_path / '*.txt'), val_paths=str(tmp_path / 'more.txt'))
  train, _ = corpus.text_splits(d)
  with pytest.raises(ValueError, match=r'latin1.txt is not valid UTF-8 \(byte 0xe9 at offset 3\).*'
                                       "decode_errors='replace'"):
    list(train.texts('strict'))

  caplog.set_level(logging.WARNING)
  stats = corpus.ReadStats()
  assert sorted(train.texts('skip', stats)) == ['fine text\n']
  assert stats.skipped == ['latin1.txt'] and 'Skipping latin1.txt' in caplog.text

  caplog.clear()
  stats = corpus.ReadStats()
  assert sorted(train.texts('replace', stats)) == ['caf\ufffd\n', 'fine text\n']
  assert stats.replaced == ['latin1.txt']
  warnings = [r for r in caplog.records if 'undecodable' in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].getMessage().startswith('1 train documents')


def test_bad_inputs_name_the_problem(tmp_path):
  pattern = str(tmp_path / 'nothing' / '*.txt')
  with pytest.raises(ValueError, match=r'data.paths glob .*nothing.*matched no files'):
    corpus.text_splits(_config(paths=pattern))
  with pytest.raises(ValueError, match='data.paths is empty'):
    corpus.text_splits(_config(paths=''))
  with pytest.raises(ValueError, match=r"Unknown data.source='csv'.*stdlib"):
    corpus.text_splits(_config('csv'))
  with pytest.raises(ValueError, match="data.source='tokens' holds token ids, not text"):
    corpus.text_splits(_config('tokens', paths=pattern))
  with pytest.raises(ValueError, match="decode_errors='ignore'"):
    corpus.text_splits(_config('stdlib', decode_errors='ignore'))
  with pytest.raises(ValueError, match='val_fraction=0.0'):
    corpus.text_splits(_config('stdlib', val_fraction=0.0))
  _write(tmp_path, {'tiny.txt': 'x'})
  with pytest.raises(ValueError, match='tiny.txt .* too small to cut'):
    corpus.text_splits(_config(paths=str(tmp_path / 'tiny.txt')))


def _write_arrayrecord(path, docs):
  from array_record.python.array_record_module import ArrayRecordWriter
  writer = ArrayRecordWriter(str(path), 'group_size:1')
  for doc in docs:
    writer.write(doc.encode('utf-8'))
  writer.close()


def test_arrayrecord_split_by_record(tmp_path):
  docs_a = [f'doc a{i} ✓' for i in range(60)]
  docs_b = [f'doc b{i}' for i in range(40)]
  _write_arrayrecord(tmp_path / 'a.array_record', docs_a)
  _write_arrayrecord(tmp_path / 'b.array_record', docs_b)
  d = _config('arrayrecord', paths=str(tmp_path / '*.array_record'), val_fraction=0.2)
  train, val = corpus.text_splits(d)
  train_texts, val_texts = list(train.texts('strict')), list(val.texts('strict'))
  assert sorted(train_texts + val_texts) == sorted(docs_a + docs_b)
  assert not set(train_texts) & set(val_texts)
  assert 5 <= len(val_texts) <= 40
  np.testing.assert_array_equal(corpus.text_splits(d)[1].record_ids, val.record_ids)

  d.val_paths = str(tmp_path / 'b.array_record')
  train, val = corpus.text_splits(d)
  assert list(train.texts('strict')) == docs_a and list(val.texts('strict')) == docs_b


def test_inputs_that_match_no_file_are_named_before_any_run_starts(tmp_path):
  config = base.get_config()
  config.data.update(source='text', paths=str(tmp_path / 'none' / '*.txt'))
  with pytest.raises(ValueError, match=r"data.paths glob .*none/\*\.txt.* matched no files"):
    corpus.check_inputs(config.data)
  (tmp_path / 'a.txt').write_text('text')
  config.data.update(paths=str(tmp_path / '*.txt'), val_paths=str(tmp_path / 'val' / '*.txt'))
  with pytest.raises(ValueError, match='data.val_paths glob'):
    corpus.check_inputs(config.data)
  config.data.val_paths = ''
  corpus.check_inputs(config.data)  # files that exist pass
  config.data.source = 'stdlib'
  config.data.paths = ''
  corpus.check_inputs(config.data)  # the embedded corpus has no globs to check
