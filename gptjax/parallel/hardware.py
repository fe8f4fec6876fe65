"""Settings that depend on the hardware, resolved once where a run is set up and logged.

Two config fields leave a choice to the machine the run lands on:
  model.attention_impl  ''  -> the attention backend measured fastest there
                               (`gptjax.model.attention`)
  train.tokens_per_pass 'auto' -> how many sequential passes (micro-batches) one step runs
The step and the model only ever see the resolved values: a backend name and a pass count.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from gptjax.model import attention
from gptjax.model.config import GPTConfig
from gptjax.parallel import sharding

# 'auto' on a CPU: tokens per host in one forward+backward pass, shared by the host's devices.
# A pass this small keeps each layer's activations in the caches between its forward and backward
# (BENCHMARKS.md has the measured effect and the budgets tried).
CPU_TOKENS_PER_PASS = 1024


def resolve_attention(cfg: GPTConfig, device: jax.Device) -> GPTConfig:
  """`cfg` with a concrete attention backend for `device`; the choice and its reason are logged."""
  impl, why = attention.resolve(cfg.attention_impl, device, cfg.compute_dtype, cfg.head_dim,
                                causal=cfg.causal)
  logging.info('Attention: %s (%s).', impl, why)
  return dataclasses.replace(cfg, attention_impl=impl)


def tokens_per_pass(value: str | int, platform: str) -> int:
  """`train.tokens_per_pass` as a number of tokens per host (0: run each micro-batch whole)."""
  text = str(value).strip()
  if text == 'auto':
    return CPU_TOKENS_PER_PASS if platform == 'cpu' else 0
  if not text.isdigit():
    raise ValueError(f"train.tokens_per_pass={value!r}; use 'auto', '0' (off) or a number of "
                     'tokens per host, e.g. 1024.')
  return int(text)


def passes_per_step(batch_size: int, seq_len: int, grad_accum_steps: int, *, budget: int,
                    batch_shards: int, host_devices: int = 1) -> int:
  """How many micro-batches a step runs one after another: at least `grad_accum_steps`.

  With a `budget` of tokens per host, each accumulation micro-batch is split further into the
  fewest equal parts of whole sequences that keep a pass within the budget, shared evenly by the
  `host_devices` devices that run at once (they share the host's caches). `batch_shards` is the
  number of devices the batch rows are split over: a pass must still give every one of them whole
  rows, or the devices would compute the same rows.
  """
  if budget <= 0:
    return grad_accum_steps
  tokens_per_device = budget // max(host_devices, 1)
  rows_per_device = max(batch_size // (grad_accum_steps * batch_shards), 1)
  split = next(s for s in range(1, rows_per_device + 1)
               if rows_per_device % s == 0 and rows_per_device // s * seq_len <= tokens_per_device
               or s == rows_per_device)
  return grad_accum_steps * split


def resolve_passes(config: ml_collections.ConfigDict, mesh: Mesh) -> int:
  """The step's micro-batch count for `config` on `mesh`; logged when it differs from the
  config's."""
  platform = mesh.devices.flat[0].platform
  budget = tokens_per_pass(config.train.tokens_per_pass, platform)
  passes = passes_per_step(config.data.batch_size, config.data.seq_len,
                           config.train.grad_accum_steps, budget=budget,
                           batch_shards=sharding.batch_shards(mesh),
                           host_devices=len(mesh.local_devices))
  if passes != config.train.grad_accum_steps:
    logging.info('Each step runs %d sequential passes of %d sequences (train.tokens_per_pass=%s: '
                 '%d tokens per host per pass).', passes, config.data.batch_size // passes,
                 config.train.tokens_per_pass, budget)
  return passes


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run's steps are built from once the hardware is known."""

  model: GPTConfig  # with a concrete attention backend
  passes: int  # micro-batches per step, run one after another (at least train.grad_accum_steps)


def resolve(config: ml_collections.ConfigDict, mesh: Mesh) -> Setup:
  """Resolves the hardware-dependent settings of `config` for `mesh`, logging each choice."""
  model = resolve_attention(GPTConfig.from_run_config(config), mesh.devices.flat[0])
  return Setup(model=model, passes=resolve_passes(config, mesh))


def check_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """Raises a ValueError naming the field and the fix when the batch does not split over `mesh`
  or `train.tokens_per_pass` cannot be read."""
  sharding.check_batch_divisible(config.data.batch_size, mesh, config.train.grad_accum_steps)
  tokens_per_pass(config.train.tokens_per_pass, mesh.devices.flat[0].platform)
