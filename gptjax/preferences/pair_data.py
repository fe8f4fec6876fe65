"""Batches of preference pairs for the reward model and DPO, and of prompts for PPO's rollouts.

A pair row is int32 [2, 2, T]: for the chosen ([0]) and the rejected ([1]) side, the tokens
(prompt, response, EOS unless the response was truncated, then EOS padding) and a segment id per
token: PAD, PROMPT or RESPONSE. T = preferences.max_prompt_tokens + preferences.max_new_tokens,
the length of a rollout, so a sampled pair always fits; prompts are cut to their last
max_prompt_tokens tokens as the sampler cuts them (`rollouts.prompt_ids`). A truncated response
is cut to max_new_tokens (text cut mid-character can re-encode a little longer than it was
sampled); a pair with a complete response over max_new_tokens, EOS included, is dropped with a
warning. Right padding needs no care:
the scorers mask pads out of attention, and a causal model never lets a real token see a later pad.

Training rows are shuffled with the run's seed, repeated and batched by grain, so the position is
checkpointed with the model (`gptjax/train/checkpointing.py`). Evaluation rows come in a fixed
order; the last batch is filled with all-PAD rows, which every evaluation step weighs 0.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Sequence

import grain
import ml_collections
import numpy as np
from absl import logging

from gptjax import data as data_lib
from gptjax.data.tokenizer import Tokenizer
from gptjax.preferences import rollouts
from gptjax.preferences.pairs import Pair

PAD, PROMPT, RESPONSE = 0, 1, 2
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=8)


def row_length(config: ml_collections.ConfigDict) -> int:
  p = config.preferences
  return p.max_prompt_tokens + p.max_new_tokens


def pair_row(tokenizer: Tokenizer, pair: Pair, max_prompt_tokens: int, max_new_tokens: int
             ) -> np.ndarray | None:
  """int32 [2, 2, T] of one pair (see the module doc), or None if a response is too long."""
  t = max_prompt_tokens + max_new_tokens
  row_2x2xT = np.full((2, 2, t), PAD, np.int32)
  row_2x2xT[:, 0] = tokenizer.eos_id
  prompt = rollouts.prompt_ids(tokenizer, pair.prompt, max_prompt_tokens)
  sides = ((pair.chosen, pair.chosen_truncated), (pair.rejected, pair.rejected_truncated))
  for side, (text, truncated) in enumerate(sides):
    response = [int(i) for i in tokenizer.encode(text)]
    if truncated:  # text cut mid-character re-encodes longer: keep what the sampler kept
      response = response[:max_new_tokens]
    elif len(response) + 1 > max_new_tokens:
      return None
    else:
      response.append(tokenizer.eos_id)
    ids = prompt + response
    row_2x2xT[side, 0, :len(ids)] = ids
    row_2x2xT[side, 1, :len(prompt)] = PROMPT
    row_2x2xT[side, 1, len(prompt):len(ids)] = RESPONSE
  return row_2x2xT


def pair_rows(tokenizer: Tokenizer, pairs: Sequence[Pair], config: ml_collections.ConfigDict,
              split: str) -> np.ndarray:
  """[N, 2, 2, T] rows of the pairs that fit; a ValueError if none does."""
  p = config.preferences
  rows = [pair_row(tokenizer, pair, p.max_prompt_tokens, p.max_new_tokens) for pair in pairs]
  kept = [row for row in rows if row is not None]
  if len(kept) < len(rows):
    logging.warning('Dropped %d of %d %s pairs with a complete response over '
                    'preferences.max_new_tokens=%d tokens (its EOS included).',
                    len(rows) - len(kept), len(rows), split, p.max_new_tokens)
  if not kept:
    raise ValueError(f'No {split} pair has complete responses of at most preferences.'
                     f'max_new_tokens={p.max_new_tokens} tokens (EOS included); raise it.')
  return np.stack(kept)


def _unigram_entropy(tokens: np.ndarray) -> float:
  p = np.bincount(tokens.ravel()) / tokens.size
  p = p[p > 0]
  return float(-np.sum(p * np.log(p)))


def _loader(train_rows: np.ndarray, eval_rows: np.ndarray, *, seed: int, batch_size: int,
            process_index: int, process_count: int
            ) -> tuple[grain.DatasetIterator, Callable[[], Iterator[np.ndarray]]]:
  """Training batches, shuffled with `seed` and repeated, and the evaluation batches (eval_rows
  fill whole batches), each process reading its block of every batch."""
  local = data_lib.local_batch_size(batch_size, process_index, process_count)
  train_ds = grain.MapDataset.source(train_rows).shuffle(seed=seed).repeat(None)
  train_ds = train_ds.batch(local, drop_remainder=True)[process_index::process_count]
  num_eval = len(eval_rows) // batch_size
  eval_ds = grain.MapDataset.source(eval_rows)
  eval_ds = eval_ds.batch(local, drop_remainder=True)[process_index::process_count]

  def eval_batches() -> Iterator[np.ndarray]:
    return (eval_ds[i] for i in range(num_eval))

  return iter(train_ds.to_iter_dataset(_READ_OPTIONS)), eval_batches


@dataclasses.dataclass
class PairData:
  data: data_lib.Data  # the loop's view: pair rows to train on, held-out rows to evaluate
  eval_prompts: list[str]  # the held-out pairs' distinct prompts, for sampling the policy


def build_pair_data(config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                    train_pairs: Sequence[Pair], eval_pairs: Sequence[Pair], *,
                    process_index: int = 0, process_count: int = 1) -> PairData:
  """The training iterator and held-out batches of this process of `process_count`."""
  train_rows = pair_rows(tokenizer, train_pairs, config, 'training')
  eval_rows = pair_rows(tokenizer, eval_pairs, config, 'held-out')
  batch_size = config.data.batch_size
  if len(train_rows) < batch_size:
    raise ValueError(f'{len(train_rows)} training pairs fit, fewer than one batch of '
                     f'data.batch_size={batch_size}; lower the batch size or give more pairs.')
  filler = np.full((-len(eval_rows) % batch_size, *eval_rows.shape[1:]), PAD, np.int32)
  filler[:, :, 0] = tokenizer.eos_id
  train_iter, eval_batches = _loader(train_rows, np.concatenate([eval_rows, filler]),
                                     seed=config.seed, batch_size=batch_size,
                                     process_index=process_index, process_count=process_count)
  responses = lambda rows: rows[:, :, 0][rows[:, :, 1] == RESPONSE]
  data = data_lib.Data(tokenizer=tokenizer, train_iter=train_iter, eval_batches=eval_batches,
                       unigram_entropy=_unigram_entropy(responses(eval_rows)),
                       train_tokens=int(responses(train_rows).size),
                       val_tokens=int(responses(eval_rows).size))
  logging.info('%d pairs to train on and %d held out; %d response tokens to train on.',
               len(train_rows), len(eval_rows), data.train_tokens)
  return PairData(data=data, eval_prompts=list(dict.fromkeys(p.prompt for p in eval_pairs)))


def eval_prompt_cycle(prompts: Sequence[str], count: int) -> list[str]:
  """`count` prompts for evaluating a policy by its samples: the held-out prompts in order, from
  the start again where there are fewer, so every evaluation samples the same prompts."""
  return [prompts[i % len(prompts)] for i in range(count)]


def build_prompt_data(config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                      train_prompts: Sequence[str], eval_prompts: Sequence[str], *,
                      process_index: int = 0, process_count: int = 1) -> data_lib.Data:
  """PPO's prompts as `rollouts.prompt_rows` [B, 2, P]: training batches shuffled and repeated,
  and `preferences.eval_samples` held-out ones (`eval_prompt_cycle`) in order."""
  p = config.preferences
  batch_size = config.data.batch_size
  if len(train_prompts) < batch_size:
    raise ValueError(f'{len(train_prompts)} training prompts, fewer than one batch of '
                     f'data.batch_size={batch_size}; lower the batch size or give more pairs.')
  train_rows = rollouts.prompt_rows(tokenizer, train_prompts, p.max_prompt_tokens)
  eval_rows = rollouts.prompt_rows(tokenizer, eval_prompt_cycle(eval_prompts, p.eval_samples),
                                  p.max_prompt_tokens)
  train_iter, eval_batches = _loader(train_rows, eval_rows, seed=config.seed,
                                     batch_size=batch_size, process_index=process_index,
                                     process_count=process_count)
  prompt_tokens = lambda rows: rows[:, 0][rows[:, 1] == 1]
  return data_lib.Data(tokenizer=tokenizer, train_iter=train_iter, eval_batches=eval_batches,
                       unigram_entropy=_unigram_entropy(prompt_tokens(eval_rows)),
                       train_tokens=int(prompt_tokens(train_rows).size),
                       val_tokens=int(prompt_tokens(eval_rows).size))
