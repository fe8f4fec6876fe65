"""data.source='hf': local parquet, JSONL, CSV and Arrow files and a dataset directory by name, their
rows and splits, the errors that name the field, file and row, the cache key, and a short training
run on parquet whose validation loss falls."""

import json
import os

import ml_collections
import numpy as np
import pytest

from experiments.configs import base
from gptjax.data import corpus, tokens
from gptjax.data.tokenizer import ByteTokenizer
from gptjax.train import loop

pa = pytest.importorskip('pyarrow')
pq = pytest.importorskip('pyarrow.parquet')
pytest.importorskip('datasets')

DOCS = [f'def f{i}(x):\n    return x * {i}\n' for i in range(60)]


def _data(**fields) -> ml_collections.ConfigDict:
  d = base.get_config().data
  d.source = 'hf'
  for key, value in fields.items():
    d[key] = value
  return d


def _texts(split) -> list[str]:
  return list(split.texts('strict'))


def _write(tmp_path, fmt: str, docs, name='part', field='text'):
  path = str(tmp_path / f'{name}.{fmt}')
  if fmt == 'parquet':
    pq.write_table(pa.table({field: docs, 'id': list(range(len(docs)))}), path)
  elif fmt == 'arrow':  # the Arrow IPC stream format that datasets itself writes
    table = pa.table({field: docs, 'id': list(range(len(docs)))})
    with pa.OSFile(path, 'wb') as f, pa.ipc.new_stream(f, table.schema) as writer:
      writer.write_table(table)
  elif fmt == 'jsonl':
    with open(path, 'w') as f:
      f.writelines(json.dumps({field: doc, 'id': i}) + '\n' for i, doc in enumerate(docs))
  else:
    import csv
    with open(path, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow([field, 'id'])
      writer.writerows([doc, i] for i, doc in enumerate(docs))
  return path


@pytest.mark.parametrize('fmt', ['parquet', 'jsonl', 'csv', 'arrow'])
def test_every_row_is_one_document_in_exactly_one_split(tmp_path, fmt):
  _write(tmp_path, fmt, DOCS[:30], 'a')
  _write(tmp_path, fmt, DOCS[30:], 'b')
  train, val = corpus.text_splits(_data(paths=str(tmp_path / f'*.{fmt}'), val_fraction=0.2))
  got_train, got_val = _texts(train), _texts(val)
  assert sorted(got_train + got_val) == sorted(DOCS) and got_val and got_train
  assert 3 <= len(got_val) <= 24  # about a fifth, by a hash of (file, row)
  again = corpus.text_splits(_data(paths=str(tmp_path / f'*.{fmt}'), val_fraction=0.2))
  assert _texts(again[1]) == got_val  # stable
  moved = tmp_path / 'elsewhere'
  moved.mkdir()
  for name in (f'a.{fmt}', f'b.{fmt}'):
    os.rename(tmp_path / name, moved / name)
  assert _texts(corpus.text_splits(_data(paths=str(moved / f'*.{fmt}'),
                                         val_fraction=0.2))[1]) == got_val  # and where it lies


def test_val_paths_and_a_named_datasets_own_validation_split(tmp_path):
  _write(tmp_path, 'jsonl', DOCS[:50], 'train')
  _write(tmp_path, 'jsonl', DOCS[50:], 'validation')
  train, val = corpus.text_splits(_data(paths=str(tmp_path / '*.jsonl'),
                                        val_paths=str(tmp_path / 'validation.jsonl')))
  assert _texts(train) == DOCS[:50] and _texts(val) == DOCS[50:]
  train, val = corpus.text_splits(_data(hf_name=str(tmp_path)))  # a dataset directory by name
  assert _texts(train) == DOCS[:50] and _texts(val) == DOCS[50:]
  train, val = corpus.text_splits(_data(hf_name=str(tmp_path), hf_streaming=True))
  assert _texts(train) == DOCS[:50] and _texts(val) == DOCS[50:]
  capped = corpus.text_splits(_data(hf_name=str(tmp_path), max_corpus_bytes=200))[0]
  assert sum(len(t.encode()) for t in _texts(capped)) == 200 - round(200 * 0.05)


def test_a_streamed_dataset_splits_its_rows_by_hash(tmp_path):
  (tmp_path / 'only').mkdir()
  _write(tmp_path / 'only', 'jsonl', DOCS, 'train')
  train, val = corpus.text_splits(_data(hf_name=str(tmp_path / 'only'), hf_streaming=True,
                                        val_fraction=0.2))
  assert sorted(_texts(train) + _texts(val)) == sorted(DOCS) and _texts(val)


def test_bad_rows_name_the_field_the_file_and_the_row(tmp_path):
  path = _write(tmp_path, 'jsonl', DOCS[:5], field='content')
  with pytest.raises(ValueError, match=f"{path} has no column data.text_field='text'"):
    corpus.text_splits(_data(paths=path))
  bad = str(tmp_path / 'bad.parquet')
  pq.write_table(pa.table({'text': ['fine', None, 'also fine']}), bad)
  train, val = corpus.text_splits(_data(paths=bad, val_paths=_write(tmp_path, 'jsonl', DOCS[:3],
                                                                    'v')))
  with pytest.raises(ValueError, match=f"{bad} row 1: data.text_field='text' holds NoneType"):
    _texts(train)
  empty = str(tmp_path / 'empty.jsonl')
  open(empty, 'w').close()
  with pytest.raises(ValueError, match=f'{empty} is empty'):
    corpus.text_splits(_data(paths=empty))
  with pytest.raises(ValueError, match='set exactly one of them'):
    corpus.check_config(_data())


def test_a_changed_file_changes_the_token_cache_key(tmp_path):
  path = _write(tmp_path, 'jsonl', DOCS)
  d = _data(paths=path)
  key = tokens.fingerprint(d, ByteTokenizer(), corpus.source_identity(d))
  with open(path, 'a') as f:
    f.write(json.dumps({'text': 'one more row'}) + '\n')
  assert tokens.fingerprint(d, ByteTokenizer(), corpus.source_identity(d)) != key
  text = base.get_config().data  # the other sources keep the key they had
  assert corpus.source_identity(text) is None


@pytest.mark.slow
def test_a_short_run_on_parquet_learns(tmp_path):
  import sysconfig
  stdlib = sysconfig.get_paths()['stdlib']
  docs = [open(os.path.join(stdlib, name), encoding='utf-8').read()
          for name in ('abc.py', 'bisect.py', 'heapq.py', 'string.py', 'textwrap.py', 'types.py',
                       'copy.py', 'keyword.py', 'shlex.py', 'fnmatch.py')]
  for i in range(2):
    pq.write_table(pa.table({'text': docs[i::2]}), str(tmp_path / f'shard{i}.parquet'))
  config = base.get_config()
  overrides = {
      'data.source': 'hf', 'data.paths': str(tmp_path / '*.parquet'), 'data.val_fraction': 0.2,
      'data.seq_len': 64, 'data.batch_size': 8, 'model.d_model': 32, 'model.num_layers': 1,
      'model.num_heads': 2, 'model.max_seq_len': 64, 'train.num_steps': 90,
      'train.warmup_steps': 5, 'train.learning_rate': 3e-3, 'train.eval_every': 30,
      'train.log_every': 30, 'train.eval_batches': 4, 'train.checkpoint_every': 90,
      'train.async_checkpoints': False}
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    evals = [r['eval_loss'] for r in map(json.loads, f) if 'eval_loss' in r]
  # measured: 3.25, 3.05, 2.94 at steps 30, 60, 90; a uniform guess costs ln 256 = 5.55
  assert len(evals) == 3 and evals[-1] < evals[0] - 0.1 and evals[-1] < np.log(256) - 1.5
