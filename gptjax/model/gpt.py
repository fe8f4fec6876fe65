"""GPT decoder in flax.linen, with logical axis names on every parameter and main activation.

The model names only logical axes ('vocab', 'embed', 'heads', ...); `gptjax/parallel/sharding.py`
maps them to a device mesh through the rules in the config, so the same module runs unsharded on one
CPU or split over a pod without changes here. `config.peft` adds a fine-tuning method's parameters
(LoRA, adapters, a prefix or a prompt) through the hooks of `gptjax/model/peft_layers.py`; with its
default the model is the plain one, parameter for parameter.

Shape legend used in names and comments throughout the package:
  B batch, T query length, S key/value length (the KV cache in decoding), D d_model,
  N query heads, K key/value heads, G = N // K query heads per key/value head, H head dim,
  F MLP hidden width, V vocabulary, L layers.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from gptjax.model import attention, parametrization, peft_layers
from gptjax.model.config import GPTConfig

Array = jax.Array

def _init(cfg: GPTConfig, std: float, names: tuple[str, ...]) -> Callable:
  """Normal init at `std` times the parameter class's width multiplier (1 under SP)."""
  std = std * parametrization.init_multiplier(names, cfg.width_mult)
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), names)


def _zeros(names: tuple[str | None, ...]) -> Callable:
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _ones(names: tuple[str | None, ...]) -> Callable:
  return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def sinusoidal_positions(positions_BxT: Array, d_model: int) -> Array:
  """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...), interleaved as in the
  paper."""
  inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model))  # [D/2]
  angles_BxTxD2 = positions_BxT[..., None].astype(jnp.float32) * inv_freq[None, None, :]
  pe_BxTxD2x2 = jnp.stack([jnp.sin(angles_BxTxD2), jnp.cos(angles_BxTxD2)], axis=-1)
  return pe_BxTxD2x2.reshape(*positions_BxT.shape, d_model)


def apply_rope(x_BxTxNxH: Array, positions_BxT: Array, theta: float) -> Array:
  """Rotates feature pairs (x[i], x[i + H/2]) by angle pos * theta^(-2i/H) (GPT-NeoX layout)."""
  half = x_BxTxNxH.shape[-1] // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) * 2.0 / (2 * half)))  # [H/2]
  angles_BxTxH2 = positions_BxT[..., None].astype(jnp.float32) * inv_freq[None, None, :]
  angles_BxTx1xH2 = angles_BxTxH2[:, :, None, :]
  sin, cos = jnp.sin(angles_BxTx1xH2), jnp.cos(angles_BxTx1xH2)
  x1, x2 = x_BxTxNxH[..., :half].astype(jnp.float32), x_BxTxNxH[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxTxNxH.dtype)


def _norm(config: GPTConfig, name: str) -> nn.Module:
  common = dict(dtype=config.compute_dtype, param_dtype=config.weights_dtype, name=name,
                scale_init=_ones(('embed',)))
  if config.norm == 'rmsnorm':
    return nn.RMSNorm(epsilon=1e-6, **common)
  return nn.LayerNorm(epsilon=1e-5, use_bias=config.use_bias, bias_init=_zeros(('embed',)), **common)


class _HeadProjection(nn.Module):
  """x [B, T, D] -> [B, T, heads, H] with a [D, heads, H] kernel.

  Not nn.DenseGeneral: it initialises the kernel through a flattened 2-D shape, which a logical
  partitioning of three axes ('embed', heads, 'head_dim') cannot annotate under a mesh.
  """

  config: GPTConfig
  heads: int
  heads_axis: str

  @nn.compact
  def __call__(self, x_BxTxD: Array) -> Array:
    cfg = self.config
    names = ('embed', self.heads_axis, 'head_dim')
    kernel_DxNxH = self.param('kernel', _init(cfg, cfg.init_std, names),
                              (cfg.d_model, self.heads, cfg.head_dim), cfg.weights_dtype)
    y_BxTxNxH = jnp.einsum('btd,dnh->btnh', x_BxTxD.astype(cfg.compute_dtype),
                           kernel_DxNxH.astype(cfg.compute_dtype))
    if cfg.use_bias:
      bias_NxH = self.param('bias', _zeros((self.heads_axis, 'head_dim')), (self.heads, cfg.head_dim),
                            cfg.weights_dtype)
      y_BxTxNxH = y_BxTxNxH + bias_NxH.astype(cfg.compute_dtype)[None, None]
    return y_BxTxNxH


class CausalSelfAttention(nn.Module):
  """Multi-head (or grouped-query) causal attention, or bidirectional where `config.causal` is off.

  Unpadded training and scoring run `config.attention_impl`'s backend of `gptjax.model.attention`;
  padded batches and decoding, which need an explicit mask, run `attention.masked_attention`.

  With `decode=True` the keys and values live in a 'cache' collection sized by the sequence the
  module was initialised with; each call writes its T new positions at `cache_index` and attends to
  every filled slot up to its own, so a prompt can be prefilled in one call and then extended a
  token at a time.

  Under prefix tuning (and prompt tuning in decoding) P keys and values that every query sees
  stand in front of the layer's own (`peft_layers.attention_prefix`); attention then runs
  `masked_attention`, since the fused causal backends know no prefix.
  """

  config: GPTConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x_BxTxD: Array, positions_BxT: Array, kv_mask_BxS: Array | None) -> Array:
    cfg = self.config
    n, k, h = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    q_BxTxNxH = peft_layers.add_lora(cfg, 'query', x_BxTxD,
                                     _HeadProjection(cfg, n, 'heads', name='query')(x_BxTxD))
    k_BxTxKxH = peft_layers.add_lora(cfg, 'key', x_BxTxD,
                                     _HeadProjection(cfg, k, 'kv_heads', name='key')(x_BxTxD))
    v_BxTxKxH = peft_layers.add_lora(cfg, 'value', x_BxTxD,
                                     _HeadProjection(cfg, k, 'kv_heads', name='value')(x_BxTxD))
    if cfg.position == 'rope':
      q_BxTxNxH = apply_rope(q_BxTxNxH, positions_BxT, cfg.rope_theta)
      k_BxTxKxH = apply_rope(k_BxTxKxH, positions_BxT, cfg.rope_theta)
    if cfg.attention_mult != 1.0:  # muP: scores scale as 1/head_dim (model/parametrization.py)
      q_BxTxNxH = q_BxTxNxH * cfg.attention_mult
    q_BxTxNxH = nn.with_logical_constraint(q_BxTxNxH, attention.ACTIVATION_AXES)

    if self.decode and not cfg.causal:
      raise ValueError('A non-causal model (model.causal=False) cannot decode: each position '
                       'attends to tokens that are not generated yet.')
    prefix, k_BxSxKxH, v_BxSxKxH = peft_layers.attention_prefix(self, cfg, self.decode, k_BxTxKxH,
                                                                v_BxTxKxH)
    mask_Bx1xTxS = None  # None: plain causal (or bidirectional) attention, on any backend
    if self.decode:
      k_BxSxKxH, v_BxSxKxH, mask_Bx1xTxS = self._update_cache(k_BxSxKxH, v_BxSxKxH, kv_mask_BxS)
      if mask_Bx1xTxS is None:  # initialisation pass: the cache is only being created
        mask_Bx1xTxS = jnp.tril(jnp.ones((k_BxSxKxH.shape[1],) * 2, bool))[None, None]
    elif kv_mask_BxS is not None or prefix is not None:
      t = x_BxTxD.shape[1]
      mask_Bx1xTxS = jnp.tril(jnp.ones((t, t), bool)) if cfg.causal else jnp.ones((t, t), bool)
      mask_Bx1xTxS = mask_Bx1xTxS[None, None]
      if kv_mask_BxS is not None:
        # A padded query still sees itself, so its softmax row is never empty (no NaN).
        mask_Bx1xTxS = ((mask_Bx1xTxS & kv_mask_BxS[:, None, None, :])
                        | jnp.eye(t, dtype=bool)[None, None])
    if prefix is not None:
      k_BxSxKxH = jnp.concatenate([prefix[0], k_BxSxKxH], axis=1)
      v_BxSxKxH = jnp.concatenate([prefix[1], v_BxSxKxH], axis=1)
      mask_Bx1xTxS = peft_layers.mask_with_prefix(mask_Bx1xTxS, prefix[0].shape[1],
                                                  virtual_queries=cfg.peft.method == 'prompt')
    if mask_Bx1xTxS is not None:
      out_BxTxNxH = attention.masked_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_Bx1xTxS,
                                               impl=cfg.attention_impl)
    elif cfg.causal:
      out_BxTxNxH = attention.causal_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH,
                                               impl=cfg.attention_impl)
    else:
      out_BxTxNxH = attention.bidirectional_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH,
                                                      impl=cfg.attention_impl)

    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    kernel_NxHxD = self.param('out_kernel', _init(cfg, out_std, ('heads', 'head_dim', 'embed')),
                              (n, h, cfg.d_model), cfg.weights_dtype)
    y_BxTxD = jnp.einsum('btnh,nhd->btd', out_BxTxNxH, kernel_NxHxD.astype(cfg.compute_dtype))
    y_BxTxD = peft_layers.add_lora(cfg, 'out', out_BxTxNxH, y_BxTxD)
    if cfg.use_bias:
      bias_D = self.param('out_bias', _zeros(('embed',)), (cfg.d_model,), cfg.weights_dtype)
      y_BxTxD = y_BxTxD + bias_D.astype(cfg.compute_dtype)[None, None]
    return y_BxTxD

  def _update_cache(self, k_BxTxKxH: Array, v_BxTxKxH: Array, kv_mask_BxS: Array | None):
    """Writes this call's keys/values into the cache; returns the whole cache and its mask."""
    initialised = self.has_variable('cache', 'cached_key')
    cached_k = self.variable('cache', 'cached_key', jnp.zeros, k_BxTxKxH.shape, k_BxTxKxH.dtype)
    cached_v = self.variable('cache', 'cached_value', jnp.zeros, v_BxTxKxH.shape, v_BxTxKxH.dtype)
    index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    if not initialised:
      return k_BxTxKxH, v_BxTxKxH, None
    b, t = k_BxTxKxH.shape[:2]
    s = cached_k.value.shape[1]
    start = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BxTxKxH, (0, start, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BxTxKxH, (0, start, 0, 0))
    index.value = start + t
    query_slot_T = start + jnp.arange(t)
    key_slot_S = jnp.arange(s)
    causal_TxS = key_slot_S[None, :] <= query_slot_T[:, None]
    valid_BxS = jnp.ones((b, s), bool) if kv_mask_BxS is None else kv_mask_BxS.astype(bool)
    own_slot_TxS = key_slot_S[None, :] == query_slot_T[:, None]
    mask_BxTxS = (causal_TxS[None] & valid_BxS[:, None, :]) | own_slot_TxS[None]
    return cached_k.value, cached_v.value, mask_BxTxS[:, None]


class MLP(nn.Module):
  config: GPTConfig

  @nn.compact
  def __call__(self, x_BxTxD: Array) -> Array:
    cfg = self.config
    dense = lambda features, names, std, name: nn.Dense(
        features, use_bias=cfg.use_bias, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
        kernel_init=_init(cfg, std, names), bias_init=_zeros(names[-1:]), name=name)
    f = cfg.mlp_hidden
    project = lambda name: peft_layers.add_lora(
        cfg, name, x_BxTxD, dense(f, ('embed', 'mlp'), cfg.init_std, name)(x_BxTxD))
    if cfg.mlp == 'swiglu':
      h_BxTxF = nn.silu(project('gate')) * project('up')
    else:
      h_BxTxF = nn.gelu(project('up'), approximate=True)
    h_BxTxF = nn.with_logical_constraint(h_BxTxF, ('batch', 'length', 'act_mlp'))
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    return peft_layers.add_lora(cfg, 'down', h_BxTxF,
                                dense(cfg.d_model, ('mlp', 'embed'), out_std, 'down')(h_BxTxF))


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)); with adapters, each
  branch passes through its adapter before it joins the residual stream."""

  config: GPTConfig
  decode: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxTxD: Array, positions_BxT: Array, kv_mask_BxS: Array | None) -> Array:
    cfg = self.config
    drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
    attn = CausalSelfAttention(cfg, decode=self.decode, name='attn')
    attn_BxTxD = attn(_norm(cfg, 'attn_norm')(x_BxTxD), positions_BxT, kv_mask_BxS)
    x_BxTxD = x_BxTxD + drop(peft_layers.adapt(cfg, 'attn_adapter', attn_BxTxD))
    mlp_BxTxD = MLP(cfg, name='mlp')(_norm(cfg, 'mlp_norm')(x_BxTxD))
    x_BxTxD = x_BxTxD + drop(peft_layers.adapt(cfg, 'mlp_adapter', mlp_BxTxD))
    return nn.with_logical_constraint(x_BxTxD, ('batch', 'length', 'act_embed'))


class _ScannedBlock(Block):
  """Block with the (carry, x) -> (carry, out) signature that nn.scan needs."""

  @nn.compact
  def __call__(self, x_BxTxD: Array, positions_BxT: Array, kv_mask_BxS: Array | None):
    return super().__call__(x_BxTxD, positions_BxT, kv_mask_BxS), None


def _remat_policy(remat: str):
  if remat == 'dots':
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  return None  # 'full': save nothing inside the block, recompute it all in the backward pass


class GPT(nn.Module):
  """Token ids [B, T] -> logits [B, T, V] in float32.

  With `return_hidden` the call stops before the readout and returns the final-normed hidden
  states [B, T, D] in the compute dtype, for a head other than next-token prediction to read
  (the scalar head of `gptjax/preferences/reward_model.py`).

  Under prefix and prompt tuning the P slots in front take positions 0..P-1 and the tokens'
  positions (given, or 0..T-1) move up by P; a prompt's P rows are dropped before the final norm,
  so the output covers the T tokens alone.
  """

  config: GPTConfig
  decode: bool = False

  @nn.compact
  def __call__(self, tokens_BxT: Array, *, positions_BxT: Array | None = None,
               kv_mask_BxS: Array | None = None, deterministic: bool = True,
               return_hidden: bool = False) -> Array:
    cfg = self.config
    b, t = tokens_BxT.shape
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype,
                     param_dtype=cfg.weights_dtype,
                     embedding_init=_init(cfg, cfg.init_std, ('vocab', 'embed')), name='embed')
    x_BxTxD, positions_BxT, kv_mask_BxS = peft_layers.prepend_prompt(
        self, cfg, self.decode, embed(tokens_BxT), positions_BxT, kv_mask_BxS)
    if cfg.position == 'learned':
      table_PxD = self.param('pos_embed', _init(cfg, cfg.init_std, ('length', 'embed')),
                             (cfg.max_seq_len, cfg.d_model), cfg.weights_dtype)
      x_BxTxD = x_BxTxD + jnp.take(table_PxD, positions_BxT, axis=0).astype(cfg.compute_dtype)
    elif cfg.position == 'sinusoidal':
      x_BxTxD = x_BxTxD + sinusoidal_positions(positions_BxT, cfg.d_model).astype(cfg.compute_dtype)
    x_BxTxD = nn.Dropout(cfg.dropout, deterministic=deterministic)(x_BxTxD)
    x_BxTxD = nn.with_logical_constraint(x_BxTxD, ('batch', 'length', 'act_embed'))

    block_cls = _ScannedBlock if cfg.scan_layers else Block
    if cfg.remat != 'none':
      block_cls = nn.remat(block_cls, policy=_remat_policy(cfg.remat), prevent_cse=not cfg.scan_layers)
    block_kwargs = dict(config=cfg, decode=self.decode, deterministic=deterministic)
    if cfg.scan_layers:
      stack = nn.scan(block_cls, variable_axes={'params': 0, 'cache': 0},
                      split_rngs={'params': True, 'dropout': True},
                      in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: 'layers'})
      x_BxTxD, _ = stack(name='blocks', **block_kwargs)(x_BxTxD, positions_BxT, kv_mask_BxS)
    else:
      for layer in range(cfg.num_layers):
        x_BxTxD = block_cls(name=f'block_{layer}', **block_kwargs)(x_BxTxD, positions_BxT, kv_mask_BxS)

    x_BxTxD = _norm(cfg, 'final_norm')(peft_layers.drop_prompt(cfg, x_BxTxD))
    if return_hidden:
      return x_BxTxD
    if cfg.tie_embeddings:
      logits_BxTxV = embed.attend(x_BxTxD)
    else:
      logits_BxTxV = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype,
                              param_dtype=cfg.weights_dtype,
                              kernel_init=_init(cfg, cfg.init_std, ('embed', 'vocab')),
                              name='head')(x_BxTxD)
    if cfg.width_mult != 1.0:  # muP's readout multiplier (gptjax/model/parametrization.py)
      logits_BxTxV = logits_BxTxV * parametrization.readout_multiplier(cfg.width_mult)
    logits_BxTxV = nn.with_logical_constraint(logits_BxTxV, ('batch', 'length', 'act_vocab'))
    return logits_BxTxV.astype(jnp.float32)
