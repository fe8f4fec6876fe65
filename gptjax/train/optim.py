"""AdamW with a warmup schedule, global-norm clipping and weight decay on matrices only.

Under muP (`model.parametrization='mup'`, see `gptjax/model/parametrization.py`) each parameter's
Adam update is scaled by its class's learning-rate multiplier before the weight decay is added, so
the decay per step stays lr(t) * weight_decay at every width.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gptjax.model import parametrization
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT

SCHEDULES = ('cosine', 'constant', 'inverse_sqrt')
# Parameters that are decayed: weight matrices and embedding tables. Norm scales and biases are not:
# decaying them pulls activations toward zero without regularising anything useful.
DECAYED_PARAM_NAMES = ('kernel', 'embedding', 'pos_embed')


def check_config(train_config: ml_collections.ConfigDict) -> None:
  """Raises, naming the field, for optimizer settings outside their range, and a bad schedule."""
  t = train_config
  ranges = {'learning_rate': (t.learning_rate > 0, '> 0'),
            'weight_decay': (t.weight_decay >= 0, '>= 0'),
            'b1': (0 <= t.b1 < 1, 'in [0, 1)'), 'b2': (0 <= t.b2 < 1, 'in [0, 1)'),
            'eps': (t.eps > 0, '> 0'), 'grad_clip': (t.grad_clip >= 0, '>= 0 (0 disables it)'),
            'min_lr_ratio': (0 <= t.min_lr_ratio <= 1, 'in [0, 1]')}
  for name, (ok, wanted) in ranges.items():
    if not ok:
      raise ValueError(f'train.{name}={t[name]} must be {wanted}.')
  learning_rate_schedule(t)


def schedule_numbers(train_config: ml_collections.ConfigDict) -> np.ndarray:
  """float32 [4]: the peak learning rate, warmup steps, total steps and floor ratio of the schedule.

  A jitted train step takes these as an argument rather than as constants, so members of a sweep
  that differ only in their schedules (the same size at several budgets) compile to the same
  program and share it through the compilation cache.
  """
  t = train_config
  return np.array([t.learning_rate, t.warmup_steps, t.num_steps, t.min_lr_ratio], np.float32)


def learning_rate_schedule(train_config: ml_collections.ConfigDict,
                           numbers: Any = None) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then cosine decay, a constant, or 1/sqrt(step) decay.

  The kind of schedule comes from the config; its numbers from `numbers` (`schedule_numbers`,
  possibly traced) or else the config. optax's schedules take their lengths as Python numbers
  only, so the three shapes are written out here, as optax's warmup_cosine_decay_schedule and a
  linear warmup joined to a constant or 1/sqrt decay compute them.
  """
  t = train_config
  name = t.schedule
  if name not in SCHEDULES:
    raise ValueError(f'train.schedule={name!r}; choose one of {SCHEDULES}.')
  warmup_steps, total_steps = int(t.warmup_steps), int(t.num_steps)
  if warmup_steps < 0 or (name == 'cosine' and warmup_steps >= total_steps):
    raise ValueError(f'train.warmup_steps={warmup_steps} must be in [0, num_steps={total_steps}) '
                     'for a cosine schedule; shorten the warmup or train longer.')
  peak, warmup, total, floor = (schedule_numbers(t) if numbers is None else numbers)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warming = peak * step / jnp.maximum(warmup, 1.0)
    since = step - warmup  # steps after the warmup
    if name == 'cosine':
      decay_steps = total - warmup
      cosine = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(since, decay_steps) / decay_steps))
      after = peak * ((1 - floor) * cosine + floor)
    elif name == 'constant':
      after = peak * jnp.ones_like(step)
    else:
      width = jnp.maximum(warmup, 1.0)
      after = peak * jax.lax.rsqrt((since + width) / width)
    return jnp.where(step < warmup, warming, after)

  return schedule


def decay_mask(params: Any) -> Any:
  def is_decayed(path, _) -> bool:
    names = [entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey)]
    return bool(names) and names[-1] in DECAYED_PARAM_NAMES
  return jax.tree_util.tree_map_with_path(is_decayed, params)


def abstract_params(model_cfg: GPTConfig) -> Any:
  """The model's parameters as shapes in flax `LogicallyPartitioned` boxes; nothing is allocated."""
  model = GPT(dataclasses.replace(model_cfg, attention_impl='xla'))  # any backend: same params
  init = lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params']
  return jax.eval_shape(init)


def param_table(model_cfg: GPTConfig) -> list[parametrization.Row]:
  """Every parameter of the model with its logical axes, class and width multipliers."""
  return parametrization.table(abstract_params(model_cfg), model_cfg.width_mult)


def scale_by_class(lr_multipliers: Mapping[tuple[str, ...], float]) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its learning-rate multiplier, looked up by its path of
  dict keys (`parametrization.dict_path`); a parameter missing from the table is an error."""

  def update(updates, state, params=None):
    del params

    def scale(path, update_leaf):
      key = parametrization.dict_path(path)
      if key not in lr_multipliers:
        raise KeyError(f'No learning-rate multiplier for parameter {"/".join(key)}.')
      mult = lr_multipliers[key]
      return update_leaf if mult == 1.0 else update_leaf * jnp.asarray(mult, update_leaf.dtype)

    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(train_config: ml_collections.ConfigDict, model_cfg: GPTConfig | None = None,
                   schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
  """AdamW; under muP the model's config gives each parameter its learning-rate multiplier.

  `schedule` defaults to the config's `learning_rate_schedule`; a jitted step passes one built on
  its traced `schedule_numbers`.

  The SP form is `optax.adamw` itself; the muP form is the same chain with the per-class scale
  between Adam's direction and the decoupled weight decay, so at d_model == base_width (every
  multiplier 1) it computes the same updates bit for bit.
  """
  schedule = schedule or learning_rate_schedule(train_config)
  t = train_config
  if model_cfg is None or model_cfg.parametrization == 'sp':
    adamw = optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
                        mask=decay_mask)
  else:
    lr_multipliers = {row.path: row.multipliers.learning_rate for row in param_table(model_cfg)}
    adamw = optax.chain(optax.scale_by_adam(b1=t.b1, b2=t.b2, eps=t.eps),
                        scale_by_class(lr_multipliers),
                        optax.add_decayed_weights(t.weight_decay, decay_mask),
                        optax.scale_by_learning_rate(schedule))
  if train_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(train_config.grad_clip), adamw)
  return adamw
