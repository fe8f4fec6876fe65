"""Token streams: shard reads, the shard split, the tokenised cache, its key, and the vocab
check."""

import hashlib
import json
import math
import os
import pickle
from unittest import mock

import faults
import ml_collections
import numpy as np
import pytest

from experiments.configs import base
from gptjax.data import corpus, tokens
from gptjax.data.tokenizer import ByteTokenizer


def _config(tmp_path, source='text', **data_fields):
  config = base.get_config()
  config.data.source = source
  config.data.val_fraction = 0.2
  for key, value in data_fields.items():
    config.data[key] = value
  if source == 'text' and 'paths' not in data_fields:
    src = tmp_path / 'src'
    src.mkdir()
    for i in range(10):
      (src / f'doc{i}.txt').write_text(''.join(f'line {j} of {i}: ünï\n' for j in range(10)))
    config.data.paths = str(src / '*.txt')
  return config


def test_token_stream_reads_across_shards(tmp_path):
  a, b = np.arange(10, dtype=np.uint16), np.arange(100, 107, dtype=np.uint16)
  a.tofile(tmp_path / 'a.bin')
  b.tofile(tmp_path / 'b.bin')
  np.zeros(0, np.uint16).tofile(tmp_path / 'c.bin')  # empty shards are allowed
  stream = tokens.TokenStream([str(tmp_path / n) for n in ('a.bin', 'c.bin', 'b.bin')], 'uint16')
  whole = np.concatenate([a, b])
  assert len(stream) == 17
  np.testing.assert_array_equal(stream.read(0, 17), whole)
  np.testing.assert_array_equal(stream.read(8, 12), whole[8:12])
  view = stream.slice(5, 15)
  np.testing.assert_array_equal(view.read(0, 100), whole[5:15])
  assert view.locate(6) == (str(tmp_path / 'b.bin'), 1)
  np.testing.assert_array_equal(np.concatenate([c for _, c in view.chunks(3)]), whole[5:15])
  # Grain workers receive a pickled stream: its open maps stay behind, the view comes along.
  copy = pickle.loads(pickle.dumps(view))
  assert not copy._maps and len(copy) == 10
  np.testing.assert_array_equal(copy.read(0, 100), whole[5:15])


def test_token_splits(tmp_path):
  np.arange(1000, dtype=np.uint32).tofile(tmp_path / 'shard0.bin')
  d = _config(tmp_path, 'tokens', paths=str(tmp_path / '*.bin'), token_dtype='uint32',
              val_fraction=0.1).data
  train, val = tokens.token_splits(d)
  np.testing.assert_array_equal(train.read(0, 10**6), np.arange(900))
  np.testing.assert_array_equal(val.read(0, 10**6), np.arange(900, 1000))
  d.max_corpus_bytes = 400  # 100 uint32 tokens
  train, val = tokens.token_splits(d)
  assert (len(train), len(val)) == (90, 10)
  d.max_corpus_bytes, d.token_dtype = 0, 'int8'
  with pytest.raises(ValueError, match="token_dtype='int8'"):
    tokens.token_splits(d)
  (tmp_path / 'odd.bin').write_bytes(b'abc')
  d.token_dtype = 'uint16'
  with pytest.raises(ValueError, match=r'odd.bin has 3 bytes, not a multiple of 2'):
    tokens.token_splits(d)


def test_unigram_entropy_matches_formula(tmp_path):
  assert tokens.unigram_entropy_nats(np.array([0, 1, 2, 3] * 5)) == pytest.approx(math.log(4))
  ids = np.array([7] * 3 + [9])
  expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
  assert tokens.unigram_entropy_nats(ids) == pytest.approx(expected)
  ids.astype(np.uint16).tofile(tmp_path / 's.bin')
  stream = tokens.TokenStream([str(tmp_path / 's.bin')], 'uint16')
  assert tokens.unigram_entropy_nats(stream) == pytest.approx(expected)
  with pytest.raises(ValueError, match='empty token stream'):
    tokens.unigram_entropy_nats(np.zeros(0, np.int32))


def test_fingerprint_is_fixed_so_resumed_runs_find_their_cache():
  # Pinned keys: a change here orphans every existing cache, so it must be deliberate.
  d = ml_collections.ConfigDict(dict(
      source='text', paths='/corpus/*.txt', val_paths='/corpus/val.txt', val_fraction=0.1,
      decode_errors='strict', max_corpus_bytes=1000, token_dtype='uint16'))
  assert tokens.fingerprint(d, ByteTokenizer()) == 'c0463d0392a0b290'
  d.source, d.token_dtype, d.val_paths = 'tokens', 'uint32', ''
  shards = [(('/s/a.bin',), [400], 0, 90), (('/s/a.bin',), [400], 90, 100)]
  assert tokens.fingerprint(d, ByteTokenizer(), shards) == 'a8035027c38e19b4'


def test_text_cache_holds_each_document_then_eos_and_is_reused(tmp_path):
  config = _config(tmp_path)
  workdir = str(tmp_path / 'run')
  tok = ByteTokenizer()
  train, val, meta = tokens.token_streams(config, tok, workdir)
  cache, = os.listdir(os.path.join(workdir, 'data'))
  assert sorted(os.listdir(os.path.join(workdir, 'data', cache))) == [
      'meta.json', 'train.bin', 'validation.bin']
  with open(os.path.join(workdir, 'data', cache, 'meta.json')) as f:
    assert json.load(f) == meta
  assert (meta['source'], meta['tokenizer'], meta['dtype']) == ('text', 'byte', 'uint16')

  for split, stream in zip(corpus.text_splits(config.data), (train, val)):
    texts = list(split.texts('strict'))
    expected = np.concatenate([np.append(np.frombuffer(t.encode(), np.uint8), 0) for t in texts])
    on_disk = np.fromfile(os.path.join(workdir, 'data', cache, f'{split.name}.bin'), np.uint16)
    np.testing.assert_array_equal(on_disk, expected)
    np.testing.assert_array_equal(stream.read(0, len(stream)), expected)
    checksum = hashlib.blake2b(expected.astype(np.uint16).tobytes(), digest_size=16).hexdigest()
    assert meta[split.name] == {'files': len(texts), 'bytes': sum(len(t.encode()) for t in texts),
                                'tokens': len(expected), 'checksum': checksum, 'skipped': [],
                                'replaced': 0}
  assert meta['val_unigram_entropy'] == pytest.approx(
      tokens.unigram_entropy_nats(val.read(0, len(val))))

  train_bin = os.path.join(workdir, 'data', cache, 'train.bin')
  mtime = os.stat(train_bin).st_mtime_ns
  again = tokens.token_streams(config, tok, workdir)
  assert os.stat(train_bin).st_mtime_ns == mtime and again[2] == meta
  config.data.max_corpus_bytes = 300  # a different stream gets its own cache
  capped, _, _ = tokens.token_streams(config, tok, workdir)
  assert len(os.listdir(os.path.join(workdir, 'data'))) == 2 and len(capped) < len(train)


def test_token_shards_vocab_check_and_rewritten_shards(tmp_path):
  shard = tmp_path / 'shards' / 'part0.bin'
  shard.parent.mkdir()
  ids = np.arange(2000, dtype=np.uint16) % 200
  ids[1234] = 300
  ids.tofile(shard)
  config = _config(tmp_path, 'tokens', paths=str(tmp_path / 'shards' / '*.bin'),
                   val_fraction=0.25)
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match=r'part0.bin holds token id 300 \(at token offset 1234\), '
                                       r'but model.vocab_size=256; set model.vocab_size to at '
                                       r'least 301'):
    tokens.token_streams(config, ByteTokenizer(), workdir)
  config.model.vocab_size = 512
  train, val, meta = tokens.token_streams(config, ByteTokenizer(), workdir)
  assert (len(train), len(val)) == (1500, 500)
  np.testing.assert_array_equal(val.read(0, 500), ids[1500:])
  assert (meta['max_id'], meta['max_id_offset']) == (300, 1234)
  assert meta['val_unigram_entropy'] == pytest.approx(tokens.unigram_entropy_nats(ids[1500:]))
  cache, = os.listdir(os.path.join(workdir, 'data'))
  assert os.listdir(os.path.join(workdir, 'data', cache)) == ['meta.json']  # shards stay in place

  np.concatenate([ids, [700]]).astype(np.uint16).tofile(shard)  # rewritten in place: a new key
  with pytest.raises(ValueError, match=r'holds token id 700 \(at token offset 2000\)'):
    tokens.token_streams(config, ByteTokenizer(), workdir)
  assert len(os.listdir(os.path.join(workdir, 'data'))) == 2


def test_an_altered_meta_of_token_shards_is_scanned_again(tmp_path):
  shard = tmp_path / 'shards' / 'part0.bin'
  shard.parent.mkdir()
  (np.arange(2000, dtype=np.uint16) % 200).tofile(shard)
  config = _config(tmp_path, 'tokens', paths=str(tmp_path / 'shards' / '*.bin'),
                   val_fraction=0.25)
  workdir = str(tmp_path / 'run')
  meta = tokens.token_streams(config, ByteTokenizer(), workdir)[2]
  cache, = os.listdir(os.path.join(workdir, 'data'))
  _edit_meta(max_id=None)(os.path.join(workdir, 'data', cache, 'shard'))
  with mock.patch.object(tokens.logging, 'warning') as warning:
    again = tokens.token_streams(config, ByteTokenizer(), workdir)[2]
  (message, *args), _ = warning.call_args
  assert "lacks ['max_id']" in message % tuple(args)
  assert again == meta


def _damage_truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) - 64)  # whole tokens gone: the size is still even


def _damage_meta(path):
  meta = os.path.join(os.path.dirname(path), 'meta.json')
  with open(meta, 'wb') as f:
    f.write(b'{"source": "text", "tra\xff\x00')


def _edit_meta(**changes):
  """A meta.json that still parses, with `changes` applied (None deletes the key)."""
  def damage(path):
    meta_path = os.path.join(os.path.dirname(path), 'meta.json')
    with open(meta_path) as f:
      meta = json.load(f)
    for key, value in changes.items():
      if value is None:
        del meta[key]
      else:
        meta[key] = value
    with open(meta_path, 'w') as f:
      json.dump(meta, f)
  return damage


@pytest.mark.parametrize('damage, split, says', [
    (_damage_truncate, 'train', 'bytes'), (_damage_truncate, 'validation', 'bytes'),
    (faults.flip_middle_byte, 'train', 'checksum'), (_damage_meta, 'train', 'meta.json'),
    (_edit_meta(dtype='float7'), 'train', "names dtype 'float7'"),
    (_edit_meta(val_unigram_entropy=None), 'train', "lacks ['val_unigram_entropy']"),
    (_edit_meta(val_unigram_entropy='high'), 'train', "val_unigram_entropy='high', not a finite")],
    ids=['truncated-train', 'truncated-validation', 'flipped-byte', 'garbled-meta',
         'altered-dtype', 'deleted-entropy', 'altered-entropy'])
def test_a_damaged_cache_is_rebuilt_never_read(tmp_path, damage, split, says):
  config = _config(tmp_path)
  workdir = str(tmp_path / 'run')
  tok = ByteTokenizer()
  train, val, meta = tokens.token_streams(config, tok, workdir)
  intact = [s.read(0, len(s)) for s in (train, val)]
  cache, = os.listdir(os.path.join(workdir, 'data'))
  path = os.path.join(workdir, 'data', cache, f'{split}.bin')
  damage(path)
  with mock.patch.object(tokens.logging, 'warning') as warning:
    train, val, again = tokens.token_streams(config, tok, workdir)
  (message, *args), _ = warning.call_args
  assert says in message % tuple(args)
  assert again == meta
  for stream, expected in zip((train, val), intact):
    np.testing.assert_array_equal(stream.read(0, len(stream)), expected)
