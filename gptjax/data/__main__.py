"""`python -m gptjax.data prepare --config=CONFIG --out=DIR`: tokenise a corpus into token shards.

  python -m gptjax.data prepare --config=experiments/configs/tiny.py --out=data/stdlib \
      [--config.data.source=hf --config.data.paths='~/corpus/*.parquet'] [--shard_mb=128]

Reads `config.data` as a run does, writes `DIR/{train,validation}_NNNNN.bin`, `DIR/tokenizer.json`
and `DIR/meta.json` (`gptjax/data/prepare.py`, docs/data.md), and prints the settings that train
on the shards. A rerun after an interruption continues shard by shard.
"""

import os
import sys
from typing import Sequence

from absl import app, flags
from ml_collections import config_flags

from gptjax.data import prepare
from gptjax.runs import cli

PROGRAM = 'gptjax.data'
FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  cli.quiet_libraries()
  if not (FLAGS.config and FLAGS.out):
    raise ValueError('Pass --config (e.g. experiments/configs/tiny.py) and --out=DIR.')
  meta = prepare.prepare(FLAGS.config, FLAGS.out, FLAGS.shard_mb)
  for name in ('train', 'validation'):
    split = meta['splits'][name]
    print(f'{name}: {len(split["shards"])} shards, {split["documents"]:,} documents, '
          f'{split["tokens"]:,} tokens')
  print('Train on them with: ' + ' '.join(f'--config.{k}={v}'
                                          for k, v in meta['train_with'].items()))
  print(f'Details: {os.path.join(FLAGS.out, prepare.META_FILE)}')


if __name__ == '__main__':
  command = next((arg for arg in sys.argv[1:] if not arg.startswith('-')), None)
  if command != 'prepare':
    cli.fail(PROGRAM, 'name the command first: python -m gptjax.data prepare --config=CONFIG '
             f'--out=DIR (got {command!r}).')
  sys.argv.remove(command)
  config_flags.DEFINE_config_file('config', None, 'A run config whose data section to prepare.',
                                  lock_config=True)
  flags.DEFINE_string('out', None, 'The directory for the shards, tokenizer and meta.json.')
  flags.DEFINE_float('shard_mb', 128.0, 'Megabytes of text per shard.')
  cli.run(main, f'{PROGRAM} prepare')
