"""What it costs to train and to serve a model like this: FLOPs, time, accelerator-hours, dollars.

Parameter counts, FLOPs and chip datasheets all come from `gptjax/cost/flops.py` (one source of
truth); this module only turns them into time and money.

Training: time = FLOPs / (accelerators * peak * MFU). The FLOPs that count are those of `method`:
'full' by default, the count the training loop's MFU is measured against, so a measured MFU plugs
straight in; '6nd' (6 x total parameters x tokens, the usual headline figure, e.g. GPT-3's
3.14e23) and 'kaplan' (6N non-embedding plus attention) are reported alongside.

Serving, one decode step of a batch (a roofline estimate): every step reads all the weights and
each sequence's KV cache from memory, and does batch * forward-FLOPs-per-token of arithmetic
(2N plus attention over the context). The step takes the longer of the two at peak rates:
small batches are memory-bandwidth bound (the weights are read once for only a few tokens), large
batches compute bound. Real servers reach a fraction of either peak; `efficiency` scales both.

  python -m gptjax.cost --config=experiments/configs/gpt3.py:175b --tokens=300e9 \
      --accelerator=a100 [--mfu=0.4 --num_accelerators=1024 --price_per_hour=2.0 \
      --batch_size=8 --context=2048 --fit=hoffmann2022]
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence

from absl import flags
from ml_collections import config_flags

from gptjax.cost import flops
from gptjax.cost.chinchilla import CHINCHILLA_PARAMS, ChinchillaFit
from gptjax.cost.flops import Accelerator, ParamCounts
from gptjax.model.config import GPTConfig
from gptjax.runs import cli
from gptjax.runs.cli import format_duration

HOUR = 3600.0
METHODS = ('6nd',) + flops.FLOP_METHODS
BYTES_PER_VALUE = {'float32': 4.0, 'bfloat16': 2.0, 'float16': 2.0, 'int8': 1.0, 'int4': 0.5}
CHINCHILLA_TOKENS_PER_PARAM = 20.0
# Hoffmann et al. 2022, eq. 10 (approach 3): L(N, D) = E + A/N^alpha + B/D^beta, N total params.
HOFFMANN_2022_FIT = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def resolve_accelerator(accelerator: str | Accelerator) -> tuple[str, Accelerator]:
  if isinstance(accelerator, Accelerator):
    return 'custom', accelerator
  if accelerator not in flops.ACCELERATORS:
    raise ValueError(f'accelerator={accelerator!r}; choose one of {sorted(flops.ACCELERATORS)}.')
  return accelerator, flops.ACCELERATORS[accelerator]


def peak_flops(chip: Accelerator, dtype: str) -> float:
  """Datasheet peak for the matmul dtype; raises where the sheet has none (fp32 on TPUs)."""
  if dtype in ('bfloat16', 'float16'):
    return chip.peak_bf16_flops
  if dtype == 'float32' and chip.peak_fp32_flops is not None:
    return chip.peak_fp32_flops
  raise ValueError(f'No datasheet peak for dtype={dtype!r} on this accelerator; use bfloat16 '
                   '(XLA runs fp32 matmuls as bf16 passes on TPUs) or a chip with an fp32 figure.')


def _bytes_per_value(dtype: str) -> float:
  if dtype not in BYTES_PER_VALUE:
    raise ValueError(f'dtype={dtype!r}; choose one of {sorted(BYTES_PER_VALUE)}.')
  return BYTES_PER_VALUE[dtype]


def chinchilla_tokens(n_params: float, fit: Any = None) -> float:
  """Compute-optimal training tokens for a model of n_params total parameters.

  Without a fit: Hoffmann et al.'s rule of thumb, 20 tokens per parameter. With a fit (anything
  with `compute_optimal(C) -> (N_opt, D_opt)`, such as `ChinchillaFit`): the D that the
  fit pairs with this N. N_opt(C) is a power law in C, so two evaluations invert it exactly.
  """
  if n_params <= 0:
    raise ValueError(f'n_params={n_params} must be positive.')
  if fit is None:
    return CHINCHILLA_TOKENS_PER_PARAM * n_params
  c1, c2 = 1e20, 1e24
  n1, n2 = (float(fit.compute_optimal(c)[0]) for c in (c1, c2))
  exponent = math.log(n2 / n1) / math.log(c2 / c1)  # a in N_opt ∝ C^a
  compute = c1 * (n_params / n1) ** (1.0 / exponent)
  return float(fit.compute_optimal(compute)[1])


@dataclasses.dataclass(frozen=True)
class TrainingEstimate:
  params: ParamCounts
  tokens: float
  flops_by_method: dict[str, float]  # '6nd' and flops.training_flops for each of its methods
  method: str  # the count that time and money are based on
  accelerator: str
  num_accelerators: int
  mfu: float
  seconds: float
  accelerator_hours: float
  price_per_hour_usd: float
  usd: float

  @property
  def flops(self) -> float:
    return self.flops_by_method[self.method]


def training_time_s(total_flops: float, peak_flops_per_s: float, num_accelerators: int,
                    mfu: float) -> float:
  if num_accelerators < 1 or not 0.0 < mfu <= 1.0:
    raise ValueError(f'num_accelerators={num_accelerators} must be >= 1 and mfu={mfu} in (0, 1].')
  return total_flops / (num_accelerators * peak_flops_per_s * mfu)


def training_estimate(cfg: GPTConfig, seq_len: int, tokens: float,
                      accelerator: str | Accelerator = 'a100', *, num_accelerators: int = 1,
                      mfu: float = 0.4, method: str = 'full', dtype: str = 'bfloat16',
                      price_per_hour: float | None = None) -> TrainingEstimate:
  """FLOPs, wall time, accelerator-hours and dollars to train cfg on `tokens` tokens."""
  name, chip = resolve_accelerator(accelerator)
  counts = flops.param_counts(cfg)
  by_method = {'6nd': 6.0 * counts.total * tokens}
  by_method.update({m: flops.training_flops(cfg, seq_len, tokens, m) for m in flops.FLOP_METHODS})
  if method not in by_method:
    raise ValueError(f'method={method!r}; choose one of {METHODS}.')
  seconds = training_time_s(by_method[method], peak_flops(chip, dtype), num_accelerators, mfu)
  price = chip.price_per_hour_usd if price_per_hour is None else price_per_hour
  hours = num_accelerators * seconds / HOUR
  return TrainingEstimate(
      params=counts, tokens=tokens, flops_by_method=by_method, method=method, accelerator=name,
      num_accelerators=num_accelerators, mfu=mfu, seconds=seconds, accelerator_hours=hours,
      price_per_hour_usd=price, usd=hours * price)


def kv_cache_bytes(cfg: GPTConfig, batch_size: int, context: int, kv_dtype: str = 'bfloat16'):
  """Keys and values of every layer for batch_size sequences of `context` tokens."""
  values_per_token = 2 * cfg.num_layers * cfg.kv_heads * cfg.head_dim  # K and V
  return batch_size * context * values_per_token * _bytes_per_value(kv_dtype)


@dataclasses.dataclass(frozen=True)
class ServingEstimate:
  batch_size: int
  context: int
  accelerator: str
  num_accelerators: int
  weight_bytes: float
  kv_bytes: float
  fits_in_memory: bool
  flops_per_step: float
  compute_s: float  # per decode step, at peak * efficiency
  memory_s: float  # per decode step, at bandwidth * efficiency
  bound: str  # 'memory' or 'compute': whichever takes longer
  tokens_per_s: float
  usd_per_1k_tokens: float
  accelerator_hours_per_1k_tokens: float

  @property
  def step_s(self) -> float:
    return max(self.compute_s, self.memory_s)


def serving_estimate(cfg: GPTConfig, accelerator: str | Accelerator = 'a100', *,
                     batch_size: int = 1, context: int | None = None,
                     weight_dtype: str = 'bfloat16', kv_dtype: str = 'bfloat16',
                     num_accelerators: int | None = None, price_per_hour: float | None = None,
                     efficiency: float = 1.0) -> ServingEstimate:
  """Decode cost per generated token with `context` cached tokens per sequence (max_seq_len).

  num_accelerators=None takes the fewest chips whose memory holds the weights and the KV cache;
  the step is assumed split perfectly across them (tensor parallel), so compute and bandwidth
  scale with the count and so does the price.
  """
  if batch_size < 1 or not 0.0 < efficiency <= 1.0:
    raise ValueError(f'batch_size={batch_size} must be >= 1 and efficiency={efficiency} in (0, 1].')
  context = cfg.max_seq_len if context is None else context
  name, chip = resolve_accelerator(accelerator)
  weight_bytes = flops.param_counts(cfg).total * _bytes_per_value(weight_dtype)
  kv_bytes = kv_cache_bytes(cfg, batch_size, context, kv_dtype)
  needed = max(1, math.ceil((weight_bytes + kv_bytes) / chip.memory_bytes))
  n = needed if num_accelerators is None else num_accelerators
  # One token per sequence attending to `context` keys: the 'full' count at seq_len=context is
  # exactly the matmuls plus QK^T and AV over those keys.
  flops_per_step = batch_size * flops.forward_flops_per_token(cfg, context, 'full')
  # Quantised weights are expanded to bf16 for the matmuls; fp32 weights run at the fp32 peak.
  matmul_dtype = 'float32' if weight_dtype == 'float32' else 'bfloat16'
  compute_s = flops_per_step / (n * peak_flops(chip, matmul_dtype) * efficiency)
  memory_s = (weight_bytes + kv_bytes) / (n * chip.memory_bandwidth_bytes_per_s * efficiency)
  step_s = max(compute_s, memory_s)
  price = chip.price_per_hour_usd if price_per_hour is None else price_per_hour
  hours_per_1k = n * step_s * (1000.0 / batch_size) / HOUR
  return ServingEstimate(
      batch_size=batch_size, context=context, accelerator=name, num_accelerators=n,
      weight_bytes=weight_bytes, kv_bytes=kv_bytes, fits_in_memory=n >= needed,
      flops_per_step=flops_per_step, compute_s=compute_s, memory_s=memory_s,
      bound='memory' if memory_s >= compute_s else 'compute', tokens_per_s=batch_size / step_s,
      usd_per_1k_tokens=hours_per_1k * price, accelerator_hours_per_1k_tokens=hours_per_1k)


def _num(x: float) -> str:
  """3 significant figures with a K/M/B/T suffix (or an exponent beyond 1e15)."""
  for size, suffix in ((1e12, 'T'), (1e9, 'B'), (1e6, 'M'), (1e3, 'K')):
    if 1e15 > abs(x) >= size:
      return f'{x / size:.3g}{suffix}'
  return f'{x:.3g}'


def format_report(name: str, train: TrainingEstimate, serve: ServingEstimate,
                  optimal_tokens: dict[str, float], seq_len: int) -> str:
  p = train.params
  flop_counts = ' | '.join(f'{m} {f:.3g}' for m, f in train.flops_by_method.items())
  optimal = '; '.join(f'{_num(d)} ({how})' for how, d in optimal_tokens.items())
  gb = lambda b: f'{b / 1e9:.3g} GB'
  lines = [
      f'Model {name}: {_num(p.total)} parameters ({_num(p.non_embedding)} non-embedding), '
      f'training context {seq_len}',
      '',
      f'Training on {_num(train.tokens)} tokens  (compute-optimal: {optimal})',
      f'  FLOPs      {flop_counts}   (time uses {train.method!r})',
      f'  hardware   {train.num_accelerators} x {train.accelerator} at {100 * train.mfu:.0f}% MFU',
      f'  time       {format_duration(train.seconds)}  =  {_num(train.accelerator_hours)} '
      f'accelerator-hours',
      f'  cost       ${_num(train.usd)} at ${train.price_per_hour_usd:.2f} per accelerator-hour',
      '',
      f'Serving: batch {serve.batch_size}, context {serve.context}, on {serve.num_accelerators} x '
      f'{serve.accelerator}' + ('' if serve.fits_in_memory else '  (WARNING: does not fit)'),
      f'  memory     weights {gb(serve.weight_bytes)} + KV cache {gb(serve.kv_bytes)} per step',
      f'  per step   compute {1e3 * serve.compute_s:.3g} ms vs memory {1e3 * serve.memory_s:.3g} ms'
      f'  ->  {serve.bound}-bound',
      f'  throughput {serve.tokens_per_s:.3g} tokens/s;  ${serve.usd_per_1k_tokens:.3g} per 1,000 '
      f'tokens ({serve.accelerator_hours_per_1k_tokens:.3g} accelerator-hours)',
  ]
  return '\n'.join(lines)


def _load_fit(spec: str) -> ChinchillaFit | None:
  """'' -> None, 'hoffmann2022' -> the published fit, else a JSON file with E, A, B, alpha, beta."""
  if not spec:
    return None
  if spec == 'hoffmann2022':
    return ChinchillaFit(**HOFFMANN_2022_FIT)
  with open(spec) as f:
    values = json.load(f)
  return ChinchillaFit(**{k: float(values[k]) for k in CHINCHILLA_PARAMS})


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  if not (math.isfinite(f.tokens) and f.tokens >= 0):
    raise ValueError(f'--tokens={f.tokens} must be a finite number >= 0 (0: 20 per parameter).')
  if f.price_per_hour is not None and not (math.isfinite(f.price_per_hour) and
                                           f.price_per_hour >= 0):
    raise ValueError(f'--price_per_hour={f.price_per_hour} must be a finite number of USD >= 0.')
  config = f.config
  cfg = GPTConfig.from_config(config.model)
  seq_len = int(config.data.seq_len) if 'data' in config else cfg.max_seq_len
  counts = flops.param_counts(cfg)
  optimal = {'20 tokens/param': chinchilla_tokens(counts.total)}
  fit = _load_fit(f.fit)
  if fit is not None:
    optimal[f'fit {f.fit}'] = chinchilla_tokens(counts.total, fit)
  tokens = f.tokens or optimal['20 tokens/param']  # --tokens unset: train compute-optimally
  train = training_estimate(cfg, seq_len, tokens, f.accelerator, mfu=f.mfu, method=f.method,
                            num_accelerators=f.num_accelerators, price_per_hour=f.price_per_hour)
  serve = serving_estimate(cfg, f.accelerator, batch_size=f.batch_size, context=f.context or None,
                           weight_dtype=f.weight_dtype, kv_dtype=f.kv_dtype,
                           num_accelerators=f.serve_accelerators or None,
                           price_per_hour=f.price_per_hour, efficiency=f.serve_efficiency)
  name = config_flags.get_config_filename(f['config'])
  print(format_report(name, train, serve, optimal, seq_len))


def define_flags() -> None:
  """Flags exist only when run as a script: importing the library must not claim global names."""
  config_flags.DEFINE_config_file('config', None, 'A get_config() file, e.g. experiments/configs/'
                                  'gpt3.py:175b (--config.model.x=y overrides).')
  flags.DEFINE_float('tokens', 0.0, 'Training tokens; 0 means 20 per parameter (Chinchilla).')
  flags.DEFINE_string('accelerator', 'a100', f'One of {sorted(flops.ACCELERATORS)}.')
  flags.DEFINE_integer('num_accelerators', 1, 'Chips training in parallel.')
  flags.DEFINE_float('mfu', 0.4, 'Model FLOPs utilisation of the training run.')
  flags.DEFINE_enum('method', 'full', list(METHODS), 'FLOP count that time is based on.')
  flags.DEFINE_float('price_per_hour', None, 'USD per accelerator-hour; default: flops table.')
  flags.DEFINE_string('fit', '', "L(N, D) fit for optimal tokens: 'hoffmann2022' or a JSON file.")
  flags.DEFINE_integer('batch_size', 1, 'Serving: sequences decoded together.')
  flags.DEFINE_integer('context', 0, 'Serving: tokens in each KV cache; 0 means max_seq_len.')
  flags.DEFINE_enum('weight_dtype', 'bfloat16', list(BYTES_PER_VALUE), 'Serving weight storage.')
  flags.DEFINE_enum('kv_dtype', 'bfloat16', list(BYTES_PER_VALUE), 'Serving KV-cache storage.')
  flags.DEFINE_integer('serve_accelerators', 0, 'Serving chips; 0 means the fewest that fit.')
  flags.DEFINE_float('serve_efficiency', 1.0, 'Fraction of peak FLOP/s and bandwidth reached.')
  flags.mark_flag_as_required('config')
