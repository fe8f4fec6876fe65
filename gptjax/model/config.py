"""The decoder's hyper-parameters: `GPTConfig`, its validation, and its construction from a run config.

Kept apart from the modules (`gptjax/model/gpt.py`) so that whatever reasons about a model's size,
FLOPs or compatibility (the sweep planner, the cost estimator, the converters) reads one frozen
dataclass without flax modules.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import ml_collections

from gptjax.model import attention, parametrization
from gptjax.model.peft_config import PeftConfig

POSITIONS = ('learned', 'sinusoidal', 'rope')
MLPS = ('gelu', 'swiglu')
NORMS = ('layernorm', 'rmsnorm')
REMATS = ('none', 'full', 'dots')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
MAX_VOCAB = 2**31 - 1  # token ids are int32 everywhere: batches, the embedding lookup, the loss


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Hyper-parameters of the decoder; built from `config.model` with `from_config`."""

  vocab_size: int = 256
  d_model: int = 128
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 0
  mlp_dim: int = 0
  max_seq_len: int = 256
  position: str = 'learned'
  rope_theta: float = 10000.0
  mlp: str = 'gelu'
  norm: str = 'layernorm'
  use_bias: bool = True
  tie_embeddings: bool = True
  dropout: float = 0.0
  init_std: float = 0.02
  # 'sp' or 'mup' (gptjax/model/parametrization.py); under muP, base_width is the proxy's d_model
  # and base_head_dim its head_dim (0: base_width / num_heads, the proxy has this head count).
  parametrization: str = 'sp'
  base_width: int = 0
  base_head_dim: int = 0
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  scan_layers: bool = False
  remat: str = 'none'
  # A backend of `gptjax.model.attention`; '' (the config files' default) is resolved to one where
  # the run is set up (`gptjax.parallel.hardware.resolve_attention`), before the model is applied.
  attention_impl: str = 'xla'
  # False: every position attends to the whole sequence (the MLM objective,
  # `gptjax/data/masking.py`).
  causal: bool = True
  # The fine-tuning method and its sizes (`gptjax/model/peft.py`); the default 'full' adds nothing.
  # Set from the run config's `finetune` section, not from `model`.
  peft: PeftConfig = PeftConfig()

  def __post_init__(self):
    def check(ok: bool, message: str):
      if not ok:
        raise ValueError(f'Invalid model config: {message}')

    for name in ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'max_seq_len'):
      check(getattr(self, name) > 0, f'{name}={getattr(self, name)} must be positive.')
    check(self.vocab_size <= MAX_VOCAB,
          f'vocab_size={self.vocab_size:,} exceeds {MAX_VOCAB:,}: token ids are int32 and the '
          'embedding has a row per id; pick the size of the tokenizer (or of the shards\' ids).')
    check(self.d_model % self.num_heads == 0,
          f'd_model={self.d_model} is not divisible by num_heads={self.num_heads}; '
          'pick num_heads that divides d_model.')
    check(self.kv_heads > 0 and self.num_heads % self.kv_heads == 0,
          f'num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}; '
          'grouped-query attention needs a whole number of query heads per key/value head.')
    check(self.position in POSITIONS, f'position={self.position!r}; choose one of {POSITIONS}.')
    check(self.position != 'rope' or self.head_dim % 2 == 0,
          f'RoPE rotates pairs of features, so head_dim={self.head_dim} must be even.')
    check(self.position != 'sinusoidal' or self.d_model % 2 == 0,
          f'sinusoidal positions need an even d_model, got {self.d_model}.')
    check(self.mlp in MLPS, f'mlp={self.mlp!r}; choose one of {MLPS}.')
    check(self.norm in NORMS, f'norm={self.norm!r}; choose one of {NORMS}.')
    check(self.remat in REMATS, f'remat={self.remat!r}; choose one of {REMATS}.')
    check(self.dtype in DTYPES and self.param_dtype in DTYPES,
          f'dtype={self.dtype!r}, param_dtype={self.param_dtype!r}; choose from {tuple(DTYPES)}.')
    check(0.0 <= self.dropout < 1.0, f'dropout={self.dropout} must be in [0, 1).')
    problem = parametrization.config_problem(self.parametrization, self.base_width, self.d_model,
                                             self.num_heads, self.base_head_dim)
    check(problem is None, problem)
    check(self.attention_impl in ('',) + attention.BACKENDS,
          f'attention_impl={self.attention_impl!r}; choose one of {attention.BACKENDS}, or leave it '
          "'' to pick one where the run is set up.")
    check(self.causal or self.attention_impl in ('',) + attention.BIDIRECTIONAL_BACKENDS,
          f'attention_impl={self.attention_impl!r} computes causal attention only; with '
          f'causal=False choose one of {attention.BIDIRECTIONAL_BACKENDS}, or leave it empty.')
    problem = self.peft.model_problem(self.mlp)
    check(problem is None, problem)

  @classmethod
  def from_config(cls, model_config: ml_collections.ConfigDict | dict[str, Any]) -> GPTConfig:
    values = dict(model_config)
    known = {f.name for f in dataclasses.fields(cls)} - {'peft'}  # from `finetune` (from_run_config)
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f'Unknown model config fields {unknown}; known fields are {sorted(known)}.')
    return cls(**values)

  @classmethod
  def from_run_config(cls, config: ml_collections.ConfigDict) -> GPTConfig:
    """The model of a whole run config, checked against the sequences its data will feed it and
    its objective; under MLM the vocabulary holds one more id, `[MASK]` (`gptjax/data/masking.py`).
    A `finetune` section, where the config has one, sets the fine-tuning method
    (`gptjax/model/peft.py`)."""
    peft = PeftConfig.from_config(config.finetune) if 'finetune' in config else PeftConfig()
    offset = peft.position_offset  # prefix or prompt slots in front of every sequence
    if (config.data.seq_len + offset > config.model.max_seq_len
        and config.model.position == 'learned'):
      slots = f' + {offset} {peft.method} slots' if offset else ''
      raise ValueError(f'data.seq_len={config.data.seq_len}{slots} exceeds model.max_seq_len='
                       f'{config.model.max_seq_len}, the size of the learned position table; raise '
                       'model.max_seq_len or shorten data.seq_len.')
    cfg = dataclasses.replace(cls.from_config(config.model), peft=peft)
    if config.train.objective == 'mlm':
      # One more input id than the data has: `[MASK]`, one past the data's vocabulary.
      cfg = dataclasses.replace(cfg, vocab_size=cfg.vocab_size + 1)
    return cfg

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def mlp_hidden(self) -> int:
    if self.mlp_dim:
      return self.mlp_dim
    if self.mlp == 'swiglu':  # keeps the parameter count of a 4*D GELU MLP, rounded up to 64
      return 64 * math.ceil(8 * self.d_model / 3 / 64)
    return 4 * self.d_model

  @property
  def width_mult(self) -> float:
    return parametrization.width_mult(self.parametrization, self.d_model, self.base_width)

  @property
  def attention_mult(self) -> float:
    """The factor on the attention scores beyond 1/sqrt(head_dim): muP's 1/head_dim scaling
    relative to the proxy's head_dim, 1 under SP or wherever head_dim does not grow."""
    base = parametrization.base_head_dim(self.base_width, self.num_heads, self.base_head_dim)
    return parametrization.attention_multiplier(self.parametrization, self.head_dim, base)

  @property
  def compute_dtype(self) -> jnp.dtype:
    return DTYPES[self.dtype]

  @property
  def weights_dtype(self) -> jnp.dtype:
    return DTYPES[self.param_dtype]


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the `model.` (or `finetune.` method) field and the fix: the shapes,
  and a learned position table long enough for the sequences the data feeds it."""
  GPTConfig.from_run_config(config)
