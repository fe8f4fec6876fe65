"""A trained run's model as a scorer: log-probabilities of given tokens, and greedy continuations,
in jitted batches on the run's mesh.

Every evaluation reduces to one question asked of many rows: how likely is each next token, and is
it the model's top choice? Rows are right-padded to a bucketed length; under causal attention no
real token attends to a later one, so padding changes no score and no attention mask is needed.
Batches have a fixed size (the last filled with copies), so each bucket compiles once. A run's
scorer (`load_scorer`) places the parameters in their logical shardings on the mesh of the run's
config and splits each batch over its data axes, as training does; every process holds the same
rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import flax.linen as nn
from jax.sharding import Mesh

from gptjax import train
from gptjax.data.tokenizer import Tokenizer, load_tokenizer
from gptjax.generate import decoding
from gptjax.generate.sampling import SamplingConfig
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.parallel import hardware, sharding

Array = jax.Array
_BUCKET = 32  # row lengths are rounded up to a multiple of this, so few shapes compile


@dataclasses.dataclass
class Scorer:
  """A run's parameters, model and tokenizer, with the jitted scoring function."""

  params: Any
  model_cfg: GPTConfig
  tokenizer: Tokenizer
  config: ml_collections.ConfigDict  # the run's config
  step: int  # the checkpoint's step
  batch_size: int = 16
  mesh: Mesh | None = None  # None: one device
  rules: sharding.Rules = ()

  def __post_init__(self):
    model = GPT(self.model_cfg)

    def score(params, tokens_BxT):
      logits_BxTxV = model.apply({'params': params}, tokens_BxT[:, :-1],
                                 deterministic=True).astype(jnp.float32)
      logp_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
      targets_BxT = tokens_BxT[:, 1:]
      picked_BxT = jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
      return picked_BxT, jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT

    def greedy(params, tokens_BxP, mask_BxP, max_new_tokens):
      eos = int(self.tokenizer.eos_id)
      out = decoding.generate(params, tokens_BxP, mask_BxP, jax.random.key(0),
                              config=self.model_cfg, max_new_tokens=max_new_tokens,
                              sampling=SamplingConfig(temperature=0.0), stop_tokens=(eos,),
                              pad_id=eos)
      return out.tokens_BxN, out.lengths_B

    if self.mesh is not None:
      shards = sharding.batch_shards(self.mesh)
      self.batch_size = -(-self.batch_size // shards) * shards
      score = sharding.traced_under(self.mesh, self.rules, score, 'eval_scores')
      greedy = sharding.traced_under(self.mesh, self.rules, greedy, 'eval_greedy')
    self._score = jax.jit(score)
    self._greedy = jax.jit(greedy, static_argnums=3)

  def _place(self, rows: np.ndarray) -> jax.Array | np.ndarray:
    """A batch split over the mesh's data axes, from the same rows on every process."""
    if self.mesh is None:
      return rows
    return jax.make_array_from_callback(rows.shape, sharding.batch_sharding(self.mesh),
                                        lambda index: rows[index])

  def greedy(self, tokens_BxP: np.ndarray, mask_BxP: np.ndarray, max_new_tokens: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy continuations of a left-padded batch of batch_size prompts, up to EOS: tokens
    [B, max_new_tokens] and lengths [B] (`decoding.generate`)."""
    return jax.device_get(self._greedy(self.params, self._place(tokens_BxP),
                                       self._place(mask_BxP), max_new_tokens))

  @property
  def max_tokens(self) -> int:
    """The longest row: the model's positions plus the one token only ever predicted."""
    return self.model_cfg.max_seq_len + 1

  def next_token_scores(self, rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """For N rows of token ids: float32 [N, L-1] log p(row[t+1] | row[:t+1]) and bool [N, L-1]
    whether that token is the model's top choice, L the longest row (shorter rows' tails are
    padding and must be ignored by the caller)."""
    longest = max(len(row) for row in rows)
    if longest > self.max_tokens or min(len(row) for row in rows) < 2:
      raise ValueError(f'Rows must hold 2 to {self.max_tokens} tokens (model.max_seq_len + 1); '
                       f'got lengths {min(map(len, rows))}..{longest}.')
    width = min(-(-longest // _BUCKET) * _BUCKET, self.max_tokens)
    tokens_NxL = np.full((len(rows), width), self.tokenizer.eos_id, np.int32)
    for i, row in enumerate(rows):
      tokens_NxL[i, :len(row)] = row
    logps, tops = [], []
    for start in range(0, len(rows), self.batch_size):
      batch = tokens_NxL[start:start + self.batch_size]
      filled = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - len(batch), 0)])
      logp, top = jax.device_get(self._score(self.params, self._place(filled)))
      logps.append(logp[:len(batch)])
      tops.append(top[:len(batch)])
    return (np.concatenate(logps)[:, :longest - 1], np.concatenate(tops)[:, :longest - 1])

  def continuation_scores(self, contexts: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[int]]
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each (context, continuation) of token ids: the summed log-probability of the
    continuation given the context, float64 [N]; its token count [N]; and whether every one of
    its tokens is the model's top choice [N]. A context too long for the model loses its oldest
    tokens; an empty one starts from EOS."""
    rows, spans = [], []
    for context, continuation in zip(contexts, continuations):
      if len(continuation) == 0:
        raise ValueError('A continuation to score needs at least one token.')
      context = list(context) or [self.tokenizer.eos_id]
      room = self.max_tokens - len(continuation)
      if room < 1:
        raise ValueError(f'A continuation of {len(continuation)} tokens leaves no room for its '
                         f'context in model.max_seq_len={self.model_cfg.max_seq_len}.')
      context = context[-room:]
      rows.append(context + list(continuation))
      spans.append((len(context) - 1, len(context) - 1 + len(continuation)))
    logp_NxL, top_NxL = self.next_token_scores(rows)
    total = np.array([logp_NxL[i, a:b].astype(np.float64).sum() for i, (a, b) in enumerate(spans)])
    count = np.array([b - a for a, b in spans])
    greedy = np.array([bool(top_NxL[i, a:b].all()) for i, (a, b) in enumerate(spans)])
    return total, count, greedy


def load_scorer(workdir: str, batch_size: int = 16) -> Scorer:
  """The latest checkpoint of a causal run, ready to score."""
  config, step, params = train.load_checkpoint(workdir)
  if config.train.objective != 'clm' or not config.model.causal:
    raise ValueError(f'{workdir} was trained with the {config.train.objective!r} objective; '
                     'evaluations score next tokens and need a causal (clm) run.')
  if 'finetune' in config and config.finetune.method != 'full':
    raise ValueError(f'{workdir} is a {config.finetune.method!r} fine-tune; evaluate a '
                     'pre-trained or fully fine-tuned run.')
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.mesh)
  model_cfg = hardware.resolve_attention(GPTConfig.from_run_config(config), mesh.devices.flat[0])
  boxed = jax.eval_shape(GPT(model_cfg).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  shardings = sharding.logical_shardings(boxed['params'], mesh, rules)
  params = jax.device_put(nn.unbox(params), shardings)
  return Scorer(params, model_cfg, load_tokenizer(workdir), config, step=step,
                batch_size=batch_size, mesh=mesh, rules=rules)
