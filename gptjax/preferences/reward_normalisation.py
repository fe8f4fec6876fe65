"""A reward model's scores put on one scale before PPO: mean 0 and unit variance over the starting
policy's own samples.

PPO maximises score - beta * KL, so beta prices a nat of KL in units of the score. Two reward models
whose scores differ in offset and spread would make one beta two different penalties; normalised on
the policy PPO starts from, a beta means the same trade against every reward model, and the
starting policy's mean reward is 0 (as in Stiennon et al. 2020 and Ouyang et al. 2022).

The score is the scalar head's affine map of the trunk's last hidden state, h.w + b, so
(score - mean) / std is that head with w / std and (b - mean) / std: `fold_into_head` rewrites the
head, and the reward model and the critic started from it both work on the normalised scale with
nothing else changed. The measured mean and spread are written to the run directory
(`reward_normalisation.json`) and read back on a resume, so a resumed run scores as it did.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from gptjax.data.tokenizer import Tokenizer
from gptjax.preferences import policy_sampling, rollouts

FILE = 'reward_normalisation.json'
_KEY_OFFSET = 104_729  # its samples draw from their own stream, apart from rollouts and evals


@dataclasses.dataclass(frozen=True)
class Normalisation:
  mean: float
  std: float
  samples: int


def check_samples(samples: int) -> None:
  if not isinstance(samples, int) or samples == 1 or samples < 0:
    raise ValueError(f'ppo.reward_norm_samples={samples!r} must be 0 (raw scores) or a whole '
                     'number >= 2 (the samples whose scores set the mean and spread).')


def prompt_rows(tokenizer: Tokenizer, prompts: Sequence[str], samples: int,
                max_prompt_tokens: int, batch_size: int) -> np.ndarray:
  """[N, 2, P] rows of the first prompts, cycled, N = `samples` rounded up to whole batches."""
  count = -(-samples // batch_size) * batch_size
  cycled = [prompts[i % len(prompts)] for i in range(count)]
  return rollouts.prompt_rows(tokenizer, cycled, max_prompt_tokens)


def measure(sampler: policy_sampling.Sampler, policy_params: Any, rows_Nx2xP: np.ndarray,
            score: Callable[[rollouts.Rollout], jax.Array], seed: int) -> Normalisation:
  """The mean and standard deviation of the reward model's scores of one response per row."""
  key = jax.random.key(seed + _KEY_OFFSET)
  scores = np.concatenate([np.asarray(score(rollout), np.float64)
                           for rollout in sampler.batches(policy_params, rows_Nx2xP, key)])
  std = float(np.std(scores))
  if not std > 0:
    raise ValueError(f'The reward model gives all {len(scores)} samples of the starting policy '
                     'the same score, so it cannot rank them; train it further or set '
                     'ppo.reward_norm_samples=0 for raw scores.')
  return Normalisation(float(np.mean(scores)), std, len(scores))


def load_or_measure(workdir: str, measure_now: Callable[[], Normalisation]) -> Normalisation:
  """The run's normalisation: read from `workdir`, or measured and written there (process 0)."""
  path = os.path.join(workdir, FILE)
  if os.path.exists(path):
    with open(path) as f:
      return Normalisation(**json.load(f))
  normalisation = measure_now()
  if jax.process_index() == 0:
    with open(path + '.tmp', 'w') as f:
      json.dump(dataclasses.asdict(normalisation), f)
    os.replace(path + '.tmp', path)
  return normalisation


def fold_into_head(params: Any, normalisation: Normalisation) -> Any:
  """Scalar-headed params whose every score is (score - mean) / std of the given params'."""
  head = params['scalar_head']
  kernel, bias = head['kernel'], head['bias']
  # In float64 whatever the parameters' dtype, rounded once to it at the end.
  wide = lambda x: np.asarray(x, np.float64)
  folded = {'kernel': (wide(kernel) / normalisation.std).astype(kernel.dtype),
            'bias': ((wide(bias) - normalisation.mean) / normalisation.std).astype(bias.dtype)}
  return {**params, 'scalar_head': folded}
