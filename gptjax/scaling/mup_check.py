r"""Coordinate check: do activations keep their size as the model widens, under SP and under muP?

  python -m gptjax.scaling mup_check --config=experiments/configs/tiny.py \
      --widths=64,128,256,512,1024 [--steps=3 --out_dir=runs/mup_check \
      --config.train.learning_rate=0.01 --base_width=64]

For each parametrisation and width (d_model; the head count, depth and everything else come from
the config) it trains from the same seed on one fixed batch of random tokens and records, for the
token embedding, each block's attention and MLP outputs, each block's residual output and the
logits, the mean |x_0| at init and then the mean |x_t - x_0| of the change from init after 1..steps
optimizer steps (AdamW at the config's peak learning rate, constant, no warmup). muP promises that
the change keeps its size as the width grows (Yang, Hu et al. 2022, "Tensor Programs V", figure 5);
under SP the change of the logits and the hidden layers grows with width.
It prints one table per parametrisation (the last column: widest / narrowest) and writes
coord_check.png and coord_check.json to --out_dir. The parameter classes of the widest model are
printed first (`gptjax.model.parametrization`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from gptjax.model import parametrization
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT, MLP, Block, CausalSelfAttention
from gptjax.scaling import plots
from gptjax.train import optim
from gptjax.train.steps import TrainState, train_step

# {parametrization: {width: [{layer: mean |x_0|}, then {layer: mean |x_t - x_0|} for t = 1..steps]}}
Result = dict[str, dict[int, list[dict[str, float]]]]
_MEASURED = (GPT, Block, CausalSelfAttention, MLP, nn.Embed)


def _capture(module: nn.Module, method_name: str) -> bool:
  return method_name == '__call__' and isinstance(module, _MEASURED)


def activations(model: GPT, params: Any, tokens_BxT: jax.Array) -> dict[str, jax.Array]:
  """{layer: output}: 'embed', 'block_i/attn', 'block_i/mlp', 'block_i', 'logits'."""
  _, state = model.apply({'params': params}, tokens_BxT, capture_intermediates=_capture,
                         mutable=['intermediates'])
  found = {}
  for path, value in jax.tree_util.tree_flatten_with_path(state['intermediates'])[0]:
    keys = [k for k in parametrization.dict_path(path) if k != '__call__']
    found['/'.join(keys) or 'logits'] = value.astype(jnp.float32)
  return found


def check_config(config: ml_collections.ConfigDict, width: int, parametrization_name: str,
                 base_width: int) -> tuple[GPTConfig, ml_collections.ConfigDict]:
  """The model at `width` and the train config of the check (constant LR, no warmup)."""
  model_cfg = dataclasses.replace(
      GPTConfig.from_run_config(config), d_model=width, parametrization=parametrization_name,
      base_width=base_width, attention_impl='xla', scan_layers=False, remat='none', dropout=0.0)
  train = ml_collections.ConfigDict(config.train.to_dict())
  train.update(schedule='constant', warmup_steps=0)
  return model_cfg, train


def run_width(config: ml_collections.ConfigDict, width: int, parametrization_name: str,
              base_width: int, steps: int) -> list[dict[str, float]]:
  """Mean |activation| per layer at init, then mean |change from init| after 1..steps optimizer
  steps of one model."""
  model_cfg, train = check_config(config, width, parametrization_name, base_width)
  model = GPT(model_cfg)
  optimizer = optim.make_optimizer(train, model_cfg)
  shape = (config.data.batch_size, config.data.seq_len + 1)
  batch_BxT1 = jnp.asarray(np.random.default_rng(1).integers(0, model_cfg.vocab_size, shape),
                           jnp.int32)

  @jax.jit  # one compiled init: an eager one compiles each small op of the optimizer's init
  def init(key: jax.Array) -> TrainState:
    params = nn.unbox(model.init(key, batch_BxT1[:, :-1])['params'])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))

  state = init(jax.random.key(config.seed))
  step = functools.partial(train_step, model=model, optimizer=optimizer,
                           schedule=optim.learning_rate_schedule(train))

  measure = jax.jit(lambda params: activations(model, params, batch_BxT1[:, :-1]))
  advance = jax.jit(lambda state: step(state, batch_BxT1)[0])
  initial = measure(state.params)
  history = [{k: float(jnp.mean(jnp.abs(v))) for k, v in initial.items()}]
  for _ in range(steps):
    state = advance(state)
    now = measure(state.params)
    history.append({k: float(jnp.mean(jnp.abs(now[k] - initial[k]))) for k in now})
  return history


def coord_check(config: ml_collections.ConfigDict, widths: Sequence[int], *, steps: int = 3,
                parametrizations: Sequence[str] = parametrization.PARAMETRIZATIONS,
                base_width: int | None = None) -> Result:
  """Every (parametrisation, width); muP's base width defaults to the narrowest width."""
  base = base_width or min(widths)
  return {p: {w: run_width(config, w, p, base, steps) for w in widths} for p in parametrizations}


def ratios(result: Result, step: int) -> dict[str, dict[str, float]]:
  """{parametrization: {layer: widest width / narrowest}} at `step`: of the activation's size at
  step 0, of its change from init after that."""
  out = {}
  for name, by_width in result.items():
    narrow, wide = by_width[min(by_width)][step], by_width[max(by_width)][step]
    out[name] = {layer: wide[layer] / narrow[layer] for layer in narrow}
  return out


def format_tables(result: Result) -> str:
  lines = []
  for name, by_width in result.items():
    widths = sorted(by_width)
    lines.append(f'\n{name}: step 0 mean |x_0|, then mean |x_t - x_0| per width; widest / '
                 'narrowest')
    lines.append(f'{"step":>4} {"layer":<14}' + ''.join(f'{w:>10}' for w in widths) + '     ratio')
    for t in range(len(by_width[widths[0]])):
      for layer in by_width[widths[0]][t]:
        values = [by_width[w][t][layer] for w in widths]
        lines.append(f'{t:>4} {layer:<14}' + ''.join(f'{v:10.4g}' for v in values)
                     + f'{values[-1] / values[0]:10.3g}')
  return '\n'.join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file('config', 'experiments/configs/tiny.py', 'A get_config() file.',
                                  lock_config=True)
  flags.DEFINE_list('widths', ['64', '128', '256', '512', '1024'], 'd_model values to compare.')
  flags.DEFINE_integer('steps', 3, 'Optimizer steps after init.')
  flags.DEFINE_integer('base_width', 0, "muP's base width; 0: the narrowest width.")
  flags.DEFINE_string('out_dir', 'runs/mup_check', 'Where coord_check.png and .json go.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  config, widths = FLAGS.config, sorted(int(w) for w in FLAGS.widths)
  try:  # a config that cannot run: its message in one line, not a traceback
    widest, _ = check_config(config, widths[-1], 'mup', FLAGS.base_width or widths[0])
    for width in widths:
      check_config(config, width, 'mup', FLAGS.base_width or widths[0])
  except ValueError as error:
    print('gptjax.scaling mup_check: error: ' + ' '.join(str(error).split()), file=sys.stderr)
    sys.exit(2)
  print(parametrization.format_table(optim.param_table(widest)))
  result = coord_check(config, widths, steps=FLAGS.steps, base_width=FLAGS.base_width or None)
  print(format_tables(result))
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  with open(os.path.join(FLAGS.out_dir, 'coord_check.json'), 'w') as f:
    json.dump({p: {str(w): h for w, h in r.items()} for p, r in result.items()}, f, indent=1)
  print('Wrote', plots.plot_coord_check(result, os.path.join(FLAGS.out_dir, 'coord_check.png')))
