"""Where a jitted step's time goes: a `jax.profiler` trace summarised by kind of compiled op.

XLA names each compiled op after its kind plus a number (`ynn_fusion.117`, `dot.745`,
`multiply_tanh_fusion.3`), so summing the trace's op durations by that kind gives a profile that
survives recompilation and can be compared across changes. On a CPU the
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
                log_dir: str) -> tuple[Any, str]:
  """Runs `state = step_fn(state, batch)[0]` `steps` times under the profiler.

  Returns the final state (a donating step consumes its input) and the path of the Perfetto
  trace, which stays in `log_dir` for `summarize`, Perfetto or TensorBoard.
  """
  if steps < 1:
    raise ValueError(f'steps={steps} must be at least 1.')
  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    for _ in range(steps):
      state = step_fn(state, batch)[0]
    jax.block_until_ready(state)
  return state, _latest_trace(log_dir)


def _latest_trace(log_dir: str) -> str:
  paths = glob.glob(os.path.join(log_dir, '**', 'perfetto_trace.json.gz'), recursive=True)
  if not paths:
    raise FileNotFoundError(f'No perfetto_trace.json.gz under {log_dir}: the profiler wrote no '
                            'trace. Check that the directory is writable.')
  return max(paths, key=os.path.getmtime)


def summarize(trace_path: str, steps: int) -> list[OpKind]:
  """The compiled ops of a Perfetto trace grouped by kind, per step, largest total first."""
  return _group(_op_durations(trace_path), steps, _op_kind)


def summarize_by_source(trace_path: str, steps: int, hlo_text: str) -> list[OpKind]:
  """The compiled ops grouped by kind and by the model operation they came from.

  The kind alone does not say which part of the model a `copy_bitcast_fusion` serves; the
  compiled HLO's metadata does (`attn/transpose`, backward). Layers are folded together
  (`block_*`), so one row is that operation summed over every layer. Ops the HLO does not name
  (wrappers of other backends, e.g. cuDNN kernels) are grouped by kind alone.
  """
  sources = source_ops(hlo_text)
  return _group(_op_durations(trace_path), steps,
                lambda op: f'{_op_kind(op)} <- {sources[op]}' if op in sources else _op_kind(op))


def source_ops(hlo_text: str) -> dict[str, str]:
  """Compiled instruction name -> 'forward|backward module/path/primitive' from its metadata."""
  sources = {}
  for name, op_name in _HLO_OP_NAME.findall(hlo_text):
    path = op_name.split(';')[0]  # a fusion of several ops lists them all; the first names it
    direction = 'backward' if 'transpose(jvp(' in path else 'forward'
    parts = [part for part in path.split('/') if part not in _CONTROL_FLOW
             and not part.startswith(('jit(', 'jvp(', 'transpose('))]
    sources[name] = direction + ' ' + re.sub(r'block_\d+', 'block_*', '/'.join(parts))
  return sources


# `%name = shape opcode(...), ..., metadata={op_name="..."}` in HLO text.
_HLO_OP_NAME = re.compile(r'^\s*(?:ROOT )?%?([\w.-]+) = .*?op_name="([^"]*)"', re.MULTILINE)
_CONTROL_FLOW = frozenset({'while', 'body', 'cond', 'closed_call', 'checkpoint', 'remat'})


def _op_kind(op_name: str) -> str:
  return re.sub(r'\.\d+$', '', op_name)


def _op_durations(trace_path: str) -> list[tuple[str, float]]:
  """(compiled op name, microseconds) of every complete event that is not a wrapper."""
  with gzip.open(trace_path, 'rt') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  return [(event['name'], event.get('dur', 0.0)) for event in events
          if event.get('ph') == 'X' and not _WRAPPERS.match(event.get('name', ''))]


def _group(durations: list[tuple[str, float]], steps: int,
           key: Callable[[str], str]) -> list[OpKind]:
  micros: dict[str, float] = collections.defaultdict(float)
  calls: dict[str, int] = collections.defaultdict(int)
  for name, dur in durations:
    group = key(name)
    micros[group] += dur
    calls[group] += 1
  return sorted((OpKind(group, micros[group] / 1e3 / steps, calls[group] / steps)
                 for group in micros), key=lambda op: -op.ms_per_step)
