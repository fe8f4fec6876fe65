"""`python -m gptjax.data prepare`: shards equal to the stream a run tokenises in place, a prepare
killed with SIGKILL and rerun gives byte-identical shards, and a rerun with other settings is
refused."""

import glob
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments.configs import base
from gptjax.data import prepare, tokens
from gptjax.data.tokenizer import load_or_train_tokenizer, train_bpe

ROOT = str(pathlib.Path(__file__).resolve().parents[2])


def _config(**data):
  config = base.get_config()
  config.data.max_corpus_bytes = 600_000
  for key, value in data.items():
    config.data[key] = value
  return config


def _bpe_file(tmp_path) -> str:
  texts = [open(p, encoding='utf-8').read() for p in sorted(glob.glob(os.path.join(
      os.path.dirname(os.__file__), 'json', '*.py')))]
  tokenizer = train_bpe(iter(texts), 300)
  return tokenizer.save(str(tmp_path / 'bpe'))


def _shards(out: str, split: str) -> tokens.TokenStream:
  meta = json.load(open(os.path.join(out, prepare.META_FILE)))
  return tokens.TokenStream(sorted(glob.glob(os.path.join(out, f'{split}_*.bin'))), meta['dtype'])


@pytest.mark.parametrize('tokenizer', ['byte', 'bpe'])
def test_prepared_shards_hold_the_ids_a_run_tokenises_in_place(tmp_path, tokenizer):
  extra = {'tokenizer': 'bpe', 'tokenizer_path': _bpe_file(tmp_path)} if tokenizer == 'bpe' else {}
  config = _config(**extra)
  out = str(tmp_path / 'shards')
  meta = prepare.prepare(config, out, shard_mb=0.1)
  run = str(tmp_path / 'run')
  train, val, _ = tokens.token_streams(config, load_or_train_tokenizer(config, run), run)
  for split, in_run in (('train', train), ('validation', val)):
    prepared = _shards(out, split)
    np.testing.assert_array_equal(prepared.read(0, len(prepared)), in_run.read(0, len(in_run)))
    assert meta['splits'][split]['tokens'] == len(in_run)
  assert len(meta['splits']['train']['shards']) >= 3  # a shard closes after 0.1 MB of text
  assert meta['train_with']['data.source'] == 'tokens'
  again = prepare.prepare(config, out, shard_mb=0.1)  # finished: nothing more to write
  assert again == meta
  before = {name: open(os.path.join(out, name), 'rb').read()
            for name in sorted(os.listdir(out)) if name.endswith('.bin')}
  os.remove(os.path.join(out, 'train_00001.bin'))  # a lost shard, and a torn progress line
  with open(os.path.join(out, prepare.PROGRESS_FILE), 'a') as f:
    f.write('{"split": "valid')
  assert prepare.prepare(config, out, shard_mb=0.1) == meta
  assert {name: open(os.path.join(out, name), 'rb').read() for name in before} == before
  with pytest.raises(ValueError, match='other settings'):
    prepare.prepare(config, out, shard_mb=0.2)


def _run(out, bpe, cap):
  return subprocess.Popen(
      [sys.executable, '-m', 'gptjax.data', 'prepare', '--config=experiments/configs/tiny.py',
       f'--out={out}', '--shard_mb=0.05', '--config.data.tokenizer=bpe',
       f'--config.data.tokenizer_path={bpe}', f'--config.data.max_corpus_bytes={cap}'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def _bytes_of(out):
  return {os.path.basename(p): open(p, 'rb').read() for p in sorted(glob.glob(f'{out}/*.bin'))}


@pytest.mark.slow
def test_a_prepare_killed_midway_resumes_to_byte_identical_shards(tmp_path):
  bpe = _bpe_file(tmp_path)
  for cap in (4_000_000, 16_000_000):  # the larger one if the first finished before the kill
    killed, straight = str(tmp_path / f'killed{cap}'), str(tmp_path / f'straight{cap}')
    process = _run(killed, bpe, cap)
    progress = os.path.join(killed, prepare.PROGRESS_FILE)
    while process.poll() is None and not (os.path.exists(progress)
                                          and open(progress).read().count('\n') >= 2):
      time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    if not os.path.exists(os.path.join(killed, prepare.META_FILE)):
      break
  else:
    pytest.fail('prepare finished before it could be killed, even on the larger corpus')
  recorded = open(progress).read().count('\n')
  rerun = _run(killed, bpe, cap)
  _, err = rerun.communicate(timeout=600)
  assert rerun.returncode == 0, err[-2000:]
  straight_run = _run(straight, bpe, cap)
  straight_run.communicate(timeout=600)
  assert straight_run.returncode == 0
  shards = _bytes_of(straight)
  assert recorded < len(shards) and _bytes_of(killed) == shards
  meta = [json.load(open(os.path.join(d, prepare.META_FILE))) for d in (killed, straight)]
  assert meta[0]['splits'] == meta[1]['splits']
