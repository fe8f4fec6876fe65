"""GPT-3 sizes (Brown et al. 2020, table 2.1): `--config=experiments/configs/gpt3.py:175b`.

Same block as GPT-2 (see gpt2.py) with a 2048-token context. Batch sizes are the paper's tokens per
batch divided by 2048: its "0.5M" is 2^19 tokens = 256 sequences, and "3.2M" is the 1536 sequences
(3.1M tokens) the 175B model used.

Two rows of the table contradict themselves (n_heads x d_head != d_model). This model has
head_dim = d_model / num_heads, so XL keeps d_head 128 with 16 heads (the table's 24 x 128 = 3072
!= 2048) and 13B uses d_model = 40 x 128 = 5120 (the table's 5140 is not divisible by 40 heads).
The published counts assume attention width = d_model, so neither choice moves them.

Training follows section 2.3 / appendix B: 300B tokens, 375M tokens of warmup, cosine decay to 10%
(the paper reaches 10% at 260B tokens and stays there; our cosine spans the whole run), Adam
b1=0.9 b2=0.95 eps=1e-8, weight decay 0.1, gradient clipping at 1.0 (the base config's values).
"""

import ml_collections

from experiments.configs import base
from experiments.configs.gpt2 import pick_variant, set_gpt_architecture

SEQ_LEN = 2048
TRAIN_TOKENS = 300e9
WARMUP_TOKENS = 375e6

# variant: (num_layers, d_model, num_heads, batch in sequences, learning_rate, published parameters)
SIZES = {
    'small': (12, 768, 12, 256, 6.0e-4, 125e6),
    'medium': (24, 1024, 16, 256, 3.0e-4, 350e6),
    'large': (24, 1536, 16, 256, 2.5e-4, 760e6),
    'xl': (24, 2048, 16, 512, 2.0e-4, 1.3e9),
    '2.7b': (32, 2560, 32, 512, 1.6e-4, 2.7e9),
    '6.7b': (32, 4096, 32, 1024, 1.2e-4, 6.7e9),
    '13b': (40, 5120, 40, 1024, 1.0e-4, 13e9),
    '175b': (96, 12288, 96, 1536, 0.6e-4, 175e9),
}
ALIASES = {'125m': 'small', '350m': 'medium', '760m': 'large', '1.3b': 'xl'}


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  name = pick_variant(variant, SIZES, ALIASES, default='small')
  num_layers, d_model, num_heads, batch_size, learning_rate, _ = SIZES[name]
  config = base.get_config()
  set_gpt_architecture(config, num_layers, d_model, num_heads, seq_len=SEQ_LEN)
  config.data.batch_size = batch_size
  config.train.learning_rate = learning_rate
  tokens_per_step = batch_size * SEQ_LEN
  config.train.num_steps = round(TRAIN_TOKENS / tokens_per_step)
  config.train.warmup_steps = round(WARMUP_TOKENS / tokens_per_step)
  return config
