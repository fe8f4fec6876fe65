"""Supervised fine-tuning of a pre-trained run, in full or with a parameter-efficient method.

  python -m gptjax.finetune --config=experiments/configs/finetune.py --init_from=runs/tiny \
      --workdir=runs/tiny_sft --config.finetune.method=lora --config.finetune.task=reverse

The run starts from the parameters of `--init_from`'s latest checkpoint and trains on the task's
prompt/response examples with the loss on response tokens only (`gptjax/finetune/sft_data.py`),
through the pre-training step, loop, records and checkpoints (`gptjax/train/loop.py`): a rerun
resumes exactly, a second process on the workdir is refused, and a changed config is refused unless
`--allow_config_change`. The train state holds only what the method trains
(`gptjax/finetune/state.py`, `gptjax/model/peft.py`). Each evaluation adds the response loss and, on
a task with one right answer, the exact-match accuracy of greedy generations of the validation
responses (`eval_exact_match`).

Everything that can be refused is checked before anything is written: a missing run to start from,
a model that differs from the checkpoint's, an empty or malformed task file. `gptjax.generate`
samples from the fine-tuned run, and `gptjax.convert to-hf` exports a LoRA fine-tune with its
factors merged into the weights.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from gptjax import train
from gptjax.cost import flops
from gptjax.data.tokenizer import Tokenizer, load_tokenizer
from gptjax.finetune import sft_data, state as finetune_state, tasks
from gptjax.generate import decoding
from gptjax.generate.sampling import SamplingConfig
from gptjax.model import peft
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.parallel import distributed, hardware, sharding
from gptjax.runs import cli, run_dir, workdir_lock
from gptjax.train import checkpointing, evaluate, optim
from gptjax.train.recorder import Recorder
from gptjax.train.steps import eval_step, train_step


def exact_match(params: Any, model_cfg: GPTConfig, tokenizer: Tokenizer,
                examples: Sequence[tasks.Example], batch_size: int) -> float:
  """Fraction of examples whose greedy continuation of the prompt, up to EOS, is the response.

  Prompts go in left-padded batches of `batch_size` (the last filled with copies, so every batch
  has one shape and splits over the mesh like a training batch).
  """
  eos = int(tokenizer.eos_id)
  prompts = [[int(i) for i in tokenizer.encode(e.prompt)] or [eos] for e in examples]
  longest = max(len(tokenizer.encode(e.response)) for e in examples) + 1  # and its EOS
  hits = 0
  for start in range(0, len(examples), batch_size):
    chunk = prompts[start:start + batch_size]
    chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))
    tokens_BxP, mask_BxP = decoding.left_pad(chunk, pad_id=eos)
    room = model_cfg.max_seq_len - tokens_BxP.shape[1] + 1
    out = decoding.generate(params, tokens_BxP, mask_BxP, jax.random.key(0), config=model_cfg,
                            max_new_tokens=max(1, min(longest, room)),
                            sampling=SamplingConfig(temperature=0.0), stop_tokens=(eos,),
                            pad_id=eos)
    tokens_BxN, lengths_B = jax.device_get((out.tokens_BxN, out.lengths_B))
    for row, example in enumerate(examples[start:start + batch_size]):
      ids = [int(i) for i in tokens_BxN[row, :lengths_B[row]] if i != eos]
      hits += tokenizer.decode(ids) == example.response
  return hits / len(examples)


def _jit_steps(config, setup: hardware.Setup, mesh, rules, split: finetune_state.SplitState):
  """(train, eval) functions of (state, batch) and (params, batch) with the base bound in."""
  model = GPT(setup.model)
  step_fn = functools.partial(
      train_step, model=model, optimizer=optim.make_optimizer(config.train, setup.model),
      schedule=optim.learning_rate_schedule(config.train), grad_accum_steps=setup.passes,
      dropout_seed=config.seed if setup.model.dropout > 0 else None)
  batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  jit_train = jax.jit(sharding.traced_under(mesh, rules, step_fn, 'train_step'),
                      in_shardings=(split.state_shardings, batch_sharding, split.frozen_shardings),
                      out_shardings=(split.state_shardings, replicated), donate_argnums=0)
  jit_eval = jax.jit(
      sharding.traced_under(mesh, rules, functools.partial(eval_step, model=model), 'eval_step'),
      in_shardings=(split.state_shardings.params, batch_sharding, split.frozen_shardings),
      out_shardings=replicated)
  frozen = split.frozen
  return (lambda state, batch: jit_train(state, batch, frozen),
          lambda params, batch: jit_eval(params, batch, frozen))


def finetune(config: ml_collections.ConfigDict, init_from: str, workdir: str, *,
             allow_config_change: bool = False) -> dict[str, Any]:
  """Fine-tunes the run in `init_from` as `config` says, into `workdir`; returns the last record.

  Reads and checks everything (the base run, the task, the config) before it creates, locks or
  writes anything in `workdir`.
  """
  config = finetune_state.resolve_config(config, init_from)
  mesh = sharding.make_mesh(config.mesh)
  train.check_run_config(config, mesh, lambda c: tasks.check_config(c.finetune))
  train.check_one_step_per_call(config, 'fine-tuning')
  tokenizer = load_tokenizer(init_from)
  batch_sharding = sharding.batch_sharding(mesh)
  block, blocks = sharding.process_batch_block(batch_sharding, config.data.batch_size, 2)
  sft = sft_data.build_sft_data(config, tokenizer, process_index=block, process_count=blocks)
  _, base_params = finetune_state.load_base(init_from)
  identity = finetune_state.base_identity(init_from, base_params)
  workdir_lock.prepare(workdir)
  lock = train.take_workdir(workdir)
  try:
    changed = train.check_unchanged(config, workdir, allow_config_change)
    if jax.process_index() == 0:
      finetune_state.check_base(workdir, identity)
    return _finetune(config, workdir, mesh, sft, tokenizer, base_params, keep_old_config=changed)
  finally:
    lock.release()


def _finetune(config, workdir, mesh, sft: sft_data.SFTData, tokenizer: Tokenizer, base_params,
              *, keep_old_config: bool) -> dict[str, Any]:
  rules = sharding.logical_rules(config.mesh)
  setup = hardware.resolve(config, mesh)
  split = finetune_state.create_split_state(config, mesh, rules, base_params)
  manager = checkpointing.make_manager(
      workdir, save_every=config.train.checkpoint_every, keep=config.train.keep_checkpoints,
      async_save=config.train.async_checkpoints)
  data = sft.data
  start_step, state = train.restore_or_start(manager, workdir, split.state, split.state_shardings,
                                             data)
  if jax.process_index() == 0:
    config_path = os.path.join(workdir, run_dir.CONFIG_FILE)
    if keep_old_config:
      os.replace(config_path, os.path.join(workdir, f'config.until-step-{start_step}.json'))
    tokenizer.save(workdir)
    run_dir.write_config(workdir, config)
  jit_train, jit_eval = _jit_steps(config, setup, mesh, rules, split)
  trainable = flops.trainable_params(setup.model)
  recorder = Recorder(config, setup.model, workdir, data, start_step,
                      constants={'params_trainable': trainable})
  logging.info('Fine-tuning %s with %r: %s trainable parameters; task %r.',
               config.finetune.init_from, config.finetune.method, f'{trainable:,}',
               config.finetune.task)
  to_global = functools.partial(train.global_batch, batch_sharding=sharding.batch_sharding(mesh),
                                global_shape=(config.data.batch_size, 2, config.data.seq_len))

  def evaluate_with(params, batches) -> dict[str, float]:
    result = evaluate.evaluate(params, eval_fn=jit_eval, batches=batches, to_global=to_global)
    if sft.exact_match:
      result['eval_exact_match'] = exact_match(peft.combine(params, split.frozen), setup.model,
                                               tokenizer, sft.validation, config.data.batch_size)
    return result

  if start_step == config.train.num_steps:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      recorder.record_missing_final_eval(
          start_step, lambda: evaluate_with(state.params, batches=data.eval_batches()), workdir,
          checkpointing.saved_train_metrics(manager, start_step))
  return train.run_loop(config, state, start_step, data, jit_train, evaluate_with, to_global,
                        manager, recorder, mesh, rules)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}; use --config.x.y=value for overrides.')
  cli.quiet_libraries()
  f = flags.FLAGS
  if not (f.config and f.workdir):
    raise ValueError('Pass --config (e.g. experiments/configs/finetune.py), --init_from and '
                     '--workdir.')
  config = f.config
  distributed.configure_cpu_devices(config.mesh.cpu_devices)
  distributed.initialize(config.distributed)
  init_from = os.path.expanduser(f.init_from or config.finetune.init_from)
  record = finetune(config, init_from, os.path.expanduser(f.workdir),
                    allow_config_change=f.allow_config_change)
  if record:
    summary = {k: round(float(v), 4) for k, v in record.items() if k.startswith('eval_')}
    print(f'Fine-tuned {f.workdir}: {summary}')


def define_flags() -> None:
  """Flags exist only when run as a script: importing the library must not claim global names."""
  config_flags.DEFINE_config_file('config', None, 'Path to a get_config() file, e.g. '
                                  'experiments/configs/finetune.py.', lock_config=True)
  flags.DEFINE_string('init_from', None, 'The pre-trained run directory to start from (its '
                      'latest checkpoint); overrides finetune.init_from.')
  flags.DEFINE_string('workdir', None, "Directory for the fine-tune's checkpoints, metrics and "
                      'config.')
  flags.DEFINE_bool('allow_config_change', False, 'Continue a workdir made with another config, '
                    'with this one.')
