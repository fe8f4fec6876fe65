"""Every config file loads and builds a valid model; command-line overrides reach the config."""

import glob
import os

import pytest
from absl import flags
from ml_collections import config_flags

from gptjax.model import GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, 'experiments', 'configs', '*.py')))
CONFIG_FILES = [p for p in CONFIG_FILES if not p.endswith('__init__.py')]


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


@pytest.mark.parametrize('path', [p for p in CONFIG_FILES
                                  if os.path.basename(p) not in ('gpt2.py', 'gpt3.py')])
def test_config_file_loads_and_builds_a_model_config(path):
  config = _parse(f'--config={path}')
  cfg = GPTConfig.from_run_config(config)
  assert cfg.d_model % cfg.num_heads == 0
  assert config.data.seq_len <= cfg.max_seq_len


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
