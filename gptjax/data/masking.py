"""The masked-language-model objective (BERT), as a contrast to next-token prediction.

A bidirectional model (`model.causal=False`) sees a window whose selected tokens were corrupted and
predicts the originals at those positions only (`train.objective='mlm'`). BERT's recipe
(Devlin et al. 2019, section 3.1): select 15% of the tokens; replace 80% of those by a `[MASK]` id,
10% by a random token and keep 10% unchanged, so the model cannot rely on seeing `[MASK]` where it
must predict. Separators (the tokenizer's EOS between documents) are never selected.

The `[MASK]` id is one past the data's vocabulary (`mask_id`), so the model of an MLM run has one
more embedding row than the tokenizer has tokens (`gptjax.model.config.GPTConfig.from_run_config`);
no tokenizer ever emits it. The masking runs in the grain pipeline as a random map, seeded by the
run's seed and the window's index: deterministic, different in every epoch (dynamic masking, as in
RoBERTa), and resumed exactly with the data iterator.

A masked batch is int32 [B, 2, T]: row 0 the corrupted inputs, row 1 the labels, IGNORE where a
position was not selected.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SELECT_RATE = 0.15
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the selected tokens; the remaining 10% are kept
IGNORE = -1  # label of a position that is not predicted


def mask_id(data_vocab_size: int) -> int:
  """The `[MASK]` id: one past the data's vocabulary."""
  return data_vocab_size


def mask_window(tokens_T: np.ndarray, rng: np.random.Generator, *, data_vocab_size: int,
                special_ids: Sequence[int]) -> np.ndarray:
  """BERT's corruption of one window: int32 [2, T] of (inputs, labels), labels IGNORE where the
  position was not selected."""
  tokens_T = np.asarray(tokens_T, np.int32)
  draw_T = rng.random(tokens_T.shape)
  selected_T = (draw_T < SELECT_RATE) & ~np.isin(tokens_T, special_ids)
  # One uniform draw decides both whether a token is selected and how it is corrupted: given
  # selection, draw / SELECT_RATE is uniform on [0, 1).
  share_T = draw_T / SELECT_RATE
  inputs_T = np.where(selected_T & (share_T < MASK_SHARE), mask_id(data_vocab_size), tokens_T)
  random_T = selected_T & (share_T >= MASK_SHARE) & (share_T < MASK_SHARE + RANDOM_SHARE)
  inputs_T = np.where(random_T, rng.integers(0, data_vocab_size, tokens_T.shape), inputs_T)
  labels_T = np.where(selected_T, tokens_T, IGNORE)
  return np.stack([inputs_T, labels_T]).astype(np.int32)


class Masker:
  """A grain random map from a (seq_len + 1)-token window to a masked [2, seq_len] example.

  It drops the window's last token, so an MLM run reads exactly the windows, in the same order,
  that a CLM run of the same config reads, and sees seq_len tokens per row as CLM predicts.
  """

  def __init__(self, data_vocab_size: int, special_ids: Sequence[int]):
    self.data_vocab_size, self.special_ids = data_vocab_size, tuple(special_ids)

  def __call__(self, window_T1: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return mask_window(window_T1[:-1], rng, data_vocab_size=self.data_vocab_size,
                       special_ids=self.special_ids)
