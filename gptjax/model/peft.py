"""Parameter-efficient fine-tuning: the methods, the parameters each one trains, and their count.

A method adapts a pretrained GPT while the GPT's own weights stay frozen ('full' trains them all):
  'lora'     W + (alpha/r)·A·B on chosen projections, B = 0 at init (Hu et al. 2021)
  'adapter'  a D -> a -> D bottleneck with a residual after each attention and MLP (Houlsby et al.
             2019), its up-projection 0 at init
  'prefix'   learned keys and values that every query of every layer sees first (Li & Liang 2021)
  'prompt'   learned input embeddings in front of the tokens (Lester et al. 2021)
`GPTConfig.peft` chooses one; the modules are in `gptjax/model/peft_layers.py`. Every parameter a
method adds is named `<method>_<part>` (`lora_a`, `adapter_up`, `prefix_key`, `prompt_embed`), and
that name alone decides what `split_trainable` trains. docs/finetuning.md states each method's
formulas.

Letters as in `gptjax/model/gpt.py`, plus r the LoRA rank, a the adapter width and P the prefix or
prompt length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from gptjax.model.peft_config import METHODS

if TYPE_CHECKING:
  from gptjax.model.config import GPTConfig

def trains(method: str, path: tuple[str, ...]) -> bool:
  """Whether the parameter at this path of dict keys is trained under `method`."""
  return method == 'full' or path[-1].startswith(f'{method}_')


def split_trainable(params: Mapping[str, Any], method: str) -> tuple[dict, dict]:
  """(trainable, frozen): the leaves `method` trains and the rest, as two disjoint nested dicts.

  Leaves may be arrays, `jax.ShapeDtypeStruct`s or flax `LogicallyPartitioned` boxes; stacked
  (scanned) leaves move whole. `combine` puts the two back together.
  """
  if method not in METHODS:
    raise ValueError(f'method={method!r}; choose one of {METHODS}.')
  if method == 'full':
    return dict(params), {}

  def split(tree: Mapping[str, Any], path: tuple[str, ...]) -> tuple[dict, dict]:
    trainable, frozen = {}, {}
    for key, value in tree.items():
      if isinstance(value, Mapping) and value:
        trainable_part, frozen_part = split(value, path + (key,))
        if trainable_part:
          trainable[key] = trainable_part
        if frozen_part:
          frozen[key] = frozen_part
      elif trains(method, path + (key,)):
        trainable[key] = value
      else:
        frozen[key] = value
    return trainable, frozen

  return split(params, ())


def combine(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict:
  """The whole tree again from `split_trainable`'s two parts (traced values pass through)."""
  out = dict(frozen)
  for key, value in trainable.items():
    if key not in out:
      out[key] = value
    elif isinstance(value, Mapping) and isinstance(out[key], Mapping):
      out[key] = combine(value, out[key])
    else:
      raise ValueError(f'{key!r} is a leaf of both the trainable and the frozen tree.')
  return out


class LoraDims(NamedTuple):
  """A wrapped projection's kernel [*in_shape, *out_shape] and the logical axes of each side."""

  in_shape: tuple[int, ...]
  in_axes: tuple[str, ...]
  out_shape: tuple[int, ...]
  out_axes: tuple[str, ...]


def lora_dims(model_cfg: GPTConfig, target: str) -> LoraDims:
  d, n, k, h, f = (model_cfg.d_model, model_cfg.num_heads, model_cfg.kv_heads, model_cfg.head_dim,
                   model_cfg.mlp_hidden)
  return {
      'query': LoraDims((d,), ('embed',), (n, h), ('heads', 'head_dim')),
      'key': LoraDims((d,), ('embed',), (k, h), ('kv_heads', 'head_dim')),
      'value': LoraDims((d,), ('embed',), (k, h), ('kv_heads', 'head_dim')),
      'out': LoraDims((n, h), ('heads', 'head_dim'), (d,), ('embed',)),
      'up': LoraDims((d,), ('embed',), (f,), ('mlp',)),
      'gate': LoraDims((d,), ('embed',), (f,), ('mlp',)),
      'down': LoraDims((f,), ('mlp',), (d,), ('embed',)),
  }[target]


# Where each LoRA target's frozen kernel sits, from the dict that holds its `<target>_lora`.
_KERNEL_PATHS = {'query': ('query', 'kernel'), 'key': ('key', 'kernel'),
                 'value': ('value', 'kernel'), 'out': ('out_kernel',), 'up': ('up', 'kernel'),
                 'gate': ('gate', 'kernel'), 'down': ('down', 'kernel')}


def _fold(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
  """kernel + scale·A·B for a kernel [..., *in, *out], A [..., *in, r] and B [..., r, *out], where
  '...' is the stacked layers axis under nn.scan (or nothing)."""
  lead = a.ndim + b.ndim - 2 - kernel.ndim
  r = a.shape[-1]
  a_LxIxR = a.reshape(a.shape[:lead] + (-1, r)).astype(jnp.float32)
  b_LxRxO = b.reshape(b.shape[:lead] + (r, -1)).astype(jnp.float32)
  delta = jnp.matmul(a_LxIxR, b_LxRxO, precision=jax.lax.Precision.HIGHEST).reshape(kernel.shape)
  return (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)


def merge_lora(params: Mapping[str, Any], model_cfg: GPTConfig) -> dict:
  """Plain-model parameters: each wrapped kernel becomes W + (alpha/r)·A·B and the LoRA leaves go,
  so that the model with `peft=PeftConfig()` loads them and computes the same function."""
  peft = model_cfg.peft
  if peft.method != 'lora':
    raise ValueError(f"merge_lora needs a LoRA model, got finetune.method={peft.method!r}.")
  scale = peft.lora_alpha / peft.lora_rank

  def merge(tree: Mapping[str, Any]) -> dict:
    out = {key: merge(value) if isinstance(value, Mapping) else value
           for key, value in tree.items() if not key.endswith('_lora')}
    for target, path in _KERNEL_PATHS.items():
      if f'{target}_lora' in tree:
        lora = tree[f'{target}_lora']
        *parents, leaf = path
        holder = out
        for key in parents:
          holder = holder[key]
        holder[leaf] = _fold(holder[leaf], lora['lora_a'], lora['lora_b'], scale)
    return out

  return merge(params)


def prefix_from_cache(params: Mapping[str, Any], cache: Mapping[str, Any]) -> dict:
  """`params` with every layer's prefix set to the keys and values in a one-row decoding cache of
  P slots: the base model's own keys and values for P token ids, e.g. from
  `decoding.prefill(base_params, base_cfg, ids_1xP, mask_1xP, max_new_tokens=1)`.

  Li & Liang find this initialisation steadier than a random one. The model then computes, for
  any tokens, the base model's logits on the P ids followed by those tokens (`docs/finetuning.md`).
  """
  def replace(tree: Mapping[str, Any], cached: Mapping[str, Any]) -> dict:
    out = {}
    for key, value in tree.items():
      if key in ('prefix_key', 'prefix_value'):
        slots = jnp.squeeze(cached['cached_' + key.removeprefix('prefix_')], axis=-4)  # one row
        if slots.shape != value.shape:
          raise ValueError(f'The cache holds keys of shape {slots.shape} (one row), the prefix '
                           f'needs {value.shape}; prefill exactly prefix_len tokens.')
        out[key] = slots.astype(value.dtype)
      else:  # the cache holds the attention layers only
        out[key] = replace(value, cached.get(key, {})) if isinstance(value, Mapping) else value
    return out

  return replace(params, cache)


def prompt_from_tokens(params: Mapping[str, Any], token_ids: Any) -> dict:
  """`params` with the prompt set to the token embeddings of P ids (Lester et al.'s vocabulary
  initialisation): the model then computes the base model's logits on those ids followed by the
  tokens it is given."""
  table_VxD = params['embed']['embedding']
  ids_P = jnp.asarray(token_ids, jnp.int32)
  if ids_P.shape != params['prompt_embed'].shape[:1]:
    raise ValueError(f'prompt_from_tokens got {ids_P.shape[0]} ids for a prompt of '
                     f'{params["prompt_embed"].shape[0]} embeddings (finetune.prompt_len).')
  return {**params, 'prompt_embed': table_VxD[ids_P].astype(params['prompt_embed'].dtype)}
