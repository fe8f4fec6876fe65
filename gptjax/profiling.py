"""Where a jitted step's time goes: a `jax.profiler` trace summarised by kind of compiled op.

XLA names each compiled op after its kind plus a number (`ynn_fusion.117`, `dot.745`,
`multiply_tanh_fusion.3`), so summing the trace's op durations by that kind gives a profile that
survives recompilation and can be compared across changes (BENCHMARKS.md, issue 6). On a CPU the
thunks of one step can run concurrently on different cores, so the kinds' times can add up to
more than the step; read them as shares, not as a partition of the wall time.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
from typing import Any, Callable, NamedTuple

import jax


class OpKind(NamedTuple):
  name: str  # e.g. 'ynn_fusion', 'dot', 'copy_bitcast_fusion'
  ms_per_step: float
  calls_per_step: float


# Events that wrap other events (the executor, the host-side Python and dispatch frames).
_WRAPPERS = re.compile(r'^(\$|ThunkExecutor|PjitFunction|SlinkyThreadPool|end: )')


def trace_steps(step_fn: Callable[..., Any], state: Any, batch: Any, steps: int,
                log_dir: str) -> tuple[Any, list[OpKind]]:
  """Runs `state = step_fn(state, batch)[0]` `steps` times under the profiler.

  Returns the final state (a donating step consumes its input) and the op kinds by time per step,
  largest first. The trace itself stays in `log_dir` for Perfetto or TensorBoard.
  """
  if steps < 1:
    raise ValueError(f'steps={steps} must be at least 1.')
  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    for _ in range(steps):
      state = step_fn(state, batch)[0]
    jax.block_until_ready(state)
  return state, summarize(_latest_trace(log_dir), steps)


def _latest_trace(log_dir: str) -> str:
  paths = glob.glob(os.path.join(log_dir, '**', 'perfetto_trace.json.gz'), recursive=True)
  if not paths:
    raise FileNotFoundError(f'No perfetto_trace.json.gz under {log_dir}: the profiler wrote no '
                            'trace. Check that the directory is writable.')
  return max(paths, key=os.path.getmtime)


def summarize(trace_path: str, steps: int) -> list[OpKind]:
  """The compiled ops of a Perfetto trace grouped by kind, per step, largest total first."""
  with gzip.open(trace_path, 'rt') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  micros: dict[str, float] = collections.defaultdict(float)
  calls: dict[str, int] = collections.defaultdict(int)
  for event in events:
    if event.get('ph') != 'X' or _WRAPPERS.match(event.get('name', '')):
      continue
    kind = re.sub(r'\.\d+$', '', event['name'])
    micros[kind] += event.get('dur', 0.0)
    calls[kind] += 1
  return sorted((OpKind(kind, micros[kind] / 1e3 / steps, calls[kind] / steps) for kind in micros),
                key=lambda op: -op.ms_per_step)
