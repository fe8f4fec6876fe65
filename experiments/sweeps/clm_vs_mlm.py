r"""Next-token (CLM) against masked-token (MLM) prediction at 3 sizes, on the same tokens and compute.

  python -m launch.sweep --sweep=experiments/sweeps/clm_vs_mlm.py --workdir=runs/clm_vs_mlm \
      --parallel=2
  python -m experiments.clm_vs_mlm --workdir=runs/clm_vs_mlm   # the table and clm_vs_mlm.png

Byte-level models of 2 layers, d_model 32, 64 and 128, with RoPE (a masked token's own embedding
says nothing, so MLM must read its neighbours, which relative positions make quick to learn), each
trained once causally on every next token and once bidirectionally on BERT's masked tokens
(`gptjax/data/masking.py`). Both read the same windows in the same order (an MLM row is the CLM
window minus its last token), 600 steps of 8 x 128 tokens (614K tokens), and spend the same compute:
the FLOPs accounting counts the full T x T attention for both, and the masking costs nothing on the
device. Learning rates follow the CPU scaling sweep's rule, 8e-3 * min(1, 32 / d_model).

What is comparable: compute, tokens read and the model. What is not: the losses. CLM's eval loss
is over every next token given the left context; MLM's over 15% of the tokens, given both sides
but with 15% of the context corrupted. Top-1 accuracy on the predicted tokens is reported for both
under the same caveat. The study measures what each objective buys on its own task per FLOP.
"""

import ml_collections

import launch
from experiments.configs import base as base_config

WIDTHS = (32, 64, 128)
NUM_STEPS = 600


def get_base() -> ml_collections.ConfigDict:
  config = base_config.get_config()
  config.model.update(num_layers=2, max_seq_len=128, position='rope')
  config.data.update(source='stdlib', tokenizer='byte', seq_len=128, batch_size=8,
                     max_corpus_bytes=4_000_000)
  config.train.update(num_steps=NUM_STEPS, warmup_steps=NUM_STEPS // 20,
                      eval_every=NUM_STEPS // 4, eval_batches=40, log_every=NUM_STEPS // 12,
                      checkpoint_every=NUM_STEPS, async_checkpoints=False)
  return config


def member(objective: str, d_model: int) -> launch.Member:
  return launch.Member(f'{objective}_d{d_model}', {
      'train.objective': objective, 'model.causal': objective == 'clm',
      'model.d_model': d_model, 'model.num_heads': 2 if d_model < 64 else 4,
      'train.learning_rate': 8e-3 * min(1.0, 32 / d_model)})


def get_sweep():
  return get_base(), [member(objective, d) for d in WIDTHS for objective in ('clm', 'mlm')]
