r"""Throughput of `python -m gptjax.data prepare` against the tokenizer alone, interleaved.

  python -m experiments.bench_prepare [--corpus_mb=16] [--rounds=3]

On the stdlib corpus (capped at --corpus_mb): a 4096-token byte-level BPE is trained on its first
4 MB, then each round times
  encode_batch  `tokenizers`' own encode_batch over the documents, already in memory, in batches
                of 8 MB of text (the tokenizer's ceiling: no reading, writing or hashing);
  prepare       the whole prepare step with that BPE: reading and decoding the files, encoding,
                writing and syncing the shards, hashing, the progress records;
  prepare/byte  the prepare step with the byte tokenizer;
  read          reading and decoding the documents alone (what the byte tokenizer is bound by).
It prints each one's MB of text per second and prepare's share of encode_batch's throughput.
"""

import os
import shutil
import tempfile
import time
from typing import Sequence

from absl import app, flags

from experiments.configs import base
from gptjax.data import corpus, prepare, tokenizer
from gptjax.runs import cli

FLAGS = flags.FLAGS
flags.DEFINE_float('corpus_mb', 16.0, 'Megabytes of the stdlib corpus to tokenise.')
flags.DEFINE_integer('rounds', 3, 'Interleaved rounds; the table gives each one.')


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main(argv: Sequence[str]) -> None:
  del argv
  cli.quiet_libraries()
  work = tempfile.mkdtemp(prefix='bench_prepare')
  try:
    config = base.get_config()
    config.data.max_corpus_bytes = int(FLAGS.corpus_mb * 1e6)
    texts = [text for split in corpus.text_splits(config.data) for text in split.texts('replace')]
    megabytes = sum(len(t.encode('utf-8')) for t in texts) / 1e6
    sample, size = [], 0
    for text in texts:
      if size > 4e6:
        break
      sample.append(text)
      size += len(text.encode('utf-8'))
    bpe = tokenizer.train_bpe(iter(sample), 4096)
    bpe_path = bpe.save(os.path.join(work, 'bpe'))
    batches, batch, chars = [], [], 0
    for text in texts:
      batch.append(text)
      chars += len(text.encode('utf-8'))
      if chars >= 1 << 23:
        batches.append(batch)
        batch, chars = [], 0
    batches.append(batch)

    def run_prepare(name: str) -> None:
      out = os.path.join(work, f'out_{name}')
      shutil.rmtree(out, ignore_errors=True)
      run_config = base.get_config()
      run_config.data.max_corpus_bytes = config.data.max_corpus_bytes
      run_config.data.tokenizer = name
      if name == 'bpe':
        run_config.data.tokenizer_path = bpe_path
      prepare.prepare(run_config, out, shard_mb=32)

    cases = {
        'encode_batch': lambda: [bpe.encode_batch(b) for b in batches],
        'prepare': lambda: run_prepare('bpe'),
        'prepare/byte': lambda: run_prepare('byte'),
        'read': lambda: [None for split in corpus.text_splits(config.data)
                         for _ in split.texts('replace')],
    }
    print(f'{megabytes:.1f} MB of stdlib text, {os.cpu_count()} cores; MB/s per round')
    rates = {name: [] for name in cases}
    for _ in range(FLAGS.rounds):
      for name, case in cases.items():
        rates[name].append(megabytes / _timed(case))
    for name, values in rates.items():
      print(f'  {name:<13} ' + '  '.join(f'{v:7.1f}' for v in values))
    share = [p / e for p, e in zip(rates['prepare'], rates['encode_batch'])]
    print('prepare / encode_batch: ' + '  '.join(f'{s:.2f}' for s in share))
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  app.run(main)
