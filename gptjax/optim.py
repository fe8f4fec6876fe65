"""AdamW with a warmup schedule, global-norm clipping and weight decay on matrices only."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

SCHEDULES = ('cosine', 'constant', 'inverse_sqrt')
# Parameters that are decayed: weight matrices and embedding tables. Norm scales and biases are not:
# decaying them pulls activations toward zero without regularising anything useful.
DECAYED_PARAM_NAMES = ('kernel', 'embedding', 'pos_embed')


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then cosine decay, a constant, or 1/sqrt(step) decay."""
  peak = train_config.learning_rate
  warmup = int(train_config.warmup_steps)
  total = int(train_config.num_steps)
  name = train_config.schedule
  if name not in SCHEDULES:
    raise ValueError(f'train.schedule={name!r}; choose one of {SCHEDULES}.')
  if warmup < 0 or (name == 'cosine' and warmup >= total):
    raise ValueError(f'train.warmup_steps={warmup} must be in [0, num_steps={total}) for a cosine '
                     'schedule; shorten the warmup or train longer.')
  if name == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total,
        end_value=peak * train_config.min_lr_ratio)
  warmup_fn = optax.linear_schedule(0.0, peak, max(warmup, 1))
  if name == 'constant':
    after_fn = optax.constant_schedule(peak)
  else:
    after_fn = lambda step: peak * jax.lax.rsqrt((step + max(warmup, 1)) / max(warmup, 1))
  return optax.join_schedules([warmup_fn, after_fn], [warmup])


def decay_mask(params: Any) -> Any:
  def is_decayed(path, _) -> bool:
    names = [entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey)]
    return bool(names) and names[-1] in DECAYED_PARAM_NAMES
  return jax.tree_util.tree_map_with_path(is_decayed, params)


def make_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(train_config)
  adamw = optax.adamw(schedule, b1=train_config.b1, b2=train_config.b2, eps=train_config.eps,
                      weight_decay=train_config.weight_decay, mask=decay_mask)
  if train_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(train_config.grad_clip), adamw)
  return adamw
