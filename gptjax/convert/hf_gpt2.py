"""GPT-2 in the Hugging Face layout <-> gptjax's model config and parameters, in NumPy.

`transformers.GPT2LMHeadModel` and `gptjax.model.GPT` with learned positions, LayerNorm, a tanh
GELU MLP, biases and a tied head compute the same function; only the storage differs:
  - HF's linear layers are `Conv1D`s, y = x @ W + b with W [in, out]: the same orientation as a
    flax kernel, so nothing is transposed;
  - HF fuses the query, key and value projections into one `c_attn` [D, 3D] whose columns are
    q | k | v, each D = N*H wide with head n in columns n*H .. n*H + H - 1; gptjax keeps them as
    three [D, N, H] kernels, and the attention output projection `c_proj` [N*H, D] as [N, H, D];
  - HF names layer i `h.{i}.`; gptjax names it `block_{i}`, or stacks all layers on a leading
    [L] axis under `blocks` when `scan_layers` is on;
  - the output layer is the token embedding: `lm_head.weight`, where a checkpoint stores it, is
    the embedding again.
Checkpoints from `GPT2LMHeadModel` prefix every name with `transformer.`, the original release
(`GPT2Model`) does not; older ones also store the causal-mask buffers `attn.bias` and
`attn.masked_bias`, which are not parameters. Both are accepted.

Shape letters follow `gptjax/model/gpt.py`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import traverse_util

from gptjax.model.config import GPTConfig

# gptjax.model's LayerNorm epsilon; a GPT-2 config with another one computes a different function.
LAYER_NORM_EPSILON = 1e-5
# HF's names for the tanh approximation of GELU that gptjax's MLP uses ('gelu' is the exact erf).
TANH_GELUS = ('gelu_new', 'gelu_pytorch_tanh')
_PREFIX = 'transformer.'
_BUFFER_SUFFIXES = ('.attn.bias', '.attn.masked_bias')  # causal masks, stored by older releases
_HEAD = 'lm_head.weight'


class ConversionError(ValueError):
  """A checkpoint or run that cannot be converted; the message names the cause and the fix."""


def model_fields(hf_config: dict[str, Any]) -> dict[str, Any]:
  """The `config.model` fields that a GPT-2 `config.json` determines.

  Training choices (dropout, dtypes, scan_layers, remat, the attention backend) are not among
  them: they come from the run's config. Raises ConversionError for a config that is not GPT-2
  or asks for a variant gptjax does not compute.
  """
  model_type = hf_config.get('model_type')
  if model_type != 'gpt2':
    raise ConversionError(f"config.json has model_type={model_type!r}, not 'gpt2': only GPT-2 "
                          'checkpoints (GPT2LMHeadModel or GPT2Model) convert.')
  get = lambda name, default: hf_config.get(name, default)
  unsupported = [
      (get('activation_function', 'gelu_new') not in TANH_GELUS,
       f"activation_function={get('activation_function', None)!r} (gptjax's MLP is the tanh GELU,"
       f' {TANH_GELUS[0]!r})'),
      (get('layer_norm_epsilon', LAYER_NORM_EPSILON) != LAYER_NORM_EPSILON,
       f"layer_norm_epsilon={get('layer_norm_epsilon', None)} (gptjax's is {LAYER_NORM_EPSILON})"),
      (not get('scale_attn_weights', True), 'scale_attn_weights=false'),
      (get('scale_attn_by_inverse_layer_idx', False), 'scale_attn_by_inverse_layer_idx=true'),
      (get('add_cross_attention', False), 'add_cross_attention=true'),
      (not get('tie_word_embeddings', True), 'tie_word_embeddings=false (GPT-2 ties its head)'),
  ]
  reasons = [reason for bad, reason in unsupported if bad]
  if reasons:
    raise ConversionError(f"config.json's GPT-2 variant is not one gptjax computes: "
                          f"{'; '.join(reasons)}.")
  try:
    d, n_inner = int(hf_config['n_embd']), hf_config.get('n_inner')
    return dict(vocab_size=int(hf_config['vocab_size']), d_model=d,
                num_layers=int(hf_config['n_layer']), num_heads=int(hf_config['n_head']),
                num_kv_heads=0, mlp_dim=0 if n_inner in (None, 4 * d) else int(n_inner),
                max_seq_len=int(hf_config['n_positions']), position='learned', mlp='gelu',
                norm='layernorm', use_bias=True, tie_embeddings=True, parametrization='sp',
                base_width=0)
  except KeyError as error:
    raise ConversionError(f'config.json has no {error.args[0]!r}; a GPT-2 config names vocab_size, '
                          'n_embd, n_layer, n_head and n_positions.') from None


def unexpressible(cfg: GPTConfig) -> list[str]:
  """Why GPT-2 cannot hold a model of `cfg`, one reason (with its fix) per differing choice."""
  checks = [
      (cfg.position == 'learned', f"position={cfg.position!r}: GPT-2 adds a learned position "
       "table (model.position='learned')"),
      (cfg.mlp == 'gelu', f"mlp={cfg.mlp!r}: GPT-2's MLP is one tanh GELU layer (model.mlp='gelu')"),
      (cfg.norm == 'layernorm', f"norm={cfg.norm!r}: GPT-2 normalises with LayerNorm "
       "(model.norm='layernorm')"),
      (cfg.use_bias, 'use_bias=False: every GPT-2 layer has a bias (model.use_bias=True)'),
      (cfg.tie_embeddings, 'tie_embeddings=False: GPT-2 ties its output layer to the token '
       'embedding (model.tie_embeddings=True)'),
      (cfg.kv_heads == cfg.num_heads, f'num_kv_heads={cfg.num_kv_heads}: GPT-2 has a key/value '
       'head per query head (model.num_kv_heads=0)'),
      (cfg.width_mult == cfg.attention_mult == 1.0,
       f'parametrization={cfg.parametrization!r} at d_model={cfg.d_model}, '
       f'base_width={cfg.base_width}: GPT-2 has no muP attention or readout multiplier '
       "(model.parametrization='sp')"),
  ]
  return [reason for ok, reason in checks if not ok]


def hf_config(cfg: GPTConfig, eos_id: int | None) -> dict[str, Any]:
  """The `config.json` of `cfg` as a GPT-2 (`unexpressible(cfg)` must be empty).

  gptjax drops out embeddings and residual branches but never attention probabilities, hence
  attn_pdrop 0. Weights are exported as float32 whatever the run's param_dtype.
  """
  return {
      'model_type': 'gpt2', 'architectures': ['GPT2LMHeadModel'],
      'vocab_size': cfg.vocab_size, 'n_positions': cfg.max_seq_len, 'n_embd': cfg.d_model,
      'n_layer': cfg.num_layers, 'n_head': cfg.num_heads,
      'n_inner': None if cfg.mlp_hidden == 4 * cfg.d_model else cfg.mlp_hidden,
      'activation_function': TANH_GELUS[0], 'layer_norm_epsilon': LAYER_NORM_EPSILON,
      'resid_pdrop': cfg.dropout, 'embd_pdrop': cfg.dropout, 'attn_pdrop': 0.0,
      'initializer_range': cfg.init_std, 'scale_attn_weights': True,
      'scale_attn_by_inverse_layer_idx': False, 'reorder_and_upcast_attn': False,
      'tie_word_embeddings': True, 'bos_token_id': eos_id, 'eos_token_id': eos_id,
      'dtype': 'float32', 'use_cache': True,
  }


def _layer_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
  """HF name (after `h.{i}.`) -> shape of one layer's tensors."""
  d, f = cfg.d_model, cfg.mlp_hidden
  return {'ln_1.weight': (d,), 'ln_1.bias': (d,),
          'attn.c_attn.weight': (d, 3 * d), 'attn.c_attn.bias': (3 * d,),
          'attn.c_proj.weight': (d, d), 'attn.c_proj.bias': (d,),
          'ln_2.weight': (d,), 'ln_2.bias': (d,),
          'mlp.c_fc.weight': (d, f), 'mlp.c_fc.bias': (f,),
          'mlp.c_proj.weight': (f, d), 'mlp.c_proj.bias': (d,)}


def hf_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
  """Every tensor name of a GPT-2 checkpoint of `cfg` (without `transformer.`) and its shape."""
  shapes = {'wte.weight': (cfg.vocab_size, cfg.d_model), 'wpe.weight': (cfg.max_seq_len, cfg.d_model),
            'ln_f.weight': (cfg.d_model,), 'ln_f.bias': (cfg.d_model,)}
  for i in range(cfg.num_layers):
    shapes.update({f'h.{i}.{name}': shape for name, shape in _layer_shapes(cfg).items()})
  return shapes


def _checked(tensors: dict[str, np.ndarray], cfg: GPTConfig) -> dict[str, np.ndarray]:
  """The checkpoint's parameters by their unprefixed names, after checking names and shapes."""
  expected = hf_shapes(cfg)
  found = {}
  for name, tensor in tensors.items():
    plain = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
    if plain == _HEAD or (plain.endswith(_BUFFER_SUFFIXES) and plain not in expected):
      continue  # the tied head repeats wte; mask buffers are not parameters
    if plain not in expected:
      raise ConversionError(f'The checkpoint holds {name!r}, which is not a tensor of a '
                            f'{cfg.num_layers}-layer GPT-2 language model.')
    found[plain] = tensor
  missing = [name for name in expected if name not in found]
  if missing:
    raise ConversionError(f'The checkpoint lacks {len(missing)} tensor(s) that config.json implies, '
                          f'e.g. {missing[:3]}; the files are incomplete or from another model.')
  for name, shape in expected.items():
    if tuple(found[name].shape) != shape:
      raise ConversionError(f'{name!r} has shape {tuple(found[name].shape)} but config.json implies '
                            f'{shape}; the weights and config.json belong to different models.')
  return found


def _layer_to_gptjax(t: dict[str, np.ndarray], cfg: GPTConfig) -> dict[tuple[str, ...], np.ndarray]:
  """One layer's HF tensors (names after `h.{i}.`) -> gptjax's (paths inside a block)."""
  d, n, h = cfg.d_model, cfg.num_heads, cfg.head_dim
  q_DxD, k_DxD, v_DxD = np.split(t['attn.c_attn.weight'], 3, axis=1)
  q_D, k_D, v_D = np.split(t['attn.c_attn.bias'], 3)
  return {
      ('attn_norm', 'scale'): t['ln_1.weight'], ('attn_norm', 'bias'): t['ln_1.bias'],
      ('attn', 'query', 'kernel'): q_DxD.reshape(d, n, h), ('attn', 'query', 'bias'): q_D.reshape(n, h),
      ('attn', 'key', 'kernel'): k_DxD.reshape(d, n, h), ('attn', 'key', 'bias'): k_D.reshape(n, h),
      ('attn', 'value', 'kernel'): v_DxD.reshape(d, n, h), ('attn', 'value', 'bias'): v_D.reshape(n, h),
      ('attn', 'out_kernel'): t['attn.c_proj.weight'].reshape(n, h, d),
      ('attn', 'out_bias'): t['attn.c_proj.bias'],
      ('mlp_norm', 'scale'): t['ln_2.weight'], ('mlp_norm', 'bias'): t['ln_2.bias'],
      ('mlp', 'up', 'kernel'): t['mlp.c_fc.weight'], ('mlp', 'up', 'bias'): t['mlp.c_fc.bias'],
      ('mlp', 'down', 'kernel'): t['mlp.c_proj.weight'], ('mlp', 'down', 'bias'): t['mlp.c_proj.bias'],
  }


def _layer_to_hf(p: dict[tuple[str, ...], np.ndarray], cfg: GPTConfig) -> dict[str, np.ndarray]:
  """The inverse of `_layer_to_gptjax`."""
  d = cfg.d_model
  kernels = [p[('attn', name, 'kernel')].reshape(d, d) for name in ('query', 'key', 'value')]
  biases = [p[('attn', name, 'bias')].reshape(d) for name in ('query', 'key', 'value')]
  return {
      'ln_1.weight': p[('attn_norm', 'scale')], 'ln_1.bias': p[('attn_norm', 'bias')],
      'attn.c_attn.weight': np.concatenate(kernels, axis=1),
      'attn.c_attn.bias': np.concatenate(biases),
      'attn.c_proj.weight': p[('attn', 'out_kernel')].reshape(d, d),
      'attn.c_proj.bias': p[('attn', 'out_bias')],
      'ln_2.weight': p[('mlp_norm', 'scale')], 'ln_2.bias': p[('mlp_norm', 'bias')],
      'mlp.c_fc.weight': p[('mlp', 'up', 'kernel')], 'mlp.c_fc.bias': p[('mlp', 'up', 'bias')],
      'mlp.c_proj.weight': p[('mlp', 'down', 'kernel')], 'mlp.c_proj.bias': p[('mlp', 'down', 'bias')],
  }


def params_from_hf(tensors: dict[str, np.ndarray], cfg: GPTConfig) -> dict[str, Any]:
  """gptjax parameters (nested dicts of `cfg.param_dtype` arrays) of a GPT-2 state dict.

  Every tensor is checked against the shapes `cfg` implies first, so a bad checkpoint is refused
  before anything is built. Being a pure relayout, this also maps HF gradients to gptjax's.
  """
  t = _checked(tensors, cfg)
  dtype = cfg.weights_dtype
  layers = [_layer_to_gptjax({name: t[f'h.{i}.{name}'] for name in _layer_shapes(cfg)}, cfg)
            for i in range(cfg.num_layers)]
  flat = {('embed', 'embedding'): t['wte.weight'], ('pos_embed',): t['wpe.weight'],
          ('final_norm', 'scale'): t['ln_f.weight'], ('final_norm', 'bias'): t['ln_f.bias']}
  if cfg.scan_layers:  # one [L, ...] array per parameter
    flat.update({('blocks',) + path: np.stack([layer[path] for layer in layers])
                 for path in layers[0]})
  else:
    for i, layer in enumerate(layers):
      flat.update({(f'block_{i}',) + path: value for path, value in layer.items()})
  return traverse_util.unflatten_dict({path: np.asarray(value).astype(dtype)
                                       for path, value in flat.items()})


def params_to_hf(params: Any, cfg: GPTConfig) -> dict[str, np.ndarray]:
  """A `GPT2LMHeadModel` state dict (float32, `transformer.` names, tied head left out)."""
  flat = {path: np.asarray(value, np.float32)
          for path, value in traverse_util.flatten_dict(params).items()}
  if cfg.scan_layers:
    layers = [{path[1:]: value[i] for path, value in flat.items() if path[0] == 'blocks'}
              for i in range(cfg.num_layers)]
  else:
    layers = [{path[1:]: value for path, value in flat.items() if path[0] == f'block_{i}'}
              for i in range(cfg.num_layers)]
  tensors = {'wte.weight': flat[('embed', 'embedding')], 'wpe.weight': flat[('pos_embed',)],
             'ln_f.weight': flat[('final_norm', 'scale')], 'ln_f.bias': flat[('final_norm', 'bias')]}
  for i, layer in enumerate(layers):
    tensors.update({f'h.{i}.{name}': value for name, value in _layer_to_hf(layer, cfg).items()})
  # safetensors stores contiguous buffers; reshapes of slices may not be
  return {_PREFIX + name: np.ascontiguousarray(value) for name, value in tensors.items()}
