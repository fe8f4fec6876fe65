r"""The fine-tuning study's plan: which fine-tunes it trains, at which rates and seeds.

  python -m launch.sweep --sweep=experiments/sweeps/clm_vs_mlm_lr.py \
      --workdir=runs/clm_vs_mlm_lr --parallel=2 --nofit   # the pre-trained bases among them
  python -m experiments.finetune_study --bases=runs/clm_vs_mlm_lr --workdir=runs/finetune_methods

The bases are two causal members of the objective study's rate sweep (seed 0, the rate
8e-3 * min(1, 32 / d_model)): byte-level, 2 layers, RoPE, d_model 32 and 64, 600 pre-training
steps on the stdlib corpus. Each is fine-tuned on the 'reverse' task (reverse('abc') == ' -> cba',
3-8 letters, exact match by greedy generation on 256 unseen prompts) in full and with each
parameter-efficient method (LoRA on every projection) at two sizes 8x apart, all with the same
steps, batch and schedule.

Two stages, every choice fixed before any result was seen:
1. Rate selection. Each (base, method) at its larger size trains at 4 rates a factor of about 3
   apart, at one seed, `SELECTION_SEED`. Where the lowest final response loss lies at an end of
   the grid, the grid grows one rate past that end, up to `MAX_EXTENSION` rates per cell. The
   rate with the lowest loss on that seed's own validation prompts is chosen: a draw of prompts,
   training examples and initialisation independent of the reported seeds', so the reported
   numbers did not pick it.
2. Seeds. Every fine-tune of the study runs at the chosen rate of its (base, method) at seeds
   0 .. S-1. A seed draws the training examples, their order, the validation prompts and the
   methods' initial parameters; the base is the same pre-trained run at every seed.

The wider base also trains each method at sizes scaled by the narrow base's width over its own
(r, a, P halved on d64), which matches the trainable-parameter count of the narrow base's sizes:
every method's count is proportional to d_model at fixed depth (the adapter's biases aside). The
size comparison is made both ways, at matched r/a/P and at matched count.
"""

from __future__ import annotations

import dataclasses

NUM_STEPS = 600
# Pre-trained run name: its d_model. The first is the narrowest; sizes are given for it.
BASES = {'clm_d32_lr0.008': 32, 'clm_d64_lr0.004': 64}
# (method, size field, sizes on the narrowest base): two trainable-parameter budgets 8x apart.
METHODS = (
    ('lora', 'lora_rank', (2, 16)),
    ('adapter', 'adapter_dim', (4, 32)),
    ('prefix', 'prefix_len', (4, 32)),
    ('prompt', 'prompt_len', (4, 32)),
)
LADDER = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0)  # every rate a grid may use
MAX_EXTENSION = 2
# Each method's starting grid, 4 rungs of LADDER: full fine-tuning moves every weight, the methods start from zero updates
# on few parameters, and a soft prompt is commonly trained at rates near 0.1-1.
RATES = {
    'full': (1e-3, 3e-3, 1e-2, 3e-2),
    'lora': (3e-3, 1e-2, 3e-2, 1e-1),
    'adapter': (3e-3, 1e-2, 3e-2, 1e-1),
    'prefix': (3e-3, 1e-2, 3e-2, 1e-1),
    'prompt': (1e-2, 3e-2, 1e-1, 3e-1),
}
SELECTION_SEED = 100
_SIZE_FIELD = {method: field for method, field, _ in METHODS}


@dataclasses.dataclass(frozen=True)
class Member:
  """One fine-tune: a base, a method at a size (None for full), a peak rate and a seed."""

  base: str
  method: str
  size: int | None
  rate: float
  seed: int

  @property
  def name(self) -> str:
    """Its run directory under the study's workdir."""
    size = '' if self.size is None else str(self.size)
    return f'seed{self.seed}/{self.base}-{self.method}{size}-lr{self.rate:g}'

  def overrides(self) -> dict:
    """The fine-tuning config's fields this member sets (dotted keys)."""
    values = {
        'seed': self.seed, 'finetune.method': self.method, 'finetune.task': 'reverse',
        'finetune.lora_targets': 'query,key,value,out,up,down', 'train.num_steps': NUM_STEPS,
        'train.warmup_steps': NUM_STEPS // 10, 'train.learning_rate': self.rate,
        'train.eval_every': NUM_STEPS, 'train.checkpoint_every': NUM_STEPS,
        'train.async_checkpoints': False,
    }
    if self.size is not None:
      values[f'finetune.{_SIZE_FIELD[self.method]}'] = self.size
    return values


def methods() -> tuple[str, ...]:
  return ('full',) + tuple(method for method, _, _ in METHODS)


def sizes(base: str, method: str) -> tuple[int | None, ...]:
  """The sizes `method` trains at on `base`: the narrowest base's, and on a wider base also those
  scaled to the narrowest base's trainable-parameter counts."""
  if method == 'full':
    return (None,)
  narrow = next(s for m, _, s in METHODS if m == method)
  scale = min(BASES.values()) / BASES[base]
  matched_count = tuple(max(1, round(size * scale)) for size in narrow)
  return tuple(sorted(set(narrow) | set(matched_count)))


def selection_members() -> list[Member]:
  """Each (base, method) at its larger narrow-base size, at every rate of its grid."""
  return [Member(base, method, sizes(base, method)[-1], rate, SELECTION_SEED)
          for base in BASES for method in methods() for rate in RATES[method]]


def extensions(losses: dict[Member, float]) -> list[Member]:
  """The next rate past each grid end that holds its cell's lowest loss, while the cell has
  grown by fewer than MAX_EXTENSION rates and LADDER goes on."""
  grids: dict[tuple[str, str], list[tuple[float, Member]]] = {}
  for member, loss in losses.items():
    grids.setdefault((member.base, member.method), []).append((loss, member))
  more = []
  for (base, method), grid in grids.items():
    tried = sorted(m.rate for _, m in grid)
    _, best = min(grid, key=lambda item: item[0])
    if len(tried) - len(RATES[method]) >= MAX_EXTENSION:
      continue
    rung = LADDER.index(best.rate)
    if best.rate == tried[0] and rung > 0:
      more.append(dataclasses.replace(best, rate=LADDER[rung - 1]))
    elif best.rate == tried[-1] and rung + 1 < len(LADDER):
      more.append(dataclasses.replace(best, rate=LADDER[rung + 1]))
  return more


def choose_rates(losses: dict[Member, float]) -> dict[tuple[str, str], float]:
  """{(base, method): the selection rate with the lowest final response loss}."""
  best: dict[tuple[str, str], tuple[float, float]] = {}
  for member, loss in losses.items():
    key = (member.base, member.method)
    if key not in best or loss < best[key][0]:
      best[key] = (loss, member.rate)
  return {key: rate for key, (_, rate) in best.items()}


def seed_members(rates: dict[tuple[str, str], float], seeds: int) -> list[Member]:
  """Every reported fine-tune at its (base, method)'s chosen rate, seed-major so that a partial
  run covers every cell at the first seeds."""
  return [Member(base, method, size, rates[(base, method)], seed)
          for seed in range(seeds) for base in BASES for method in methods()
          for size in sizes(base, method)]
