"""A GPT with a scalar head: the reward model of RL from preferences, and PPO's value model.

The trunk is `gptjax.model.GPT` stopped before its readout (`return_hidden=True`); a Dense
D -> 1 head maps each position's final-normed hidden state to a score, so one forward pass gives
a score per position [B, T]. A reward model reads the one at each sequence's last real token, the
only position that has seen all of it. A value model reads them all: the score at t is the value
of the prefix up to t, the state in which token t + 1 is chosen, so values pair with tokens under
the same one-position shift as logits (scores[:, :-1] with tokens[:, 1:]).

Rows may be padded on either side: the mask goes to attention as its key mask and positions count
from each row's first real token, so a padded row scores exactly what the same tokens unpadded would
(the layout `gptjax/generate/decoding.py` generates from: a left-padded prompt, then the response,
then right padding).

The parameters are {'trunk': GPT params without the readout, 'scalar_head': {kernel, bias}};
`attach_scalar_head` builds them from a trained GPT's, such as the SFT model's.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.train.masked_tokens import at_last_true

Array = jax.Array

HEAD_AXES = ('embed', None)  # the score has no axis of its own to shard


class ScalarHeadGPT(nn.Module):
  """(tokens_BxT, mask_BxT) -> float32 scores [B, T], one per position; see the module doc."""

  config: GPTConfig

  @nn.compact
  def __call__(self, tokens_BxT: Array, mask_BxT: Array, *, deterministic: bool = True) -> Array:
    cfg = self.config
    mask_BxT = mask_BxT.astype(bool)
    positions_BxT = jnp.maximum(jnp.cumsum(mask_BxT.astype(jnp.int32), axis=1) - 1, 0)
    hidden_BxTxD = GPT(cfg, name='trunk')(tokens_BxT, positions_BxT=positions_BxT,
                                           kv_mask_BxS=mask_BxT, deterministic=deterministic,
                                           return_hidden=True)
    # In float32: a score is a difference-sensitive scalar, and a D -> 1 head costs nothing.
    head = nn.Dense(1, dtype=jnp.float32, param_dtype=cfg.weights_dtype,
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.normal(stddev=cfg.init_std), HEAD_AXES),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
                    name='scalar_head')
    return head(hidden_BxTxD.astype(jnp.float32))[..., 0]


def sequence_scores(scores_BxT: Array, mask_BxT: Array) -> Array:
  """[B]: each row's score at its last real (True) token, the reward of the whole sequence."""
  return at_last_true(scores_BxT, mask_BxT)


def rewards(params: Any, config: GPTConfig, tokens_BxT: Array, mask_BxT: Array) -> Array:
  """The reward model's [B] rewards of padded sequences, in one forward pass without dropout."""
  scores_BxT = ScalarHeadGPT(config).apply({'params': params}, tokens_BxT, mask_BxT)
  return sequence_scores(scores_BxT, mask_BxT)


def attach_scalar_head(gpt_params: Any, config: GPTConfig, seed: int = 0) -> dict[str, Any]:
  """A scalar-headed model's params from a GPT's: its trunk as is (an untied readout is dropped,
  nothing reads it) and a new head drawn as `ScalarHeadGPT` initialises one: kernel
  N(0, init_std^2), bias 0."""
  trunk = {name: value for name, value in gpt_params.items() if name != 'head'}
  kernel_Dx1 = np.random.default_rng(seed).normal(0.0, config.init_std, (config.d_model, 1))
  dtype = config.weights_dtype
  return {'trunk': trunk, 'scalar_head': {'kernel': jnp.asarray(kernel_Dx1, dtype),
                                          'bias': jnp.zeros((1,), dtype)}}
