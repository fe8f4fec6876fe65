"""In-context learning signatures that need no task at all (Olsson et al. 2022).

- 'position_loss': the mean loss at each position of the run's validation windows. A model that
  uses its context predicts later tokens better; the ICL score is the mean loss over the last tenth
  of the positions minus that over the first tenth (negative: the context helps).
- 'induction': sequences of uniformly random tokens, each repeated once. The first copy cannot be
  predicted (about log V nats per token); the second can, by copying what followed the same token
  before, which is what induction heads do. Reported: the loss on each copy and their difference.
"""

from __future__ import annotations

import numpy as np

from gptjax.data import Windows, tokens
from gptjax.evals.scoring import Scorer

TASKS = ('position_loss', 'induction')


def position_losses(scorer: Scorer, windows_NxL: np.ndarray) -> np.ndarray:
  """float64 [L-1]: the mean next-token loss at each position over the windows."""
  logp_NxT, _ = scorer.next_token_scores([list(w) for w in windows_NxL])
  return -logp_NxT.astype(np.float64).mean(axis=0)


def icl_score(loss_T: np.ndarray) -> tuple[float, float, float]:
  """(ICL score, loss over the first tenth, loss over the last tenth of the positions)."""
  tenth = max(1, len(loss_T) // 10)
  first, last = float(loss_T[:tenth].mean()), float(loss_T[-tenth:].mean())
  return last - first, first, last


def validation_windows(scorer: Scorer, workdir: str, count: int) -> np.ndarray:
  """[N, seq_len + 1] windows spread evenly over the run's validation split (its token cache)."""
  train_stream, val_stream, _ = tokens.token_streams(scorer.config, scorer.tokenizer, workdir)
  del train_stream
  length = min(scorer.config.data.seq_len, scorer.model_cfg.max_seq_len) + 1
  windows = Windows(val_stream, length)
  if len(windows) == 0:
    raise ValueError(f'The validation split of {workdir} is shorter than one window of {length} '
                     'tokens.')
  picks = np.unique(np.linspace(0, len(windows) - 1, min(count, len(windows))).astype(int))
  return np.stack([windows[int(i)] for i in picks])


def evaluate_position_loss(scorer: Scorer, workdir: str, count: int) -> dict:
  loss_T = position_losses(scorer, validation_windows(scorer, workdir, count))
  score, first, last = icl_score(loss_T)
  return {'icl_score': score, 'loss_first_tenth': first, 'loss_last_tenth': last,
          'loss': float(loss_T.mean()), 'position_loss': [round(float(x), 5) for x in loss_T]}


def induction_rows(vocab_size: int, eos_id: int, length: int, count: int, seed: int
                   ) -> np.ndarray:
  """[count, 2 * length] rows: `length` random non-EOS tokens, then the same again."""
  rng = np.random.default_rng(seed)
  ids = np.array([i for i in range(vocab_size) if i != eos_id])
  first = ids[rng.integers(0, len(ids), size=(count, length))]
  return np.concatenate([first, first], axis=1)


def evaluate_induction(scorer: Scorer, count: int, seed: int) -> dict:
  length = scorer.max_tokens // 2
  rows = induction_rows(scorer.tokenizer.vocab_size, scorer.tokenizer.eos_id, length, count, seed)
  logp_NxT, _ = scorer.next_token_scores([list(r) for r in rows])
  loss_T = -logp_NxT.astype(np.float64).mean(axis=0)
  # Position t predicts token t + 1: the first copy's tokens 1..length-1, then the second copy.
  first, second = float(loss_T[:length - 1].mean()), float(loss_T[length - 1:].mean())
  return {'loss_first_copy': first, 'loss_second_copy': second, 'induction_gain': first - second,
          'uniform_loss': float(np.log(scorer.tokenizer.vocab_size - 1))}
