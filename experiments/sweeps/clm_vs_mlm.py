r"""Next-token (CLM) against masked-token (MLM) prediction at 3 sizes, on the same tokens and compute,
each at its own tuned learning rate, over 3 seeds.

  python -m launch.sweep --sweep=experiments/sweeps/clm_vs_mlm_lr.py \
      --workdir=runs/clm_vs_mlm_lr --parallel=2 --nofit
  python -m experiments.clm_vs_mlm rates --workdir=runs/clm_vs_mlm_lr
  python -m launch.sweep --sweep=experiments/sweeps/clm_vs_mlm.py --workdir=runs/clm_vs_mlm \
      --parallel=2 --nofit
  python -m experiments.clm_vs_mlm table --workdir=runs/clm_vs_mlm   # and plots/clm_vs_mlm.png

Byte-level models of 2 layers, d_model 32, 64 and 128, with RoPE (a masked token's own embedding
says nothing, so MLM must read its neighbours, which relative positions make quick to learn), each
trained causally on every next token and bidirectionally on BERT's masked tokens
(`gptjax/data/masking.py`). Both read the same windows in the same order (an MLM row is the CLM
window minus its last token), 600 steps of 8 x 128 tokens (614K tokens), and spend the same compute:
the FLOPs spent (`flops_full`) count the full T x T attention for both, which XLA computes before
masking, and the masking costs nothing on the device.

Each (objective, size) has its own peak learning rate, chosen by `clm_vs_mlm_lr.py` at seed 0 from
5 rates a factor of 2 apart (the minimum of a parabola in log rate, as the CPU scaling sweep's
tuning does), written to `clm_vs_mlm_rates.json`. This sweep then trains every cell at seeds 1, 2
and 3, none of them the seed the rate was chosen at.

What is comparable: compute, tokens read and the model. What is not: the losses. CLM's eval loss
is over every next token given the left context; MLM's over 15% of the tokens, given both sides
but with 15% of the context corrupted. Top-1 accuracy on the predicted tokens is reported for both
under the same caveat.
"""

import json
import os

import ml_collections

import launch
from experiments.configs import base as base_config

WIDTHS = (32, 64, 128)
OBJECTIVES = ('clm', 'mlm')
NUM_STEPS = 600
SEEDS = (1, 2, 3)
RATES_FILE = os.path.join(os.path.dirname(__file__), 'clm_vs_mlm_rates.json')


def get_base() -> ml_collections.ConfigDict:
  config = base_config.get_config()
  config.model.update(num_layers=2, max_seq_len=128, position='rope')
  config.data.update(source='stdlib', tokenizer='byte', seq_len=128, batch_size=8,
                     max_corpus_bytes=4_000_000)
  config.train.update(num_steps=NUM_STEPS, warmup_steps=NUM_STEPS // 20,
                      eval_every=NUM_STEPS // 4, eval_batches=40, log_every=NUM_STEPS // 12,
                      checkpoint_every=NUM_STEPS, async_checkpoints=False)
  return config


def member(objective: str, d_model: int, learning_rate: float, name: str,
           seed: int) -> launch.Member:
  return launch.Member(name, {
      'train.objective': objective, 'model.causal': objective == 'clm',
      'model.d_model': d_model, 'model.num_heads': 2 if d_model < 64 else 4,
      'train.learning_rate': learning_rate, 'seed': seed})


def read_rates(path: str = RATES_FILE) -> dict[str, dict[str, float]]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist; run experiments/sweeps/clm_vs_mlm_lr.py and '
                            'then python -m experiments.clm_vs_mlm rates --workdir=<its workdir>.')
  with open(path) as f:
    return json.load(f)


def get_sweep():
  base, rates = get_base(), read_rates()
  return base, [member(objective, d, rates[objective][str(d)], f'{objective}_d{d}_s{seed}',
                       base.seed + seed)
                for d in WIDTHS for objective in OBJECTIVES for seed in SEEDS]
