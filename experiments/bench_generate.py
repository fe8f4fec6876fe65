"""Decode speed with the KV cache vs recomputing the whole prefix every step.

  python -m experiments.bench_generate [--new_tokens=256 --batch_sizes=1,8 --d_model=256 ...]

Both decoders are greedy and jitted whole (a `while_loop` / `fori_loop` inside one call), on the
same random model, and are timed after a compile-and-warm-up call (median of --repeats runs).
The uncached decoder keeps a fixed [B, P + N] buffer and runs the full forward over all of it each
step (one compilation; a shape that grew with the prefix would compile N times), so it does up to
about twice the work of an exact growing prefix; its cost per step is quadratic in the length
either way, against the cached decoder's one token of work per step. With the defaults it runs
for 5-8 minutes on 2 CPU cores, nearly all of it in the uncached decoder at batch 8.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

from gptjax.generate import SamplingConfig, generate
from gptjax.model import GPT, GPTConfig

_NEW_TOKENS = flags.DEFINE_integer('new_tokens', 256, 'Tokens generated per sequence.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 16, 'Prompt tokens per sequence.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '8'], 'Batch sizes to time.')
_D_MODEL = flags.DEFINE_integer('d_model', 256, 'Model width.')
_NUM_LAYERS = flags.DEFINE_integer('num_layers', 4, 'Model depth.')
_NUM_HEADS = flags.DEFINE_integer('num_heads', 4, 'Attention heads.')
_VOCAB = flags.DEFINE_integer('vocab_size', 256, 'Vocabulary (bytes by default).')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Timed runs per setting; the median is reported.')


@functools.partial(jax.jit, static_argnames=('config', 'max_new_tokens'))
def generate_uncached(params: Any, prompt_BxP: jax.Array, *, config: GPTConfig,
                      max_new_tokens: int) -> jax.Array:
  """Greedy decoding that reruns the model over the whole buffer for every new token."""
  b, p = prompt_BxP.shape
  model = GPT(config)
  buffer_BxT = jnp.concatenate([prompt_BxP, jnp.zeros((b, max_new_tokens), jnp.int32)], axis=1)

  def step(i, buffer_BxT):
    logits_BxTxV = model.apply({'params': params}, buffer_BxT)  # causal: later slots don't leak
    logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, p + i - 1, axis=1, keepdims=False)
    token_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    return jax.lax.dynamic_update_slice(buffer_BxT, token_B[:, None], (0, p + i))

  return jax.lax.fori_loop(0, max_new_tokens, step, buffer_BxT)[:, p:]


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
  jax.block_until_ready(run())  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv: Sequence[str]) -> None:
  del argv
  n, p = _NEW_TOKENS.value, _PROMPT_LEN.value
  cfg = GPTConfig(vocab_size=_VOCAB.value, d_model=_D_MODEL.value, num_layers=_NUM_LAYERS.value,
                  num_heads=_NUM_HEADS.value, max_seq_len=p + n)
  init = jax.jit(GPT(cfg).init)
  params = nn.unbox(init(jax.random.key(0), jnp.zeros((1, p + n), jnp.int32))['params'])
  greedy = SamplingConfig(temperature=0.0)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f'{jax.devices()[0].device_kind}: {n_params / 1e6:.2f}M params (d_model {cfg.d_model}, '
        f'{cfg.num_layers} layers), prompt {p}, {n} new tokens, greedy, median of {_REPEATS.value}')
  print(f'{"batch":>5}  {"decoder":<10} {"tokens/s":>10} {"ms/token":>9} {"speedup":>8}')
  for b in (int(x) for x in _BATCH_SIZES.value):
    prompt_BxP = jax.random.randint(jax.random.key(1), (b, p), 0, cfg.vocab_size)
    cached = generate(params, prompt_BxP, None, jax.random.key(0), config=cfg, max_new_tokens=n,
                      sampling=greedy)
    uncached = generate_uncached(params, prompt_BxP, config=cfg, max_new_tokens=n)
    if not bool(jnp.all(cached.tokens_BxN == uncached)):  # float32: the two must agree exactly
      print(f'  note: batch {b}: cached and uncached greedy tokens differ (rounding near a tie)')
    times = {
        'cached': median_seconds(lambda: generate(
            params, prompt_BxP, None, jax.random.key(0), config=cfg, max_new_tokens=n,
            sampling=greedy), _REPEATS.value),
        'uncached': median_seconds(lambda: generate_uncached(
            params, prompt_BxP, config=cfg, max_new_tokens=n), _REPEATS.value),
    }
    for name, seconds in times.items():
      speedup = times['uncached'] / seconds
      print(f'{b:>5}  {name:<10} {b * n / seconds:>10.1f} {1e3 * seconds / n:>9.2f} '
            f'{speedup:>7.1f}x')


if __name__ == '__main__':
  app.run(main)
