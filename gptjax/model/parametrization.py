"""How each parameter scales with width: the standard (SP) or maximal-update (muP) parametrisation.

Under muP (Yang, Hu et al., "Tensor Programs V", 2022) a model of d_model = m * base_width trains
like its base_width proxy: the best learning rate, init scale and output multiplier found on the
proxy carry over to every width. Every parameter falls into one of four classes, read from its
logical axes in `CLASSES` below (nothing else decides a class, and axes missing from the table are
an error rather than a silent default):

  class   axes (fan_in -> fan_out)  init std x  Adam LR x  forward x
  input   fixed -> wide                  1           1          1      token, position tables
  hidden  wide -> wide               1/sqrt(m)      1/m         1      q, k, v, out, MLP kernels
  output  wide -> fixed                  1           1         1/m     the untied readout
  vector  1 -> wide (zeros, ones)        1           1          1      biases, norm scales

'Wide' axes grow with d_model ('embed', 'mlp', 'heads' x 'head_dim'); 'vocab' and 'length' do
not. Two more multipliers act on activations, not parameters:

  - the logits are multiplied by 1/m, tied or untied readout alike. With tied embeddings the one
    table keeps the input class (init and LR independent of width) and the multiplier alone makes
    the readout output-like; this is the multiplier form of muP's 1/fan_in readout (its table 9),
    which lets one matrix serve both ends.
  - attention scores are scaled as muP's 1/head_dim, written as 1/sqrt(head_dim) times
    sqrt(base_head_dim / head_dim) so that they equal SP's at the base width. (Queries and keys
    become correlated during training, so q.k grows like head_dim, not its square root.) With a
    fixed head count head_dim grows like m and the factor is 1/sqrt(m); with a fixed head_dim and
    more heads it is 1: the width multiplier applies only where head_dim grows.

At d_model == base_width every multiplier is exactly 1 and muP is SP, bit for bit. The scaling
assumes every wide dimension grows with d_model: the head count fixed (head_dim grows) or head_dim
fixed (heads grow), and the MLP width a multiple of d_model (`mlp_dim=0`). Weight decay is applied
after the per-class LR multiplier, so each step decays every weight by lr(t) * weight_decay of
itself at every width (the `mup` package's default); the decay does not shrink with 1/m.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable

import flax.linen as nn
import jax

PARAMETRIZATIONS = ('sp', 'mup')
INPUT, HIDDEN, OUTPUT, VECTOR = 'input', 'hidden', 'output', 'vector'
SCAN_AXIS = 'layers'  # the leading axis nn.scan adds to the blocks' parameters

# Logical axes of a parameter (without the scan's leading 'layers') -> its class.
CLASSES: dict[tuple[str, ...], str] = {
    ('vocab', 'embed'): INPUT,  # token embedding (and the tied readout)
    ('length', 'embed'): INPUT,  # learned positions
    ('embed', 'heads', 'head_dim'): HIDDEN,  # query
    ('embed', 'kv_heads', 'head_dim'): HIDDEN,  # key, value
    ('heads', 'head_dim', 'embed'): HIDDEN,  # attention output
    ('embed', 'mlp'): HIDDEN,  # MLP up and gate
    ('mlp', 'embed'): HIDDEN,  # MLP down
    ('embed', 'vocab'): OUTPUT,  # untied readout
    ('embed',): VECTOR,  # norm scales and biases, output biases
    ('mlp',): VECTOR,  # MLP up/gate biases
    ('heads', 'head_dim'): VECTOR,  # query bias
    ('kv_heads', 'head_dim'): VECTOR,  # key and value biases
}


@dataclasses.dataclass(frozen=True)
class Multipliers:
  """Factors on a parameter's SP init std and on the peak learning rate of its Adam update."""

  init_std: float
  learning_rate: float


def config_problem(parametrization: str, base_width: int, d_model: int, num_heads: int = 1,
                   base_head_dim: int = 0) -> str | None:
  """What is wrong with these model config values, with the fix; None if nothing is."""
  if parametrization not in PARAMETRIZATIONS:
    return f'parametrization={parametrization!r}; choose one of {PARAMETRIZATIONS}.'
  if base_width < 0:
    return f'base_width={base_width} must be positive (or 0 under SP, where it is unused).'
  if parametrization == 'mup' and base_width == 0:
    return ("parametrization='mup' needs base_width > 0: the d_model of the proxy whose "
            f'hyperparameters this model reuses (d_model={d_model} here; set base_width to it '
            'for the proxy itself).')
  if base_head_dim < 0:
    return f'base_head_dim={base_head_dim} must be positive (or 0: base_width / num_heads).'
  if parametrization == 'mup' and base_head_dim == 0 and base_width % num_heads:
    return (f'base_width={base_width} is not divisible by num_heads={num_heads}, so the proxy\'s '
            'head_dim is not base_width / num_heads; set base_head_dim to the proxy\'s head_dim.')
  return None


def base_head_dim(base_width: int, num_heads: int, base_head_dim_field: int) -> int:
  """The proxy's head_dim: the field where set, else base_width / num_heads (the proxy has this
  model's head count)."""
  return base_head_dim_field or base_width // num_heads


def width_mult(parametrization: str, d_model: int, base_width: int) -> float:
  """m = d_model / base_width under muP; 1 under SP, where nothing scales."""
  return d_model / base_width if parametrization == 'mup' else 1.0


def classify(axes: Iterable[str | None]) -> str:
  """The class of a parameter with these logical axes; unknown axes are an error."""
  axes = tuple(axes)
  key = axes[1:] if axes[:1] == (SCAN_AXIS,) else axes
  if key not in CLASSES:
    raise ValueError(f'No muP class for a parameter with logical axes {axes}: add its axes to '
                     'gptjax.model.parametrization.CLASSES as input, hidden, output or vector.')
  return CLASSES[key]


def multipliers(cls: str, m: float) -> Multipliers:
  if cls == HIDDEN:
    return Multipliers(init_std=1.0 / math.sqrt(m), learning_rate=1.0 / m)
  return Multipliers(init_std=1.0, learning_rate=1.0)


def init_multiplier(axes: tuple[str, ...], m: float) -> float:
  return multipliers(classify(axes), m).init_std


def readout_multiplier(m: float) -> float:
  return 1.0 / m


def attention_multiplier(parametrization: str, head_dim: int, base_head_dim: int) -> float:
  """The factor on the queries (so on every attention score) on top of 1/sqrt(head_dim):
  sqrt(base_head_dim / head_dim) under muP, 1 under SP."""
  return math.sqrt(base_head_dim / head_dim) if parametrization == 'mup' else 1.0


@dataclasses.dataclass(frozen=True)
class Row:
  path: tuple[str, ...]  # dict keys from the params root, e.g. ('block_0', 'mlp', 'up', 'kernel')
  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  cls: str
  multipliers: Multipliers


def dict_path(path: tuple[Any, ...]) -> tuple[str, ...]:
  """The dict keys of a pytree path; box attributes (flax's `.value`) are dropped."""
  return tuple(str(entry.key) for entry in path if isinstance(entry, jax.tree_util.DictKey))


def table(boxed_params: Any, m: float) -> list[Row]:
  """Every parameter of a tree of flax `LogicallyPartitioned` boxes (such as `jax.eval_shape` of
  the model's init gives) with its logical axes, class and multipliers at width multiple `m`."""
  rows = []
  leaves = jax.tree_util.tree_flatten_with_path(
      boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
  for path, leaf in leaves:
    if not isinstance(leaf, nn.LogicallyPartitioned):
      raise ValueError(f'Parameter {"/".join(dict_path(path))} has no logical axes; give it '
                       'names with nn.with_logical_partitioning so it can be classified.')
    cls = classify(leaf.names)
    rows.append(Row(dict_path(path), tuple(leaf.value.shape), tuple(leaf.names), cls,
                    multipliers(cls, m)))
  return rows


def format_table(rows: list[Row]) -> str:
  lines = [f'{"parameter":<40} {"shape":<18} {"axes":<34} {"class":<7} {"init x":>8} {"LR x":>8}']
  for row in rows:
    mult = row.multipliers
    lines.append(f'{"/".join(row.path):<40} {str(row.shape):<18} {str(row.axes):<34} '
                 f'{row.cls:<7} {mult.init_std:8.4g} {mult.learning_rate:8.4g}')
  return '\n'.join(lines)
