"""Parameter counts, FLOPs per token and MFU: the one place these numbers are computed.

Logs, MFU, cost estimates and scaling fits all read sizes and FLOPs from here, so a change to the
model (a new MLP, GQA, untied head) has to be reflected once, and `tests/cost/test_flops.py` checks
the formulas against the real parameter tree and against XLA's own FLOP count.

Letters follow `gptjax/model/gpt.py`: D d_model, L layers, N query heads, K key/value heads, H head
dim, F MLP hidden width, V vocabulary, T sequence length (the attention context).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model import peft
from gptjax.model.config import GPTConfig

FLOP_METHODS = ('kaplan', 'full')


@dataclasses.dataclass(frozen=True)
class ParamCounts:
  """Parameter counts of a GPT; `non_embedding` is Kaplan et al.'s N.

  `embedding` holds the token table, the learned position table (if any) and the untied output
  head (if any): Kaplan's N leaves out every vocabulary- or position-sized matrix, because those
  scale with V and T rather than with depth and width. Norms and biases count as non-embedding.
  """

  total: int
  non_embedding: int
  embedding: int


def _layer_params(cfg: GPTConfig) -> int:
  d, h, f = cfg.d_model, cfg.head_dim, cfg.mlp_hidden
  n, k = cfg.num_heads, cfg.kv_heads
  bias = int(cfg.use_bias)
  attn = d * (n + 2 * k) * h + bias * (n + 2 * k) * h  # query, key, value
  attn += n * h * d + bias * d  # output projection
  mlp_in = 2 if cfg.mlp == 'swiglu' else 1  # SwiGLU has a gate and an up matrix
  mlp = mlp_in * (d * f + bias * f) + f * d + bias * d
  return attn + mlp + 2 * _norm_params(cfg)


def _norm_params(cfg: GPTConfig) -> int:
  has_bias = cfg.norm == 'layernorm' and cfg.use_bias  # RMSNorm has a scale only
  return cfg.d_model * (2 if has_bias else 1)


def param_counts(cfg: GPTConfig) -> ParamCounts:
  """Counts from the config alone (no model is built); equals the flax tree's size."""
  token = cfg.vocab_size * cfg.d_model
  position = cfg.max_seq_len * cfg.d_model if cfg.position == 'learned' else 0
  head = 0 if cfg.tie_embeddings else cfg.d_model * cfg.vocab_size
  non_embedding = cfg.num_layers * _layer_params(cfg) + _norm_params(cfg)  # + final norm
  embedding = token + position + head
  return ParamCounts(total=non_embedding + embedding, non_embedding=non_embedding,
                     embedding=embedding)


def trainable_params(model_cfg: GPTConfig) -> int:
  """The parameters a fine-tune with `model_cfg.peft`'s method trains, from the config alone:
  every parameter under 'full', the method's own otherwise (docs/finetuning.md)."""
  method, layers, d = model_cfg.peft, model_cfg.num_layers, model_cfg.d_model
  if method.method == 'full':
    return param_counts(model_cfg).total
  if method.method == 'lora':
    dims = [peft.lora_dims(model_cfg, target) for target in method.lora_targets]
    return layers * sum(method.lora_rank * (math.prod(x.in_shape) + math.prod(x.out_shape))
                        for x in dims)
  if method.method == 'adapter':
    a = method.adapter_dim
    return 2 * layers * (2 * d * a + a + d)
  if method.method == 'prefix':
    return 2 * layers * method.prefix_len * model_cfg.kv_heads * model_cfg.head_dim
  return method.prompt_len * d


def _check_method(method: str) -> None:
  if method not in FLOP_METHODS:
    raise ValueError(f'method={method!r}; choose one of {FLOP_METHODS}.')


def forward_flops_per_token(cfg: GPTConfig, seq_len: int, method: str = 'kaplan') -> float:
  """Forward-pass FLOPs per token (a multiply-add counts 2) at context length `seq_len`.

  'kaplan' (Kaplan et al. 2020, table 1): 2N + 2·L·T·D with N the non-embedding parameters. It
    leaves out the output layer (2·D·V) and counts one T-long attention product per layer, which
    equals the causal half of both QK^T and AV.
  'full': every matmul the model runs: Q/K/V projections with K key/value heads, QK^T and AV over
    the full T×T square (XLA's attention computes every logit and masks afterwards, so that is the
    work done; a kernel that skips masked blocks does about half of it), the output projection, the
    MLP (three matrices for SwiGLU) and the output layer 2·D·V. The embedding lookup is a gather
    (0 FLOPs); norms, biases, softmax and activations are elementwise and left out.
  """
  _check_method(method)
  if seq_len <= 0:
    raise ValueError(f'seq_len={seq_len} must be positive.')
  d, t = cfg.d_model, seq_len
  attention_width = cfg.num_heads * cfg.head_dim  # Kaplan's d_attn; equals D in this model
  if method == 'kaplan':
    return 2.0 * param_counts(cfg).non_embedding + 2.0 * cfg.num_layers * t * attention_width
  n, k, h, f = cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.mlp_hidden
  projections = 2 * d * (n + 2 * k) * h + 2 * n * h * d
  attention = 2 * 2 * t * n * h  # logits QK^T and the weighted sum AV, each T per query
  mlp = 2 * (3 if cfg.mlp == 'swiglu' else 2) * d * f
  return float(cfg.num_layers * (projections + attention + mlp) + 2 * d * cfg.vocab_size)


def flops_per_token(cfg: GPTConfig, seq_len: int, method: str = 'kaplan') -> float:
  """Training FLOPs per token: forward + backward, the backward costing twice the forward.

  These are model FLOPs (what MFU divides by): the forward that remat recomputes is not counted.
  """
  return 3.0 * forward_flops_per_token(cfg, seq_len, method)


def training_flops(cfg: GPTConfig, seq_len: int, tokens: float, method: str = 'kaplan') -> float:
  """Total training compute C for `tokens` tokens (Kaplan: C ≈ 6·N·D plus the attention term)."""
  if tokens < 0:
    raise ValueError(f'tokens={tokens} must be non-negative.')
  return flops_per_token(cfg, seq_len, method) * tokens


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """Datasheet figures for one chip. Peaks are dense (no 2:4 sparsity), per chip.

  `peak_fp32_flops` is the peak of the units a float32 matmul runs on at JAX's default precision:
  on NVIDIA GPUs that is TF32 tensor cores (an 8192^3 fp32 matmul measured 356 TFLOP/s on an
  H200, 5x its 67 TFLOP/s non-tensor-core figure, so that figure would give MFU above 1). With
  jax_default_matmul_precision='highest' use the non-tensor figure in the comments instead. TPUs
  have None: XLA runs fp32 matmuls there as bf16 passes; measure with `measure_matmul_peak`.
  `price_per_hour_usd` is a rough on-demand list price per chip, a default to edit, not a quote.
  """

  peak_bf16_flops: float
  peak_fp32_flops: float | None
  memory_bandwidth_bytes_per_s: float
  memory_bytes: float
  price_per_hour_usd: float
  device_kind_substrings: tuple[str, ...]


TERA, GIGA = 1e12, 1e9
ACCELERATORS: dict[str, Accelerator] = {
    'tpu_v4': Accelerator(275 * TERA, None, 1200 * GIGA, 32 * 2**30, 3.22, ('TPU v4',)),
    'tpu_v5e': Accelerator(197 * TERA, None, 819 * GIGA, 16 * 2**30, 1.20,
                           ('TPU v5 lite', 'TPU v5e', 'TPU v5litepod')),
    'tpu_v5p': Accelerator(459 * TERA, None, 2765 * GIGA, 95 * 2**30, 4.20, ('TPU v5p', 'TPU v5')),
    'tpu_v6e': Accelerator(918 * TERA, None, 1640 * GIGA, 32 * 2**30, 2.70,
                           ('TPU v6 lite', 'TPU v6e', 'TPU v6')),
    # A100 SXM 80GB; fp32 is TF32 (non-tensor fp32: 19.5 TFLOP/s).
    'a100': Accelerator(312 * TERA, 156 * TERA, 2039 * GIGA, 80e9, 3.67, ('A100',)),
    # H100 SXM only: the PCIe and NVL cards have lower clocks, so they do not match here.
    # fp32 is TF32 (non-tensor fp32: 67 TFLOP/s), likewise for the H200.
    'h100': Accelerator(989.4 * TERA, 494.7 * TERA, 3350 * GIGA, 80e9, 4.50,
                        ('H100 80GB HBM3', 'H100 SXM', 'H100-SXM')),
    'h200': Accelerator(989.4 * TERA, 494.7 * TERA, 4800 * GIGA, 141e9, 5.00, ('H200',)),
}


def _dtype_name(dtype: Any) -> str:
  return np.dtype(jnp.dtype(dtype)).name


def device_peak_flops(device_kind: str, dtype: Any = 'bfloat16') -> float | None:
  """Datasheet peak for `jax.devices()[0].device_kind`, or None if unknown (then measure).

  The longest matching substring wins, so 'TPU v5 lite' picks v5e over v5p's 'TPU v5'.
  bf16 and fp16 share the tensor-core peak on these chips; fp32 uses `peak_fp32_flops` (TF32 on
  GPUs, see `Accelerator`).
  """
  name = _dtype_name(dtype)
  if name not in ('bfloat16', 'float16', 'float32'):
    raise ValueError(f'dtype={name!r} has no datasheet peak; use bfloat16, float16 or float32.')
  kind = device_kind.lower()
  matches = [(len(s), acc) for acc in ACCELERATORS.values()
             for s in acc.device_kind_substrings if s.lower() in kind]
  if not matches:
    return None
  acc = max(matches, key=lambda m: m[0])[1]
  return acc.peak_fp32_flops if name == 'float32' else acc.peak_bf16_flops


def measure_matmul_peak(dtype: Any = 'float32', n: int | None = None, repeats: int = 5,
                        device: jax.Device | None = None) -> float:
  """Measured FLOP/s of one jitted n×n @ n×n matmul: the practical peak where no datasheet applies.

  Used as the CPU "peak" for MFU. The first call compiles and warms caches and is not timed; the
  median of `repeats` timed calls resists a stray slow run. n must be large enough that the
  matmul, not dispatch, dominates: by default 2048 on a CPU and 8192 on an accelerator, where a
  smaller product is dispatch-bound and understates the peak.
  """
  device = device or jax.devices()[0]
  if n is None:
    n = 2048 if device.platform == 'cpu' else 8192
  if n <= 0 or repeats <= 0:
    raise ValueError(f'n={n} and repeats={repeats} must be positive.')
  key_a, key_b = jax.random.split(jax.random.key(0))
  a_NxN = jax.device_put(jax.random.normal(key_a, (n, n), jnp.dtype(dtype)), device)
  b_NxN = jax.device_put(jax.random.normal(key_b, (n, n), jnp.dtype(dtype)), device)
  matmul = jax.jit(jnp.matmul)
  matmul(a_NxN, b_NxN).block_until_ready()
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a_NxN, b_NxN).block_until_ready()
    seconds.append(time.perf_counter() - start)
  return 2.0 * n**3 / statistics.median(seconds)


def mfu(achieved_flops_per_s: float, peak_flops_per_s: float) -> float:
  """Model FLOPs utilisation: the fraction of peak the model's counted FLOPs reach."""
  if not peak_flops_per_s > 0:
    raise ValueError(f'peak_flops_per_s={peak_flops_per_s} must be positive; pass the datasheet '
                     'peak (device_peak_flops) or a measured one (measure_matmul_peak).')
  if achieved_flops_per_s < 0:
    raise ValueError(f'achieved_flops_per_s={achieved_flops_per_s} must be non-negative.')
  return achieved_flops_per_s / peak_flops_per_s
