"""The fine-tuning methods' modules and the hooks `gptjax/model/gpt.py` calls them through.

Each hook leaves its input unchanged unless `GPTConfig.peft` selects its method, so the plain
model's parameters and computation stay exactly as they are. The hooks create their modules and
parameters in whichever module calls them (linen binds a submodule to the module whose compact
method is running), so a LoRA of the query lives at `attn/query_lora` next to `attn/query`.

Letters as in `gptjax/model/gpt.py` and `gptjax/model/peft.py`; I and O stand for a wrapped kernel's
input and output dimensions (one or two of them: [D] -> [N, H] for the query, [N, H] -> [D] for
'out').
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

from gptjax.model import peft as peft_lib

if TYPE_CHECKING:
  from gptjax.model.config import GPTConfig

Array = jax.Array


def _param_init(init: nn.initializers.Initializer, names: tuple[str | None, ...]):
  """An initialiser with logical axis names; None (the rank, width or length axis of a method's
  own parameters) stays unsharded, so these parameters need no mesh rule of their own."""
  return nn.with_logical_partitioning(init, names)


class LoRA(nn.Module):
  """x [B, T, *I] -> (alpha/r)·x·A·B [B, T, *O]: the low-rank update of one wrapped projection.

  A [*I, r] ~ normal(1/sqrt(fan_in)) and B [r, *O] = 0, so the update is exactly zero at init.
  """

  config: GPTConfig
  target: str

  @nn.compact
  def __call__(self, x_BxTxI: Array) -> Array:
    cfg, peft = self.config, self.config.peft
    dims = peft_lib.lora_dims(cfg, self.target)
    r = peft.lora_rank
    std = 1.0 / math.sqrt(math.prod(dims.in_shape))
    a_IxR = self.param('lora_a', _param_init(nn.initializers.normal(std), dims.in_axes + (None,)),
                       dims.in_shape + (r,), cfg.weights_dtype)
    b_RxO = self.param('lora_b', _param_init(nn.initializers.zeros_init(), (None,) + dims.out_axes),
                       (r,) + dims.out_shape, cfg.weights_dtype)
    xa_BxTxR = jnp.tensordot(x_BxTxI.astype(cfg.compute_dtype), a_IxR.astype(cfg.compute_dtype),
                             axes=len(dims.in_shape))
    y_BxTxO = jnp.tensordot(xa_BxTxR, b_RxO.astype(cfg.compute_dtype), axes=1)
    return y_BxTxO * (peft.lora_alpha / r)


def add_lora(cfg: GPTConfig, target: str, x_BxTxI: Array, y_BxTxO: Array) -> Array:
  """y + the LoRA update of x where the config wraps `target`; y itself otherwise."""
  if cfg.peft.method != 'lora' or target not in cfg.peft.lora_targets:
    return y_BxTxO
  return y_BxTxO + LoRA(cfg, target, name=f'{target}_lora')(x_BxTxI)


class Adapter(nn.Module):
  """y [B, T, D] -> y + up(gelu(down(y))) through a bottleneck of width a.

  down [D, a] ~ normal(init_std); up [a, D] and both biases start at 0, so at init the adapter
  returns y exactly.
  """

  config: GPTConfig

  @nn.compact
  def __call__(self, y_BxTxD: Array) -> Array:
    cfg = self.config
    d, a, dtype = cfg.d_model, cfg.peft.adapter_dim, cfg.compute_dtype
    zeros = nn.initializers.zeros_init()
    down_DxA = self.param('adapter_down', _param_init(nn.initializers.normal(cfg.init_std),
                                                      ('embed', None)), (d, a), cfg.weights_dtype)
    down_bias_A = self.param('adapter_down_bias', _param_init(zeros, (None,)), (a,),
                             cfg.weights_dtype)
    up_AxD = self.param('adapter_up', _param_init(zeros, (None, 'embed')), (a, d), cfg.weights_dtype)
    up_bias_D = self.param('adapter_up_bias', _param_init(zeros, ('embed',)), (d,),
                           cfg.weights_dtype)
    h_BxTxA = nn.gelu(jnp.einsum('btd,da->bta', y_BxTxD, down_DxA.astype(dtype))
                      + down_bias_A.astype(dtype)[None, None], approximate=True)
    return y_BxTxD + (jnp.einsum('bta,ad->btd', h_BxTxA, up_AxD.astype(dtype))
                      + up_bias_D.astype(dtype)[None, None])


def adapt(cfg: GPTConfig, name: str, y_BxTxD: Array) -> Array:
  """A block's branch output through its adapter where the config asks for adapters."""
  return Adapter(cfg, name=name)(y_BxTxD) if cfg.peft.method == 'adapter' else y_BxTxD


def attention_prefix(module: nn.Module, cfg: GPTConfig, decode: bool, k_BxTxKxH: Array,
                     v_BxTxKxH: Array) -> tuple[tuple[Array, Array] | None, Array, Array]:
  """(prefix, keys, values): the [B, P, K, H] keys and values every query of the attention sees in
  front of its own, or None, and the layer's keys and values without them.

  Prefix tuning's are parameters of `module` [P, K, H] ~ normal(init_std), learned as they are
  (no position is applied). Prompt tuning's in decoding are the prompt's own: the model runs the P
  virtual tokens in front of every call's tokens (`prepend_prompt`), and their keys and values
  serve as a prefix instead of being written to the cache, which stays sized for real tokens.
  """
  b = k_BxTxKxH.shape[0]
  if cfg.peft.method == 'prefix':
    shape = (cfg.peft.prefix_len, cfg.kv_heads, cfg.head_dim)
    init = _param_init(nn.initializers.normal(cfg.init_std), (None, 'kv_heads', 'head_dim'))
    key_PxKxH = module.param('prefix_key', init, shape, cfg.weights_dtype)
    value_PxKxH = module.param('prefix_value', init, shape, cfg.weights_dtype)
    prefix = tuple(jnp.broadcast_to(x.astype(k_BxTxKxH.dtype)[None], (b,) + shape)
                   for x in (key_PxKxH, value_PxKxH))
    return prefix, k_BxTxKxH, v_BxTxKxH
  if cfg.peft.method == 'prompt' and decode:
    p = cfg.peft.prompt_len
    return ((k_BxTxKxH[:, :p], v_BxTxKxH[:, :p]), k_BxTxKxH[:, p:], v_BxTxKxH[:, p:])
  return None, k_BxTxKxH, v_BxTxKxH


def mask_with_prefix(mask_Bx1xTxS: Array, p: int, virtual_queries: bool) -> Array:
  """The mask over [P prefix slots, S keys]: every query sees every prefix slot.

  With `virtual_queries` (prompt tuning in decoding) P query rows for the virtual tokens come
  first; they see the prefix causally and none of the S keys, as in the full forward pass.
  """
  b, _, t, s = mask_Bx1xTxS.shape
  mask_Bx1xTxPS = jnp.concatenate([jnp.ones((b, 1, t, p), bool), mask_Bx1xTxS], axis=-1)
  if not virtual_queries:
    return mask_Bx1xTxPS
  virtual_PxPS = jnp.concatenate([jnp.tril(jnp.ones((p, p), bool)), jnp.zeros((p, s), bool)], 1)
  virtual_Bx1xPxPS = jnp.broadcast_to(virtual_PxPS[None, None], (b, 1, p, p + s))
  return jnp.concatenate([virtual_Bx1xPxPS, mask_Bx1xTxPS], axis=2)


def prepend_prompt(module: nn.Module, cfg: GPTConfig, decode: bool, x_BxTxD: Array,
                   positions_BxT: Array, kv_mask_BxS: Array | None):
  """(x, positions, kv_mask) with the method's P slots in front of the tokens' positions.

  Prompt tuning puts its P embeddings [P, D] ~ normal(init_std) in front of the tokens, at
  positions 0..P-1; prefix tuning's slots are the prefix itself. Either way the tokens' positions
  move up by P. Outside decoding the padding mask grows by the P always-visible virtual tokens;
  in decoding it covers the cache, which holds real tokens only.
  """
  offset = cfg.peft.position_offset
  if not offset:
    return x_BxTxD, positions_BxT, kv_mask_BxS
  b, t, _ = x_BxTxD.shape
  if not decode and cfg.position == 'learned' and offset + t > cfg.max_seq_len:
    raise ValueError(f'{offset} {cfg.peft.method} slots + {t} tokens exceed the learned position '
                     f'table (max_seq_len={cfg.max_seq_len}); feed at most '
                     f'{cfg.max_seq_len - offset} tokens or raise model.max_seq_len.')
  positions_BxT = positions_BxT + offset
  if cfg.peft.method != 'prompt':
    return x_BxTxD, positions_BxT, kv_mask_BxS
  init = _param_init(nn.initializers.normal(cfg.init_std), (None, 'embed'))
  prompt_PxD = module.param('prompt_embed', init, (offset, cfg.d_model), cfg.weights_dtype)
  prompt_BxPxD = jnp.broadcast_to(prompt_PxD.astype(x_BxTxD.dtype)[None], (b, offset, cfg.d_model))
  virtual_BxP = jnp.broadcast_to(jnp.arange(offset, dtype=positions_BxT.dtype)[None], (b, offset))
  if kv_mask_BxS is not None and not decode:
    kv_mask_BxS = jnp.concatenate([jnp.ones((b, offset), bool), kv_mask_BxS.astype(bool)], axis=1)
  return (jnp.concatenate([prompt_BxPxD, x_BxTxD], axis=1),
          jnp.concatenate([virtual_BxP, positions_BxT], axis=1), kv_mask_BxS)


def drop_prompt(cfg: GPTConfig, x_BxTxD: Array) -> Array:
  """The hidden states of the real tokens: prompt tuning's P virtual rows removed."""
  return x_BxTxD[:, cfg.peft.prompt_len:] if cfg.peft.method == 'prompt' else x_BxTxD
