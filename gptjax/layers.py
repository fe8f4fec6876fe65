"""Layer norm and tanh-GELU with hand-written backward passes.

Autodiff of `nn.LayerNorm` keeps several [B, T, D] intermediates and, on a CPU, XLA turns the
forward and backward into a dozen separate passes over memory per norm (BENCHMARKS.md, issue 6).
Here the forward keeps only the input and two [B, T] statistics, and the backward recomputes the
normalised input inside the same fused expressions that need it. Likewise the GELU keeps only its
input and recomputes tanh in the backward, instead of storing tanh for it.

Both compute the same functions as `nn.LayerNorm` / `nn.RMSNorm` / `nn.gelu(approximate=True)` up to
float32 rounding; statistics are always computed in float32, as flax does.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _row_mean(x: Array) -> Array:
  return jnp.mean(x, axis=-1, keepdims=True)


def _stats(x_f32: Array, eps: float, center: bool) -> tuple[Array | None, Array]:
  """Mean (None without centering) and 1/sqrt(variance + eps) over the last axis, kept as [..., 1]."""
  mean = _row_mean(x_f32) if center else None
  centred = x_f32 - mean if center else x_f32
  inv_std = jax.lax.rsqrt(_row_mean(centred * centred) + eps)
  return mean, inv_std


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize(x: Array, scale_D: Array, bias_D: Array | None, eps: float, center: bool) -> Array:
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis (RMS form if not `center`)."""
  return _normalize_fwd(x, scale_D, bias_D, eps, center)[0]


def _normalize_fwd(x: Array, scale_D: Array, bias_D: Array | None, eps: float, center: bool):
  x_f32 = x.astype(jnp.float32)
  mean, inv_std = _stats(x_f32, eps, center)
  y = ((x_f32 - mean) if center else x_f32) * inv_std * scale_D.astype(jnp.float32)
  if bias_D is not None:
    y = y + bias_D.astype(jnp.float32)
  return y.astype(x.dtype), (x, mean, inv_std, scale_D, bias_D)


def _normalize_bwd(eps: float, center: bool, residuals, dy: Array):
  del eps
  x, mean, inv_std, scale_D, bias_D = residuals
  x_hat = ((x.astype(jnp.float32) - mean) if center else x.astype(jnp.float32)) * inv_std
  dy_f32 = dy.astype(jnp.float32)
  dx_hat = dy_f32 * scale_D.astype(jnp.float32)
  # d/dx of x_hat: project out the mean (if centred) and the x_hat direction, then rescale.
  dx = dx_hat - x_hat * _row_mean(dx_hat * x_hat)
  if center:
    dx = dx - _row_mean(dx_hat)
  leading = tuple(range(x.ndim - 1))
  dscale_D = jnp.sum(dy_f32 * x_hat, axis=leading).astype(scale_D.dtype)
  dbias_D = None if bias_D is None else jnp.sum(dy_f32, axis=leading).astype(bias_D.dtype)
  return (dx * inv_std).astype(x.dtype), dscale_D, dbias_D


normalize.defvjp(_normalize_fwd, _normalize_bwd)


class Norm(nn.Module):
  """LayerNorm (or RMSNorm if not `center`) with flax's parameter names: 'scale' and 'bias'."""

  epsilon: float
  center: bool
  use_bias: bool
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  scale_init: nn.initializers.Initializer
  bias_init: nn.initializers.Initializer

  @nn.compact
  def __call__(self, x_BxTxD: Array) -> Array:
    d = x_BxTxD.shape[-1]
    scale_D = self.param('scale', self.scale_init, (d,), self.param_dtype)
    bias_D = self.param('bias', self.bias_init, (d,), self.param_dtype) if self.use_bias else None
    return normalize(x_BxTxD, scale_D, bias_D, self.epsilon, self.center).astype(self.dtype)


_GELU_C = math.sqrt(2.0 / math.pi)


@jax.custom_vjp
def gelu_tanh(x: Array) -> Array:
  """0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))), the GPT-2 GELU."""
  return 0.5 * x * (1.0 + jnp.tanh(_GELU_C * (x + 0.044715 * x * x * x)))


def _gelu_fwd(x: Array):
  return gelu_tanh(x), x


def _gelu_bwd(x: Array, dy: Array):
  t = jnp.tanh(_GELU_C * (x + 0.044715 * x * x * x))
  slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x * x)
  return (dy * slope,)


gelu_tanh.defvjp(_gelu_fwd, _gelu_bwd)
