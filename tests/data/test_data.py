"""Pipeline: packing, shuffling, batching, multi-host slices, resumable state, errors."""


import numpy as np
import pytest

from experiments.configs import base
from gptjax.data import corpus, pipeline, tokens
from gptjax.data.tokenizer import ByteTokenizer

SEQ_LEN = 15  # windows of 16 tokens


def _corpus(tmp_path, num_files=30, lines=20):
  src = tmp_path / 'src'
  src.mkdir(exist_ok=True)
  for i in range(num_files):
    lines_text = ''.join(f'x{i} = {j}  # ünï {j * i}\n' for j in range(lines))
    (src / f'mod{i:02d}.py').write_text(lines_text)
  return src


def _config(tmp_path, **data_fields):
  config = base.get_config()
  config.data.source = 'text'
  config.data.paths = str(_corpus(tmp_path) / '*.py')
  config.data.val_fraction = 0.2
  config.data.seq_len = SEQ_LEN
  config.data.batch_size = 4
  config.train.eval_batches = 3
  for key, value in data_fields.items():
    config.data[key] = value
  return config


def _stream(tmp_path, ids, name='s.bin'):
  path = tmp_path / name
  np.asarray(ids, np.uint16).tofile(path)
  return tokens.TokenStream([str(path)], 'uint16')


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_windows_pack_the_stream_exactly(tmp_path):
  ids = np.random.default_rng(0).integers(0, 256, 1000)
  windows = pipeline.Windows(_stream(tmp_path, ids), SEQ_LEN + 1)
  assert len(windows) == 1000 // 16
  rows = [windows[i] for i in range(len(windows))]
  assert all(r.shape == (16,) and r.dtype == np.int32 for r in rows)
  np.testing.assert_array_equal(np.concatenate(rows), ids[:len(windows) * 16])
  with pytest.raises(IndexError):
    windows[len(windows)]


def test_shuffle_is_seeded_and_covers_every_window(tmp_path):
  stream = _stream(tmp_path, np.arange(16 * 64) % 60000)
  def epoch(seed):
    ds = pipeline.window_batches(stream, SEQ_LEN, 4, seed=seed, repeat=True)
    return np.concatenate([ds[i] for i in range(16)])  # 16 batches of 4 = one epoch of 64 windows
  a, b, c = epoch(1), epoch(1), epoch(2)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert sorted(a[:, 0].tolist()) == list(range(0, 16 * 64, 16))  # a permutation of the windows
  unshuffled = pipeline.window_batches(stream, SEQ_LEN, 4, seed=None, repeat=False)
  assert len(unshuffled) == 16
  np.testing.assert_array_equal(unshuffled[1][:, 0], [64, 80, 96, 112])


def test_process_slices_union_is_the_global_batch(tmp_path):
  stream = _stream(tmp_path, np.arange(16 * 50))
  one = pipeline.window_batches(stream, SEQ_LEN, 8, seed=3, repeat=True)
  for count in (2, 4):
    parts = [pipeline.window_batches(stream, SEQ_LEN, 8, seed=3, repeat=True, process_index=p,
                                     process_count=count) for p in range(count)]
    for i in (0, 1, 7, 20):  # 20 crosses into the second epoch
      local = [part[i] for part in parts]
      assert all(x.shape == (8 // count, 16) for x in local)
      np.testing.assert_array_equal(np.concatenate(local), one[i])
  with pytest.raises(ValueError, match='batch_size=8 is not divisible by process_count=3'):
    pipeline.window_batches(stream, SEQ_LEN, 8, seed=3, repeat=True, process_index=0, process_count=3)
  with pytest.raises(ValueError, match='process_index=2'):
    pipeline.local_batch_size(8, 2, 2)


def test_build_data_shapes_and_counts(tmp_path):
  config = _config(tmp_path)
  workdir = str(tmp_path / 'run')
  d = pipeline.build_data(config, workdir)
  batch = next(d.train_iter)
  assert batch.shape == (4, SEQ_LEN + 1) and batch.dtype == np.int32
  assert isinstance(d.tokenizer, ByteTokenizer)

  # Byte tokens: one per UTF-8 byte, plus one eos per document.
  train_split, val_split = corpus.text_splits(config.data)
  train_bytes = sum(len(t.encode('utf-8')) for t in train_split.texts('strict'))
  assert d.train_tokens == train_bytes + train_split.num_documents
  val_texts = list(val_split.texts('strict'))
  val_bytes = sum(len(t.encode('utf-8')) for t in val_texts)
  assert d.val_bytes == val_bytes and d.val_tokens == val_bytes + val_split.num_documents
  val_ids = np.concatenate([np.append(d.tokenizer.encode(t), d.tokenizer.eos_id)
                            for t in val_texts])
  assert d.unigram_entropy == pytest.approx(tokens.unigram_entropy_nats(val_ids))
  val_windows = {tuple(val_ids[i:i + 16]) for i in range(0, len(val_ids) - 15, 16)}
  assert all(tuple(row) in val_windows for b in d.eval_batches() for row in b)

  again = pipeline.build_data(config, workdir)  # re-entry reads the same cache: the same batches
  np.testing.assert_array_equal(next(again.train_iter), batch)


def test_eval_batches_are_fixed_and_sliced_per_process(tmp_path):
  config = _config(tmp_path)
  d = pipeline.build_data(config, str(tmp_path / 'run'))
  first, second = list(d.eval_batches()), list(d.eval_batches())
  assert len(first) == 3
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)
  config.seed = 123  # the eval set does not depend on the training seed
  halves = [pipeline.build_data(config, str(tmp_path / 'run'), process_index=p, process_count=2)
            for p in range(2)]
  for i, parts in enumerate(zip(*(list(h.eval_batches()) for h in halves))):
    np.testing.assert_array_equal(np.concatenate(parts), first[i])


def test_train_iterator_state_restores_exactly(tmp_path):
  config = _config(tmp_path)
  workdir = str(tmp_path / 'run')
  it = pipeline.build_data(config, workdir).train_iter
  _take(it, 5)
  state = it.get_state()
  expected = _take(it, 3)
  fresh = pipeline.build_data(config, workdir).train_iter
  assert not np.array_equal(next(fresh), expected[0])  # a fresh iterator starts elsewhere
  fresh.set_state(state)
  for a, b in zip(_take(fresh, 3), expected):
    np.testing.assert_array_equal(a, b)


def test_train_iterator_checkpoints_with_orbax(tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  import grain
  config = _config(tmp_path)
  workdir = str(tmp_path / 'run')
  it = pipeline.build_data(config, workdir).train_iter
  _take(it, 4)
  with ocp.CheckpointManager(str(tmp_path / 'ckpt')) as manager:
    manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
    expected = _take(it, 2)
    fresh = pipeline.build_data(config, workdir).train_iter
    manager.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  for a, b in zip(_take(fresh, 2), expected):
    np.testing.assert_array_equal(a, b)


def test_token_shards_end_to_end(tmp_path):
  shard = tmp_path / 'shards' / 'part0.bin'
  shard.parent.mkdir()
  ids = np.arange(2000, dtype=np.uint16) % 200
  ids[1234] = 300
  ids.tofile(shard)
  config = _config(tmp_path, source='tokens', paths=str(tmp_path / 'shards' / '*.bin'),
                   val_fraction=0.25)
  config.model.vocab_size = 512
  d = pipeline.build_data(config, str(tmp_path / 'run'))
  assert (d.train_tokens, d.val_tokens, d.val_bytes) == (1500, 500, 0)
  assert d.unigram_entropy == pytest.approx(tokens.unigram_entropy_nats(ids[1500:]))
  batch, = list(d.eval_batches())[:1]
  assert batch.shape == (4, 16) and batch.dtype == np.int32
  assert set(batch[:, 0].tolist()) <= set(ids[1500:].tolist())


def test_arrayrecord_source_end_to_end(tmp_path):
  """Training rows are windows of the train records' bytes, each record followed by eos.

  Every record differs from every other one at every few bytes, so a row matches only its own
  place in the stream: a shifted window, a lost or extra eos, or a mis-decoded 'ö' shows.
  """
  from array_record.python.array_record_module import ArrayRecordWriter
  path = tmp_path / 'docs.array_record'
  writer = ArrayRecordWriter(str(path), 'group_size:1')
  records = [f'record {i}: '.encode() + ' '.join(f'ö{i}.{j}' for j in range(8)).encode()
             for i in range(50)]
  for record in records:
    writer.write(record)
  writer.close()
  config = _config(tmp_path, source='arrayrecord', paths=str(path))
  d = pipeline.build_data(config, str(tmp_path / 'run'))
  assert d.train_tokens + d.val_tokens == sum(len(r) + 1 for r in records)

  train_split, _ = corpus.text_splits(config.data)  # which records train: the split's own rule
  eos = d.tokenizer.eos_id
  stream = np.concatenate([np.append(np.frombuffer(records[i], np.uint8), eos)
                           for i in train_split.record_ids])
  assert len(stream) == d.train_tokens
  windows = {tuple(stream[k:k + 16]) for k in range(0, len(stream) - 15, 16)}
  rows = np.concatenate(_take(d.train_iter, 5))
  assert rows.shape == (20, SEQ_LEN + 1)
  for row in rows:
    assert tuple(row) in windows
    # Decoded, each piece between eos tokens is a byte string of a record (a whole one when eos
    # closes it on both sides).
    pieces = bytes(row.astype(np.uint8)).split(bytes([eos]))
    assert all(any(piece in r for r in records) for piece in pieces)
    assert all(piece in records for piece in pieces[1:-1])
  assert any('ö' in d.tokenizer.decode(row) for row in rows)


def test_bad_inputs_raise_clear_errors(tmp_path):
  config = _config(tmp_path, batch_size=1000)
  with pytest.raises(ValueError, match=r'The train split has \d+ tokens = \d+ windows of '
                                       r'seq_len\+1=16 tokens, fewer than one batch of '
                                       r'data.batch_size=1000'):
    pipeline.build_data(config, str(tmp_path / 'a'))

  empty = tmp_path / 'empty'
  empty.mkdir()
  for i in range(4):
    (empty / f'e{i}.txt').write_text('')
  config = _config(tmp_path, paths=str(empty / '*.txt'))
  with pytest.raises(ValueError, match='split is empty'):
    pipeline.build_data(config, str(tmp_path / 'b'))

  latin = tmp_path / 'latin'
  latin.mkdir()
  for i in range(4):
    (latin / f'l{i}.txt').write_bytes('é'.encode('latin-1') * 50)
  config = _config(tmp_path, paths=str(latin / '*.txt'), decode_errors='skip')
  with pytest.raises(ValueError, match=r'split is empty: \d documents, \d skipped as undecodable'):
    pipeline.build_data(config, str(tmp_path / 'c'))
  config.data.decode_errors = 'strict'
  with pytest.raises(ValueError, match=r'l\d.txt is not valid UTF-8'):
    pipeline.build_data(config, str(tmp_path / 'd'))

  config = _config(tmp_path, batch_size=6)
  with pytest.raises(ValueError, match='not divisible by process_count=4'):
    pipeline.build_data(config, str(tmp_path / 'e'), process_index=0, process_count=4)
