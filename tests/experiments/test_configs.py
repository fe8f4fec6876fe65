"""Every config file loads and builds a valid model; command-line overrides reach the config."""

import dataclasses
import glob
import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from gptjax.data import corpus
from gptjax.data.tokenizer import ByteTokenizer
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.parallel import sharding
from gptjax.runs import run_dir
from gptjax.train import optim

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, 'experiments', 'configs', '*.py')))
CONFIG_FILES = [p for p in CONFIG_FILES if not p.endswith('__init__.py')]
# Post-training configs take their model from the run they start from (--init_from).
POST_TRAINING = ('finetune.py', 'preferences.py')
PRETRAINING_FILES = [p for p in CONFIG_FILES if os.path.basename(p) not in POST_TRAINING]


def _parse(*argv):
  argv = ['prog', *argv]
  flag_values = flags.FlagValues()
  # config_flags finds the override flags in `sys_argv` (sys.argv by default) before parsing.
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_the_config_directory_holds_the_expected_files():
  names = {os.path.basename(p) for p in CONFIG_FILES}
  assert {'base.py', 'tiny.py', 'gpt2.py', 'gpt3.py'} <= names


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_config_file_survives_the_run_directory_round_trip(path, tmp_path):
  """config.json records the run: reading it back gives every value of the file, types included."""
  config = _parse(f'--config={path}')
  run_dir.write_config(str(tmp_path), config)
  assert run_dir.read_config(str(tmp_path)).to_dict() == config.to_dict()


@pytest.mark.parametrize('path', PRETRAINING_FILES, ids=os.path.basename)
def test_config_file_gives_the_model_and_schedule_it_states(path):
  """The model config is the file's values, field for field (none dropped or renamed); the
  schedule warms up to the file's learning rate and a cosine ends at min_lr_ratio of it; the
  vocabulary is the tokenizer's."""
  config = _parse(f'--config={path}')
  cfg = GPTConfig.from_run_config(config)
  assert {k: v for k, v in dataclasses.asdict(cfg).items() if k != 'peft'} == config.model.to_dict()
  assert config.data.seq_len <= cfg.max_seq_len

  t = config.train
  schedule = optim.learning_rate_schedule(t)
  assert float(schedule(t.warmup_steps)) == pytest.approx(t.learning_rate, rel=1e-6)
  if t.schedule == 'cosine':
    assert float(schedule(t.num_steps)) == pytest.approx(t.learning_rate * t.min_lr_ratio,
                                                         rel=1e-6)
  assert min(t.num_steps, t.log_every, t.eval_every, t.checkpoint_every, t.eval_batches) > 0

  vocab = ByteTokenizer.vocab_size if config.data.tokenizer == 'byte' else config.data.bpe_vocab_size
  assert cfg.vocab_size == vocab
  corpus.check_config(config.data)


@pytest.mark.parametrize('path', PRETRAINING_FILES, ids=os.path.basename)
def test_mesh_rules_cover_every_parameter_axis(path):
  """Each logical axis of the model's parameters has a rule naming only mesh axes: an axis
  without one would leave its weights unsharded on every mesh."""
  config = _parse(f'--config={path}')
  rules = dict(sharding.logical_rules(config.mesh))
  cfg = dataclasses.replace(GPTConfig.from_run_config(config), attention_impl='xla')  # any backend
  boxed = jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params']
  specs = jax.tree.leaves(nn.get_partition_spec(boxed),
                          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  used = {name for spec in specs for name in spec if name is not None}
  assert used and used <= set(rules)
  assert 'batch' in rules


def test_tiny_config_has_enough_of_the_data_it_names():
  """tiny trains on the standard library with byte tokens: its train split holds many batches of
  seq_len + 1 bytes and its validation split the train.eval_batches batches evaluation reads."""
  config = _parse(f'--config={ROOT}/experiments/configs/tiny.py')
  d = config.data
  assert (d.source, d.tokenizer) == ('stdlib', 'byte')
  train, val = corpus.text_splits(d)
  window_batch = (d.seq_len + 1) * d.batch_size  # bytes, one byte token each
  train_bytes = sum(os.path.getsize(f.path) for f in train.files)
  val_bytes = sum(os.path.getsize(f.path) for f in val.files)
  assert train_bytes >= 100 * window_batch
  assert val_bytes >= config.train.eval_batches * window_batch


def test_overrides_from_the_command_line_reach_nested_fields():
  config = _parse(f'--config={ROOT}/experiments/configs/tiny.py', '--config.model.num_layers=2',
                  '--config.train.learning_rate=0.01', '--config.data.tokenizer=bpe',
                  '--config.model.position=rope')
  assert config.model.num_layers == 2
  assert config.train.learning_rate == 0.01
  assert config.data.tokenizer == 'bpe'
  assert GPTConfig.from_run_config(config).position == 'rope'


def test_unknown_or_mistyped_overrides_are_refused():
  with pytest.raises(Exception, match='num_layer'):
    _parse(f'--config={ROOT}/experiments/configs/tiny.py', '--config.model.num_layer=2')
  with pytest.raises(Exception, match='num_layers'):
    _parse(f'--config={ROOT}/experiments/configs/tiny.py', '--config.model.num_layers=two')


def test_sequence_longer_than_the_position_table_is_refused():
  config = _parse(f'--config={ROOT}/experiments/configs/tiny.py', '--config.data.seq_len=512')
  with pytest.raises(ValueError, match='exceeds model.max_seq_len'):
    GPTConfig.from_run_config(config)
