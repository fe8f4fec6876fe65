"""Small random-weight GPTs shared by the decoding tests."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT


@functools.lru_cache(maxsize=None)
def random_model(std: float, defaults: tuple, overrides: tuple) -> tuple[GPTConfig, dict]:
  """A config and params drawn from N(0, std); a large std makes next-token distributions peaked.

  Shapes come from a trace and values from NumPy: compiling flax's initialisers costs seconds a
  config. Arguments are tuples of (field, value) pairs so results can be cached.
  """
  cfg = GPTConfig(**{**dict(defaults), **dict(overrides)})
  shapes = nn.unbox(jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, std, s.shape), s.dtype),
                        shapes['params'])
  return cfg, params
