"""Pure training and evaluation steps: functions of (state, batch), jitted by the caller with shardings.

A batch is either next-token windows, int32 [B, T+1] (inputs are [:, :-1], targets [:, 1:]), or rows
of inputs and labels, int32 [B, 2, T] (inputs [:, 0], labels [:, 1], `masking.IGNORE` where nothing
is predicted): the MLM objective's masked windows (`gptjax/data/masking.py`) and fine-tuning's
padded prompt/response examples (`gptjax/finetune/sft_data.py`). The batch's rank says which, so the
steps need no flag.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from gptjax.data import masking
from gptjax.model import peft
from gptjax.model.gpt import GPT

Array = jax.Array
Metrics = dict[str, Array]

@flax.struct.dataclass
class TrainState:
  step: Array  # int32 scalar: optimizer steps taken
  params: Any
  opt_state: Any


def token_nll(logits_BxTxV: Array, targets_BxT: Array) -> Array:
  """Per-token negative log-likelihood [B, T] in float32, without a gather over the vocabulary.

  The label's logit is picked by a masked sum rather than `take_along_axis`: a gather (and the
  scatter-add of its gradient) cannot fuse with the float32 upcast, so on a GPU it forced the whole
  [B, T, V] logits to be written once more in float32 (BENCHMARKS.md, GPU). As masked reductions
  and elementwise ops, the upcast, log-sum-exp, label pick and their gradients all fuse.
  """
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  log_normalizer_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  vocab_ids_V = jnp.arange(logits_BxTxV.shape[-1], dtype=targets_BxT.dtype)
  is_label_BxTxV = vocab_ids_V[None, None, :] == targets_BxT[..., None]
  label_logit_BxT = jnp.sum(jnp.where(is_label_BxTxV, logits_BxTxV, 0.0), axis=-1)
  return log_normalizer_BxT - label_logit_BxT


def cross_entropy(logits_BxTxV: Array, targets_BxT: Array) -> Array:
  """Mean next-token negative log-likelihood in nats, computed in float32."""
  return token_nll(logits_BxTxV, targets_BxT).mean()


def inputs_and_labels(batch: Array) -> tuple[Array, Array]:
  """(inputs [B, T], labels [B, T]) of a next-token [B, T+1] or masked [B, 2, T] batch."""
  if batch.ndim == 3:
    return batch[:, 0], batch[:, 1]
  return batch[:, :-1], batch[:, 1:]


def loss_fn(params: Any, model: GPT, batch: Array, dropout_key: Array | None,
            frozen_params: Any = None) -> Array:
  """Mean NLL of the predicted tokens (every next token; the selected ones of a masked batch);
  dropout is on iff a key is given. `frozen_params`, if given, completes `params` to the model's
  tree (a fine-tune's base, `gptjax/model/peft.py`): the gradient is then taken for `params`
  alone."""
  if frozen_params is not None:
    params = peft.combine(params, frozen_params)
  inputs_BxT, labels_BxT = inputs_and_labels(batch)
  rngs = {} if dropout_key is None else {'dropout': dropout_key}
  logits_BxTxV = model.apply({'params': params}, inputs_BxT, deterministic=dropout_key is None,
                             rngs=rngs)
  if batch.ndim == 2:
    return cross_entropy(logits_BxTxV, labels_BxT)
  selected_BxT = labels_BxT != masking.IGNORE
  nll_BxT = token_nll(logits_BxTxV, jnp.where(selected_BxT, labels_BxT, 0))
  return jnp.sum(jnp.where(selected_BxT, nll_BxT, 0.0)) / jnp.maximum(jnp.sum(selected_BxT), 1)


def train_step(state: TrainState, batch_BxT1: Array, frozen_params: Any = None, *, model: GPT,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               grad_accum_steps: int = 1, dropout_seed: int | None = None) -> tuple[TrainState, Metrics]:
  """One optimizer step on a global batch, averaged over `grad_accum_steps` micro-batches.

  The state holds the trained parameters; `frozen_params` (a fine-tune's base) are read, never
  updated, and have no optimizer state.

  Micro-batches run in a `lax.scan` so memory holds one micro-batch of activations at a time, and
  the update equals the one a single large batch would give (up to float rounding). With dropout,
  each micro-batch draws its own mask from the step's key. The count is the config's
  `train.grad_accum_steps`, or more where `gptjax.parallel.hardware.resolve_passes` splits a CPU
  step.
  """
  dropout_key = None
  if dropout_seed is not None:
    dropout_key = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
  grad_fn = jax.value_and_grad(loss_fn)

  if grad_accum_steps == 1:
    loss, grads = grad_fn(state.params, model, batch_BxT1, dropout_key, frozen_params)
  else:
    a, b = grad_accum_steps, batch_BxT1.shape[0]
    # Micro-batch i takes rows i, i + a, i + 2a, ...: each keeps an equal share on every data shard.
    micro_AxMxT1 = batch_BxT1.reshape(b // a, a, *batch_BxT1.shape[1:]).swapaxes(0, 1)

    def accumulate(carry, inputs):
      loss_sum, grad_sum = carry
      index, micro_MxT1 = inputs
      key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
      loss, grads = grad_fn(state.params, model, micro_MxT1, key, frozen_params)
      return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (loss_sum, grad_sum), _ = jax.lax.scan(
        accumulate, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(a), micro_AxMxT1))
    loss = loss_sum / a
    grads = jax.tree.map(lambda g: g / a, grad_sum)

  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      'train_loss': loss,
      'grad_norm': optax.tree.norm(grads),
      'param_norm': optax.tree.norm(params),
      'learning_rate': schedule(state.step),
  }
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def train_steps(state: TrainState, batches_KxB: Array, count: Array, frozen_params: Any = None, *,
                step_fn) -> tuple[TrainState, Metrics]:
  """`count` optimizer steps of `step_fn` on batches_KxB[0], ..., [count - 1] in one program.

  A small model on a CPU spends most of a step on launching its few hundred kernels and on the
  host loop around them, not on arithmetic; running several steps per call removes the host's
  share. `count` (<= K) is traced, so one compiled program serves every chunk, also the short ones
  that end on a log, eval or checkpoint step. The metrics are those of the last step: a loss that
  turns non-finite inside a chunk is caught at its end, since the parameters stay non-finite.
  """
  _, metrics_shape = jax.eval_shape(step_fn, state, batches_KxB[0], frozen_params)
  metrics = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), metrics_shape)

  def body(index, carry):
    return step_fn(carry[0], batches_KxB[index], frozen_params)

  return jax.lax.fori_loop(0, count, body, (state, metrics))


def eval_step(params: Any, batch: Array, frozen_params: Any = None, *, model: GPT) -> Array:
  """Summed NLL, count and number of top-1 hits of the predicted tokens, so batches of any size
  average exactly."""
  if frozen_params is not None:
    params = peft.combine(params, frozen_params)
  inputs_BxT, labels_BxT = inputs_and_labels(batch)
  logits_BxTxV = model.apply({'params': params}, inputs_BxT, deterministic=True)
  selected_BxT = labels_BxT != masking.IGNORE
  labels_BxT = jnp.where(selected_BxT, labels_BxT, 0)
  losses_BxT = token_nll(logits_BxTxV, labels_BxT)
  hits_BxT = jnp.argmax(logits_BxTxV, axis=-1) == labels_BxT
  return jnp.stack([jnp.sum(jnp.where(selected_BxT, losses_BxT, 0.0)),
                    jnp.sum(selected_BxT, dtype=jnp.float32),
                    jnp.sum(selected_BxT & hits_BxT, dtype=jnp.float32)])
