r"""Fine-tuning methods against trainable parameters and base-model size, on a verifiable task.

  python -m launch.sweep --sweep=experiments/sweeps/clm_vs_mlm_lr.py \
      --workdir=runs/clm_vs_mlm_lr --parallel=2 --nofit   # the pre-trained bases among them
  python -m experiments.finetune_study --bases=runs/clm_vs_mlm_lr --workdir=runs/finetune_methods

The bases are two causal members of the objective study's rate sweep, at seed 0 and the rate
8e-3 * min(1, 32 / d_model): byte-level, 2 layers, RoPE, d_model 32 and 64, 600 pre-training
steps on the stdlib corpus. Each is fine-tuned on the 'reverse' task
(reverse('abc') == ' -> cba', 3-8 letters, exact match by greedy generation on 256 unseen prompts)
in full and with each parameter-efficient method at two sizes (LoRA on every projection), all with the same steps, batch
and schedule; only the learning rate differs, full fine-tuning taking a smaller one (it moves
every weight of the model; the methods start from zero updates on few parameters).
"""

import itertools

NUM_STEPS = 600
# (method, size field, sizes): two trainable-parameter budgets per method, 8x apart.
METHODS = (
    ('lora', 'lora_rank', (2, 16)),
    ('adapter', 'adapter_dim', (4, 32)),
    ('prefix', 'prefix_len', (4, 32)),
    ('prompt', 'prompt_len', (4, 32)),
)
LEARNING_RATE = {'full': 3e-3, 'lora': 1e-2, 'adapter': 1e-2, 'prefix': 1e-2, 'prompt': 1e-2}
BASES = ('clm_d32_lr0.008', 'clm_d64_lr0.004')


def overrides(method: str, size_field: str | None, size: int | None) -> dict:
  values = {
      'finetune.method': method, 'finetune.task': 'reverse', 'finetune.lora_targets':
      'query,key,value,out,up,down', 'train.num_steps': NUM_STEPS, 'train.warmup_steps': NUM_STEPS // 10,
      'train.learning_rate': LEARNING_RATE[method], 'train.eval_every': NUM_STEPS // 4,
      'train.checkpoint_every': NUM_STEPS, 'train.async_checkpoints': False,
  }
  if size_field:
    values[f'finetune.{size_field}'] = size
  return values


def members() -> list[tuple[str, str, dict]]:
  """(base member, run name, config overrides) of every fine-tune in the study."""
  plans = [('full', None, None)] + [(m, field, size) for m, field, sizes in METHODS
                                    for size in sizes]
  return [(base, f'{base}-{method}{size or ""}', overrides(method, field, size))
          for base, (method, field, size) in itertools.product(BASES, plans)]
