"""'cpu_fused': the fused CPU causal attention kernel (`causal_attention.cc` beside this file).

The kernel is compiled at first use with the host's C++ compiler for the host's own instruction set
(`-march=native`) and cached under ~/.cache/gptjax (or $GPTJAX_CACHE_DIR), keyed by the source, the
compiler, the JAX version (whose FFI headers it includes) and the CPU model and flags, so a shared
home directory on a cluster of mixed machines never loads a library built for another CPU.
Building needs only a C++17 compiler; where there is none, `unavailable_reason()` says why and
`gptjax.model.attention.resolve` picks the blocked JAX attention instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

_SOURCE = os.path.join(os.path.dirname(__file__), 'causal_attention.cc')
_FORWARD, _BACKWARD = 'gptjax_causal_attention_fwd', 'gptjax_causal_attention_bwd'
HEAD_SIZES = (16, 32, 64, 128)


def supports(dtype: jnp.dtype, head_dim: int) -> bool:
  """Whether the kernel computes this attention: float32 with one of `HEAD_SIZES`."""
  return jnp.dtype(dtype) == jnp.float32 and head_dim in HEAD_SIZES


def has_wide_vectors() -> bool:
  """Whether this CPU runs the kernel's 16-float vectors natively (x86 AVX-512).

  With narrower vectors (AVX2, NEON) each 8 x 16 register tile needs more registers than the CPU
  has, the tiles spill to memory, and the kernel is slower than the blocked JAX attention
  (BENCHMARKS.md), so `gptjax.model.attention.resolve` picks it by default only here.
  """
  return 'avx512f' in _cpu_model().split()


def _cpu_model() -> str:
  """The CPU's model and instruction-set flags: a VM may hide some of its model's extensions."""
  try:
    with open('/proc/cpuinfo') as f:
      first = {}
      for line in f:
        name = line.split(':', 1)[0].strip()
        if name in ('model name', 'flags', 'Features'):  # 'Features': the Arm spelling
          first.setdefault(name, line)
      return ''.join(first.values())
  except OSError:
    return platform.processor()


def _compiler() -> str | None:
  return os.environ.get('CXX') or shutil.which('c++') or shutil.which('g++') or shutil.which('clang++')


def _build(compiler: str) -> str:
  """Compiles the kernel (once per source, compiler and CPU) and returns the library's path."""
  with open(_SOURCE, 'rb') as f:
    source = f.read()
  include = jax.ffi.include_dir()
  flags = ['-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-w', f'-I{include}']
  version = subprocess.run([compiler, '--version'], capture_output=True, text=True).stdout
  key = hashlib.sha256(b'\0'.join(
      part.encode() if isinstance(part, str) else part
      for part in (source, version, ' '.join(flags), jax.__version__, _cpu_model()))).hexdigest()[:16]
  cache = os.environ.get('GPTJAX_CACHE_DIR') or os.path.join(os.path.expanduser('~'), '.cache',
                                                               'gptjax')
  path = os.path.join(cache, f'causal_attention_{key}.so')
  if not os.path.exists(path):
    os.makedirs(cache, exist_ok=True)
    # Built beside its final name and renamed, so concurrent processes never load half a file.
    fd, partial = tempfile.mkstemp(suffix='.so', dir=cache)
    os.close(fd)
    result = subprocess.run([compiler, *flags, _SOURCE, '-o', partial], capture_output=True,
                            text=True)
    if result.returncode:
      os.unlink(partial)
      raise RuntimeError(f'{compiler} could not build {_SOURCE}:\n{result.stderr[-2000:]}')
    os.replace(partial, path)
    logging.info('Built the CPU attention kernel into %s', path)
  return path


@functools.cache
def unavailable_reason() -> str:
  """Builds and registers the kernel on the first call; '' when it is ready, else why it is not."""
  compiler = _compiler()
  if compiler is None:
    return 'no C++ compiler was found (set $CXX or install g++ or clang++)'
  try:
    library = ctypes.cdll.LoadLibrary(_build(compiler))
  except (RuntimeError, OSError) as error:
    return str(error)
  jax.ffi.register_ffi_target(_FORWARD, jax.ffi.pycapsule(library.GptjaxCausalAttentionForward),
                              platform='cpu')
  jax.ffi.register_ffi_target(_BACKWARD, jax.ffi.pycapsule(library.GptjaxCausalAttentionBackward),
                              platform='cpu')
  return ''


def _shapes(*shapes: Sequence[int]) -> tuple[jax.ShapeDtypeStruct, ...]:
  return tuple(jax.ShapeDtypeStruct(tuple(shape), jnp.float32) for shape in shapes)


def causal_attention_on_mesh(q_BxTxNxH: Array, k_BxTxKxH: Array, v_BxTxKxH: Array,
                             spec: jax.sharding.PartitionSpec) -> Array:
  """`causal_attention` of activations laid out over the current mesh as `spec` says.

  Each (batch row, head) is independent, so every device runs the kernel on its own rows and heads
  (`jax.shard_map` over the mesh the step is traced under, `sharding.traced_under`). Without that,
  XLA cannot split a custom call and gathers the whole batch onto every device. `spec` must leave
  the sequence axis unsplit.
  """
  if unavailable_reason():  # builds the kernel on first use
    raise RuntimeError(f"attention_impl='cpu_fused': {unavailable_reason()}; leave "
                       "model.attention_impl='' to fall back to 'blocked'.")
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return causal_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
  if len(spec) > 1 and spec[1] is not None:
    raise ValueError(f'The CPU attention kernel needs whole sequences on each device, but the '
                     f'activations are split as {spec}; set model.attention_impl=\'blocked\'.')
  # check_vma=False: the FFI call's results carry no record of the axes they vary over.
  return jax.shard_map(causal_attention, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=False)(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)


@jax.custom_vjp
def causal_attention(q_BxTxNxH: Array, k_BxTxKxH: Array, v_BxTxKxH: Array) -> Array:
  """softmax(QKᵀ/√H + causal mask) V for float32 [B, T, heads, H] inputs, head n reading K/V head
  n // (N / K); the same function as `jax.nn.dot_product_attention(..., is_causal=True)`.

  Call `unavailable_reason()` first: it builds the kernel.
  """
  return _forward(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)[0]


def _forward(q_BxTxNxH: Array, k_BxTxKxH: Array, v_BxTxKxH: Array):
  b, t, n, _ = q_BxTxNxH.shape
  out_BxTxNxH, lse_BxNxT = jax.ffi.ffi_call(_FORWARD, _shapes(q_BxTxNxH.shape, (b, n, t)))(
      q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
  return out_BxTxNxH, (q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, out_BxTxNxH, lse_BxNxT)


def _backward(residuals, dout_BxTxNxH: Array):
  q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, out_BxTxNxH, lse_BxNxT = residuals
  return jax.ffi.ffi_call(_BACKWARD, _shapes(q_BxTxNxH.shape, k_BxTxKxH.shape, v_BxTxKxH.shape))(
      q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, out_BxTxNxH, lse_BxNxT, dout_BxTxNxH)


causal_attention.defvjp(_forward, _backward)
