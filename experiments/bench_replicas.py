r"""Seed replicas as one program: R copies of a sweep member trained by `vmap` over the replicas,
against the same R copies trained one after another. Prints ms per replica-step and the speedup.

  python -m experiments.bench_replicas --sweep=experiments/sweeps/cpu_scaling.py \
      --members=c1e11_d16l2,c1e12_d48l2 --replicas=1,2,4

Each replica has its own initialisation (seed) and its own batch, as a seed replica in the sweep
does; the vmapped step is the member's own train step. Both ways run interleaved, so load from
other jobs on a shared machine falls on both alike. Results are in BENCHMARKS.md.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import launch
from gptjax import train
from gptjax.model import GPT
from gptjax.parallel import hardware, sharding
from gptjax.train import optim, steps

_SWEEP = flags.DEFINE_string('sweep', 'experiments/sweeps/cpu_scaling.py', 'Sweep file.')
_MEMBERS = flags.DEFINE_list('members', ['c1e11_d16l2', 'c1e12_d48l2'], 'Members to time.')
_REPLICAS = flags.DEFINE_list('replicas', ['1', '2', '4'], 'Replica counts R.')
_STEPS = flags.DEFINE_integer('steps', 60, 'Timed steps per measurement.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Interleaved rounds; the median is reported.')


def _time(fn, state, batches, steps_count: int) -> tuple[float, object]:
  """Seconds per call of `fn` over `steps_count` calls, after one untimed call (compilation)."""
  state, metrics = fn(state, batches[0])
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(steps_count):
    state, metrics = fn(state, batches[i % len(batches)])
  jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / steps_count, state


def bench_member(base, member: launch.Member, replica_counts: Sequence[int], steps_count: int,
                 rounds: int) -> None:
  config = launch.resolve(base, member)
  config.model.vocab_size = 256  # the byte tokenizer's; no corpus is read
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.mesh)
  setup = hardware.resolve(config, mesh)
  step_fn = functools.partial(steps.train_step, model=GPT(setup.model),
                              optimizer=optim.make_optimizer(config.train, setup.model),
                              schedule=optim.learning_rate_schedule(config.train))
  single = jax.jit(step_fn, donate_argnums=0)
  batched = jax.jit(jax.vmap(step_fn), donate_argnums=0)
  b, t = config.data.batch_size, config.data.seq_len
  rng = np.random.default_rng(0)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    init = jax.jit(lambda key: train.state_initializer(config)(key))
    for r in replica_counts:
      states = [nn.unbox(init(jax.random.key(seed))) for seed in range(r)]
      batches_RxBxT1 = [jnp.asarray(rng.integers(0, 256, (r, b, t + 1)), jnp.int32)
                        for _ in range(4)]
      separate, together = [], []
      for _ in range(rounds):
        seconds = 0.0
        for i in range(r):
          per_call, states[i] = _time(single, states[i], [x[i] for x in batches_RxBxT1],
                                      steps_count)
          seconds += per_call
        separate.append(seconds / r)
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
        per_call, stacked = _time(batched, stacked, batches_RxBxT1, steps_count)
        states = [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(r)]
        together.append(per_call / r)
      one, many = statistics.median(separate), statistics.median(together)
      print(f'{member.name:<14} R={r}: separate {1e3 * one:7.2f} ms/replica-step, vmapped '
            f'{1e3 * many:7.2f} ms/replica-step: {one / many:4.2f}x', flush=True)


def main(argv: Sequence[str]) -> None:
  del argv
  base, members = launch.load_sweep_file(_SWEEP.value)
  by_name = {m.name: m for m in members}
  unknown = [name for name in _MEMBERS.value if name not in by_name]
  if unknown:
    raise app.UsageError(f'--members names {unknown}, not in {_SWEEP.value}.')
  print(f'{jax.devices()[0].device_kind}: {_STEPS.value} steps per measurement, median of '
        f'{_ROUNDS.value} interleaved rounds')
  for name in _MEMBERS.value:
    bench_member(base, by_name[name], [int(r) for r in _REPLICAS.value], _STEPS.value,
                 _ROUNDS.value)


if __name__ == '__main__':
  app.run(main)
