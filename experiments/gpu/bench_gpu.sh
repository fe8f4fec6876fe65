#!/usr/bin/env bash
# One-shot GPU measurement for BENCHMARKS.md: matmul peak, then the GPT-2 124M train step in bf16
# with XLA vs cuDNN flash attention (the default) and three batch sizes; a cuDNN-vs-XLA accuracy check.
# Usage on a GPU machine: bash experiments/gpu/bench_gpu.sh [OUTPUT_DIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/gptjax_gpu}}
mkdir -p "$out"
if [ -d .whl ]; then  # packages the GPU image lacks, carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$out/gpu.txt"
python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())' | tee -a "$out/gpu.txt"

python3 - <<'PY' 2>&1 | tee "$out/attention_check.txt"
# cuDNN flash attention must compute the same function as the XLA path (bf16 tolerance).
import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
from gptjax.model import GPT
from gptjax.model.config import GPTConfig
for kw in [dict(), dict(position='rope', num_kv_heads=4)]:
  base = dict(vocab_size=1024, d_model=512, num_layers=2, num_heads=8, max_seq_len=512, dtype='bfloat16', **kw)
  tokens = jax.random.randint(jax.random.key(0), (4, 512), 0, 1024)
  params = nn.unbox(GPT(GPTConfig(**base)).init(jax.random.key(1), tokens)['params'])
  ref = jax.jit(GPT(GPTConfig(**{**base, 'dtype': 'float32'})).apply)({'params': params}, tokens)
  for impl in ('xla', 'cudnn'):
    out = jax.jit(GPT(GPTConfig(**base, attention_impl=impl)).apply)({'params': params}, tokens)
    err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
    print(f'{kw or "mha"} {impl}: relative error vs float32 XLA {err:.2e}')
PY

run() { python3 -m experiments.bench --configs=gpt2_124m --dtype=bfloat16 --steps=20 "$@"; }
{
  run --attention_impl=xla --batch_size=16 --json="$out/xla_b16.json"
  run --batch_size=16 --json="$out/default_b16.json"  # '' picks cuDNN flash attention here
  run --attention_impl=cudnn --batch_size=32 --json="$out/cudnn_b32.json"
  run --attention_impl=cudnn --batch_size=64 --json="$out/cudnn_b64.json"
} 2>&1 | grep -v '^[IW][0-9]' | tee "$out/bench.txt"
