"""Training-step benchmark: step time, tokens/s, achieved FLOP/s and MFU for reference configs.

  python -m experiments.bench                                  # small, medium, tiny on this device
  python -m experiments.bench --configs=gpt2_124m --dtype=bfloat16 --attention_impl=cudnn   # a GPU
  python -m experiments.bench --configs=small --cpu_devices=2 --devices=1,2   # the host as 1 or 2 devices
  python -m experiments.bench --configs=small --profile_dir=/tmp/prof   # + where the step's time goes

The matmul peak of the device is measured first, so MFU is against what this machine can actually
do, not only against a datasheet. Achieved FLOP/s uses the full FLOPs count of `gptjax.cost.flops`
(every matmul, attention included), the same number the training records use.
"""

from __future__ import annotations

import ast
import json
import os
import statistics
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from experiments import profiling
from experiments.configs import base
from gptjax import train
from gptjax.cost import flops
from gptjax.parallel import distributed, hardware, sharding
from gptjax.train import optim

_CONFIGS = flags.DEFINE_list('configs', ['small', 'medium', 'tiny'],
                             f'Which of {sorted(("small", "medium", "tiny", "gpt2_124m"))} to time.')
_DEVICES = flags.DEFINE_list('devices', ['1'], 'Device counts to time each config on (data mesh).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps per config (after warm-up).')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps first (compilation, caches).')
_DTYPE = flags.DEFINE_string('dtype', 'float32', "Compute dtype: 'float32' or 'bfloat16'.")
_ATTENTION = flags.DEFINE_string('attention_impl', '',
                                 "'xla', 'cudnn', 'blocked' or 'cpu_fused'; '' picks the fastest "
                                 'that runs here, as a training run does (gptjax.model.attention).')
_CPU_DEVICES = flags.DEFINE_integer('cpu_devices', 0, 'Split a CPU host into this many XLA devices '
                                    'first (mesh.cpu_devices); --devices picks how many to use.')
_BATCH = flags.DEFINE_integer('batch_size', 0, 'Override the batch size of every config.')
_SEQ = flags.DEFINE_integer('seq_len', 0, 'Override the sequence length of every config.')
_OVERRIDES = flags.DEFINE_list('set', [], 'Extra config overrides, e.g. model.scan_layers=True.')
_JSON = flags.DEFINE_string('json', '', 'Also write the results to this JSON file.')
_PROFILE_DIR = flags.DEFINE_string('profile_dir', '', 'Also trace 2 steps of each config into '
                                   'this directory and print the op kinds and the model '
                                   'operations that take the time.')

_PROFILE_ROWS = 12  # rows of each profile table printed per config with --profile_dir

# The reference configs: byte vocabulary, tied embeddings, GELU MLP of 4*d_model.
REFERENCE = {
    'small': dict(d_model=128, num_layers=4, num_heads=4, seq_len=256, batch_size=16),
    'medium': dict(d_model=384, num_layers=6, num_heads=6, seq_len=256, batch_size=16),
    'tiny': dict(d_model=128, num_layers=4, num_heads=4, seq_len=128, batch_size=16),
    'gpt2_124m': dict(d_model=768, num_layers=12, num_heads=12, seq_len=1024, batch_size=16,
                      vocab_size=50304),
}


def bench_config(name: str) -> ml_collections.ConfigDict:
  if name not in REFERENCE:
    raise ValueError(f'Unknown bench config {name!r}; choose from {sorted(REFERENCE)}.')
  ref = dict(REFERENCE[name])
  config = base.get_config()
  config.data.seq_len = _SEQ.value or ref.pop('seq_len')
  config.data.batch_size = _BATCH.value or ref.pop('batch_size')
  ref.pop('seq_len', None), ref.pop('batch_size', None)
  for key, value in ref.items():
    config.model[key] = value
  config.model.max_seq_len = config.data.seq_len
  config.model.dtype = _DTYPE.value
  config.model.attention_impl = _ATTENTION.value
  config.train.num_steps = 10_000
  for override in _OVERRIDES.value:
    path, value = override.split('=', 1)
    section, field = path.split('.')
    config[section][field] = _literal(value)
  return config


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string such as 'rope'


def time_train_step(config: ml_collections.ConfigDict, devices: list[jax.Device], steps: int,
                    warmup: int, profile_dir: str = '') -> dict[str, Any]:
  """Median wall time of the jitted train step, each step synchronised before the next starts."""
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = len(devices), 1, 1
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.logical_rules(config.mesh)
  setup = hardware.resolve(config, mesh)
  state, shardings = train.create_train_state(config, mesh, rules)
  jit_train, _ = train.jit_steps(config, setup, mesh, rules, shardings)
  numbers = optim.schedule_numbers(config.train)
  rng = np.random.default_rng(0)
  shape = (config.data.batch_size, config.data.seq_len + 1)
  batches = [jax.device_put(rng.integers(0, config.model.vocab_size, shape, dtype=np.int32),
                            sharding.batch_sharding(mesh)) for _ in range(4)]
  compile_start = time.perf_counter()
  # Compiled once ahead of time: the same executable is timed, traced and read for its HLO.
  compiled_train = jit_train.lower(state, batches[0], numbers).compile()
  state, metrics = compiled_train(state, batches[0], numbers)
  jax.block_until_ready(metrics)
  compile_time = time.perf_counter() - compile_start  # the first step: compilation and one step
  for i in range(warmup):
    state, metrics = compiled_train(state, batches[i % 4], numbers)
  jax.block_until_ready(metrics)
  times = []
  for i in range(steps):
    start = time.perf_counter()
    state, metrics = compiled_train(state, batches[i % 4], numbers)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  if not np.isfinite(float(metrics['train_loss'])):
    raise FloatingPointError('The benchmarked step produced a non-finite loss.')
  op_kinds, op_sources = [], []
  if profile_dir:
    state, trace_path = profiling.trace_steps(
        lambda state, batch: compiled_train(state, batch, numbers), state, batches[0], 2, profile_dir)
    op_kinds = profiling.summarize(trace_path, 2)
    op_sources = profiling.summarize_by_source(trace_path, 2, compiled_train.as_text())
  cfg = setup.model
  tokens = config.data.batch_size * config.data.seq_len
  step_time = statistics.median(times)
  return {
      'params': flops.param_counts(cfg).total,
      'devices': len(devices),
      'step_time_s': step_time,
      'step_time_spread_s': max(times) - min(times),
      'compile_s': compile_time,
      'tokens_per_s': tokens / step_time,
      'flops_per_s': tokens * flops.flops_per_token(cfg, config.data.seq_len, 'full') / step_time,
      'flops_per_s_kaplan': tokens * flops.flops_per_token(cfg, config.data.seq_len, 'kaplan')
                            / step_time,
      'op_kinds': [op._asdict() for op in op_kinds],
      'op_sources': [op._asdict() for op in op_sources],
  }


def main(argv):
  del argv
  distributed.configure_cpu_devices(_CPU_DEVICES.value)
  device = jax.devices()[0]
  dtype = _DTYPE.value
  peak = flops.measure_matmul_peak(dtype, repeats=10)
  datasheet = flops.device_peak_flops(device.device_kind, dtype)
  print(f'Device: {device.device_kind} ({jax.device_count()} visible); measured {dtype} matmul '
        f'peak {peak / 1e9:,.1f} GFLOP/s' +
        (f'; datasheet {datasheet / 1e12:,.0f} TFLOP/s' if datasheet else ''))
  header = (f'{"config":<10} {"dev":>3} {"params":>11} {"step ms":>9} {"tokens/s":>11} '
            f'{"GFLOP/s":>10} {"MFU meas":>9} {"MFU sheet":>9} {"compile s":>9}')
  print(header)
  results = []
  for name in _CONFIGS.value:
    for count in (int(c) for c in _DEVICES.value):
      if count > jax.device_count():
        raise ValueError(f'--devices asks for {count} devices but {jax.device_count()} are '
                         'visible; on CPU pass --cpu_devices=N.')
      profile_dir = _PROFILE_DIR.value and os.path.join(_PROFILE_DIR.value, f'{name}_{count}')
      result = time_train_step(bench_config(name), jax.devices()[:count], _STEPS.value,
                               _WARMUP.value, profile_dir)
      # The CPU devices of one process share the host, whose whole peak was measured above.
      per_device = result['flops_per_s'] / (1 if device.platform == 'cpu' else count)
      result.update(config=name, dtype=dtype, measured_peak=peak, datasheet_peak=datasheet,
                    mfu_measured=per_device / peak,
                    mfu_datasheet=per_device / datasheet if datasheet else None)
      results.append(result)
      sheet = f'{100 * result["mfu_datasheet"]:8.1f}%' if datasheet else f'{"-":>9}'
      print(f'{name:<10} {count:>3} {result["params"]:>11,} {1e3 * result["step_time_s"]:>9.1f} '
            f'{result["tokens_per_s"]:>11,.0f} {result["flops_per_s"] / 1e9:>10,.1f} '
            f'{100 * result["mfu_measured"]:>8.1f}% {sheet} {result["compile_s"]:>9.1f}', flush=True)
      for title, ops in (('by kind', result['op_kinds']), ('by source', result['op_sources'])):
        if ops:
          print(f'  compiled ops {title}:')
        for op in ops[:_PROFILE_ROWS]:
          print(f'    {op["ms_per_step"]:9.1f} ms/step {op["calls_per_step"]:7.0f} calls  '
                f'{op["name"]}')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump({'device': device.device_kind, 'results': results}, f, indent=2)
    logging.info('Wrote %s', _JSON.value)


if __name__ == '__main__':
  app.run(main)
