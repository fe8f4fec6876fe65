"""The CPU sweep's design at pod scale: 5 budgets from 1e18 to 1e20 FLOPs, 5 GPT sizes each.

  python -m launch.sweep --sweep=experiments/sweeps/tpu_scaling.py --workdir=runs/tpu --dry_run

Chinchilla's IsoFLOP profiles (Hoffmann et al. 2022, figure 3) span 6e18-3e21 FLOPs; this grid
covers the low end: 7.2e20 FLOPs spent (5.7e20 in Kaplan's count, `gptjax/cost/flops.py`), about
10 hours of a v5e-256 slice at 40% MFU, 7 of them for the five 1e20 members. The same code and the
same accounting as the CPU sweep (budgets in FLOPs spent, total N); what changes:

- data: GPT-2 BPE token shards (`data.source='tokens'`, `data.paths` -> your shards), not bytes;
- model: GPT-2 blocks (learned positions, GELU, tied embeddings), 31M to 1.9B parameters (10M to
  1.8B non-embedding), bfloat16 compute, layers under `nn.scan` so compile time does not grow with
  depth; d_model 1024 has 14 layers, so the smallest budget still trains it for 1000+ steps;
- batch: 256 x 2048 = 0.5M tokens per step (GPT-3's batch for its small models), so the
  smallest budget still gives its largest size over a thousand steps;
- mesh: FSDP over every chip (`mesh.fsdp=-1`), so the 1.9B model's Adam state fits, and
  `jax.distributed` on, one process per host;
- learning rates from GPT-3's table 2.1, interpolated in log N;
- more evals per run (8) and checkpoints (4): runs take hours and get preempted.

Each budget's window of sizes is centred near Chinchilla's N_opt ~ sqrt(C/120) (20 tokens per
parameter); check the dry run's IsoFLOP coverage, and move the windows once the first budgets show
where the minima fall.
"""

import math

import ml_collections

import launch
from experiments.configs import base as base_config
from experiments.configs.gpt2 import set_gpt_architecture

SEQ_LEN = 2048
BATCH = 256
BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20)
# (num_layers, d_model, num_heads), 31M to 1.9B parameters; head_dim 64 (128 from d1536 up)
SHAPES = (
    (6, 384, 6), (8, 512, 8), (10, 640, 10), (12, 768, 12), (14, 1024, 16), (20, 1280, 20),
    (24, 1536, 12), (24, 2048, 16), (28, 2304, 18),
)
SIZES_PER_BUDGET = 5


def learning_rate(non_embedding: float) -> float:
  """GPT-3's rates (6e-4 at 85M non-embedding, 2e-4 at 1.2B), log-linear in N, capped at 1e-3."""
  slope = math.log(2e-4 / 6e-4) / math.log(1.2e9 / 85e6)
  return min(1e-3, 6e-4 * (non_embedding / 85e6) ** slope)


def get_base() -> ml_collections.ConfigDict:
  config = base_config.get_config()
  set_gpt_architecture(config, 12, 768, 12, seq_len=SEQ_LEN)
  config.model.update(dtype='bfloat16', scan_layers=True)
  config.data.update(source='tokens', paths='data/tokens/train_*.bin', token_dtype='uint16',
                     batch_size=BATCH)
  config.train.update(eval_batches=40, keep_checkpoints=2)
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  config.distributed.enabled = True  # one process per host; Cloud TPU VMs are auto-detected
  return config


def get_sweep():
  base = get_base()
  sizes = []
  for num_layers, d_model, num_heads in SHAPES:
    n = 12 * num_layers * d_model**2  # the lr rule's N; the design itself uses gptjax.cost.flops
    sizes.append(launch.Size(d_model, num_layers, num_heads, learning_rate(n)))
  budgets = {c: sizes[i:i + SIZES_PER_BUDGET] for i, c in enumerate(BUDGETS)}
  members = launch.isoflop_members(base, budgets, warmup_fraction=0.02, num_evals=8,
                                   checkpoints=4, log_lines=200, min_steps=1000)
  return base, members
