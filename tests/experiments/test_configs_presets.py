"""Every GPT-2/GPT-3 preset loads, builds a valid model config and has its published shape and size.

The expected numbers are the published ones, written here: GPT-2's released models (Radford et al.
2019; the sizes as released: 124M/355M/774M/1558M) and GPT-3's table 2.1 (Brown et al. 2020).
"""

import importlib

import pytest
from absl import flags
from ml_collections import config_flags

from gptjax.cost.flops import param_counts
from gptjax.model.config import GPTConfig

PRESETS = {name: importlib.import_module(f'experiments.configs.{name}')
           for name in ('gpt2', 'gpt3')}
VOCAB = 50257  # GPT-2's BPE, which GPT-3 reuses

# variant: (parameters in millions, n_layers, d_model, n_heads); context 1024.
GPT2 = {
    '124m': (124, 12, 768, 12),
    '355m': (355, 24, 1024, 16),
    '774m': (774, 36, 1280, 20),
    '1.5b': (1558, 48, 1600, 25),
}
# GPT-3 table 2.1, variant: (n_params, n_layers, d_model, n_heads, d_head, batch size in tokens,
# learning rate); context 2048.
GPT3 = {
    'small': (125e6, 12, 768, 12, 64, 0.5e6, 6.0e-4),
    'medium': (350e6, 24, 1024, 16, 64, 0.5e6, 3.0e-4),
    'large': (760e6, 24, 1536, 16, 96, 0.5e6, 2.5e-4),
    'xl': (1.3e9, 24, 2048, 24, 128, 1e6, 2.0e-4),
    '2.7b': (2.7e9, 32, 2560, 32, 80, 1e6, 1.6e-4),
    '6.7b': (6.7e9, 32, 4096, 32, 128, 2e6, 1.2e-4),
    '13b': (13.0e9, 40, 5140, 40, 128, 2e6, 1.0e-4),
    '175b': (175.0e9, 96, 12288, 96, 128, 3.2e6, 0.6e-4),
}
# Two rows have n_heads * d_head != d_model. The presets keep d_head and make the attention width
# d_model (gpt3.py says why): XL 2048 / 128 = 16 heads, 13B 40 x 128 = 5120 wide.
GPT3_RESOLVED = {'xl': (2048, 16), '13b': (5120, 40)}


def textbook_param_count(layers: int, d: int, vocab: int, context: int) -> int:
  """GPT-2's block with biases and tied head: per layer QKV and output 4d² + 4d, MLP 8d² + 5d,
  two LayerNorms 4d; then the final LayerNorm 2d, the token and position tables (V + T)·d."""
  return layers * (12 * d * d + 13 * d) + 2 * d + (vocab + context) * d


def test_every_preset_variant_is_checked_against_a_published_row():
  assert set(PRESETS['gpt2'].SIZES) == set(GPT2)
  assert set(PRESETS['gpt3'].SIZES) == set(GPT3)


@pytest.mark.parametrize('variant', GPT2)
def test_gpt2_preset_has_the_released_shape_and_size(variant):
  millions, layers, d_model, heads = GPT2[variant]
  config = PRESETS['gpt2'].get_config(variant)
  cfg = GPTConfig.from_config(config.model)
  assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.head_dim) == (layers, d_model, heads, 64)
  assert cfg.max_seq_len == config.data.seq_len == 1024
  assert cfg.vocab_size == config.data.bpe_vocab_size == VOCAB
  assert config.data.tokenizer == 'bpe'
  assert (cfg.position, cfg.norm, cfg.mlp, cfg.use_bias, cfg.tie_embeddings) == (
      'learned', 'layernorm', 'gelu', True, True)
  total = param_counts(cfg).total
  assert total == textbook_param_count(layers, d_model, VOCAB, 1024)
  assert round(total / 1e6) == millions  # the released sizes are rounded to the million


@pytest.mark.parametrize('variant', GPT3)
def test_gpt3_preset_matches_table_2_1(variant):
  """Shape, batch and learning rate as in the table; parameters within 2% of its rounded figure.

  The table's counts are rounded (and 350M, 2.7B are loose: the exact counts of those shapes are
  355.9M and 2.65B, 1.7% and 1.8% away), so `total` must lie within 2%; it must equal the textbook
  count of the shape exactly. Batch sizes are given to one or two figures ("0.5M" is 256 sequences
  of 2048 = 524,288 tokens, "3.2M" the 1536 sequences = 3.1M that 175B used): within 5%.
  """
  n_params, layers, d_model, heads, d_head, batch_tokens, learning_rate = GPT3[variant]
  assert (heads * d_head == d_model) == (variant not in GPT3_RESOLVED)
  config = PRESETS['gpt3'].get_config(variant)
  cfg = GPTConfig.from_config(config.model)
  assert cfg.num_layers == layers and cfg.head_dim == d_head
  assert (cfg.d_model, cfg.num_heads) == GPT3_RESOLVED.get(variant, (d_model, heads))
  assert cfg.max_seq_len == config.data.seq_len == 2048
  assert cfg.vocab_size == config.data.bpe_vocab_size == VOCAB
  assert config.data.tokenizer == 'bpe'
  assert config.data.batch_size * 2048 == pytest.approx(batch_tokens, rel=0.05)
  assert config.train.learning_rate == learning_rate
  total = param_counts(cfg).total
  assert total == textbook_param_count(layers, cfg.d_model, VOCAB, 2048)
  assert total == pytest.approx(n_params, rel=0.02)


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
