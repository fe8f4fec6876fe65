"""GPT-2 sizes (Radford et al. 2019, table 2): `--config=experiments/configs/gpt2.py:355m`.

GPT-2's architecture: learned positions, pre-LayerNorm, GELU MLP of 4·d_model, biases everywhere and
the output layer tied to the token embedding. The vocabulary stays at the true 50257 BPE tokens, so
parameter counts match the published 124M/355M/774M/1558M exactly (nanoGPT pads to 50304 for
faster matmuls; that would add 38k·d_model parameters and belongs behind its own flag).

The paper gives 512 sequences of 1024 tokens per batch but no per-size learning rates; these borrow
the GPT-3 table's rate for the nearest size.
"""

import ml_collections

from experiments.configs import base

GPT2_VOCAB = 50257

# variant: (num_layers, d_model, num_heads, learning_rate, published total parameters)
SIZES = {
    '124m': (12, 768, 12, 6.0e-4, 124_439_808),
    '355m': (24, 1024, 16, 3.0e-4, 354_823_168),
    '774m': (36, 1280, 20, 2.5e-4, 774_030_080),
    '1.5b': (48, 1600, 25, 2.0e-4, 1_557_611_200),
}
ALIASES = {'small': '124m', 'medium': '355m', 'large': '774m', 'xl': '1.5b', '1558m': '1.5b'}


def pick_variant(variant: str | None, sizes: dict, aliases: dict, default: str) -> str:
  """Resolves a size name (case-insensitive, aliases allowed) or names every valid one."""
  name = (variant or default).strip().lower()
  name = aliases.get(name, name)
  if name not in sizes:
    raise ValueError(f'Unknown variant {variant!r}; choose one of {sorted(sizes)} '
                     f'(aliases {sorted(aliases)}), e.g. --config=<file>.py:{default}.')
  return name


def set_gpt_architecture(config: ml_collections.ConfigDict, num_layers: int, d_model: int,
                         num_heads: int, seq_len: int) -> None:
  """The GPT-2/GPT-3 block: learned positions, LayerNorm, GELU 4·D, biases, tied embeddings."""
  m = config.model
  m.num_layers, m.d_model, m.num_heads = num_layers, d_model, num_heads
  m.num_kv_heads, m.mlp_dim = 0, 0
  m.vocab_size = GPT2_VOCAB
  m.max_seq_len = seq_len
  m.position, m.norm, m.mlp = 'learned', 'layernorm', 'gelu'
  m.use_bias, m.tie_embeddings = True, True
  config.data.tokenizer = 'bpe'
  config.data.bpe_vocab_size = GPT2_VOCAB
  config.data.seq_len = seq_len


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  name = pick_variant(variant, SIZES, ALIASES, default='124m')
  num_layers, d_model, num_heads, learning_rate, _ = SIZES[name]
  config = base.get_config()
  set_gpt_architecture(config, num_layers, d_model, num_heads, seq_len=1024)
  config.data.batch_size = 512
  config.train.learning_rate = learning_rate
  return config
