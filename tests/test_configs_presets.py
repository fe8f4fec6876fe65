"""Every GPT-2/GPT-3 preset loads, builds a valid model config and has its published size."""

import importlib

import pytest
from absl import flags
from ml_collections import config_flags

from gptjax.flops import param_counts
from gptjax.model import GPTConfig

PRESETS = {name: importlib.import_module(f'experiments.configs.{name}')
           for name in ('gpt2', 'gpt3')}
GPT3_HEAD_DIM = {'small': 64, 'medium': 64, 'large': 96, 'xl': 128, '2.7b': 80, '6.7b': 128,
                 '13b': 128, '175b': 128}  # d_head column of GPT-3's table 2.1
VARIANTS = [(preset, variant) for preset, module in PRESETS.items() for variant in module.SIZES]


@pytest.mark.parametrize('preset,variant', VARIANTS)
def test_preset_builds_and_matches_published_size(preset, variant):
  """GPT-2's counts are exact (tied head, learned positions included, as in the released weights).

  GPT-3's table rounds (125M, 350M, 2.7B...) and counts embeddings too, so `total` must lie within
  2%: 350M and 2.7B come out 1.7% and 1.8% off the rounded figure.
  """
  module = PRESETS[preset]
  config = module.get_config(variant)
  cfg = GPTConfig.from_config(config.model)
  published = module.SIZES[variant][-1]
  total = param_counts(cfg).total
  if preset == 'gpt2':
    assert total == published
  else:
    assert total == pytest.approx(published, rel=0.02)
  assert cfg.max_seq_len == config.data.seq_len == (1024 if preset == 'gpt2' else 2048)
  assert cfg.vocab_size == config.data.bpe_vocab_size == 50257
  assert config.data.tokenizer == 'bpe'
  assert cfg.head_dim == (64 if preset == 'gpt2' else GPT3_HEAD_DIM[variant])


def test_gpt3_paper_batch_and_learning_rate():
  gpt3 = PRESETS['gpt3']
  big = gpt3.get_config('175b')
  assert (big.model.num_layers, big.model.d_model, big.model.num_heads) == (96, 12288, 96)
  assert big.data.batch_size * big.data.seq_len == 1536 * 2048  # "3.2M" tokens
  assert big.train.learning_rate == 0.6e-4
  small = gpt3.get_config('125M')  # alias, case-insensitive
  assert small.data.batch_size * 2048 == 2**19 and small.train.learning_rate == 6e-4
  assert small.train.num_steps * 2**19 == pytest.approx(300e9, rel=1e-5)
  assert gpt3.get_config().model.d_model == 768  # no variant: the smallest


@pytest.mark.parametrize('preset', sorted(PRESETS))
def test_unknown_variant_lists_valid_ones(preset):
  with pytest.raises(ValueError, match=r"Unknown variant '7b'; choose one of \[.*'\]"):
    PRESETS[preset].get_config('7b')


@pytest.mark.filterwarnings('ignore:the load_module')  # ml_collections' own loader
def test_config_flag_passes_text_after_colon():
  argv = ['prog', '--config=experiments/configs/gpt3.py:13b', '--config.train.num_steps=7']
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  assert flag_values.config.model.d_model == 5120
  assert flag_values.config.train.num_steps == 7
