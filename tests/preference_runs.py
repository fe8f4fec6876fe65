"""Tiny runs and configs for the preference-learning tests.

`policy_run` writes a step-0 run directory (config, byte tokenizer, checkpoint) of a random GPT
small enough that a stage compiles in seconds: the stages read it as they read an SFT run.
"""

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import base, preferences
from gptjax.data.tokenizer import ByteTokenizer
from gptjax.model.config import GPTConfig
from gptjax.runs import run_dir
from gptjax.train import checkpointing, loop, optim
from gptjax.train.steps import TrainState

MODEL = {'d_model': 32, 'num_layers': 1, 'num_heads': 2, 'max_seq_len': 24,
         'attention_impl': 'xla'}
PROMPT_TOKENS, NEW_TOKENS = 12, 8  # rows of 20 tokens
STAGE = {
    'data.batch_size': 16, 'preferences.max_prompt_tokens': PROMPT_TOKENS,
    'preferences.max_new_tokens': NEW_TOKENS, 'preferences.eval_fraction': 0.25,
    'train.warmup_steps': 0, 'train.log_every': 2, 'train.eval_every': 4,
    'train.checkpoint_every': 2, 'train.async_checkpoints': False, 'train.eval_batches': 1,
}


def policy_run(workdir: str, seed: int = 0, std: float = 0.5, **model) -> str:
  """A step-0 run of a random GPT in `workdir` (a large std makes its samples vary); `model`
  overrides fields of MODEL."""
  config = base.get_config()
  for name, value in {**MODEL, **model}.items():
    config.model[name] = value
  config.data.seq_len = config.model.max_seq_len
  config.data.batch_size = 8
  model_cfg = GPTConfig.from_run_config(config)
  abstract = loop.abstract_train_state(config).params
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, std, s.shape), s.dtype), abstract)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=optim.make_optimizer(config.train, model_cfg).init(params))
  manager = checkpointing.make_manager(workdir, save_every=1, keep=1, async_save=False)
  checkpointing.save(manager, 0, state, None, force=True)
  manager.wait_until_finished()
  manager.close()
  ByteTokenizer().save(workdir)
  run_dir.write_config(workdir, config)
  return workdir


def stage_config(stage: str, **overrides):
  config = preferences.get_config(stage)
  for key, value in {**STAGE, **overrides}.items():
    section, field = key.split('.')
    if section in config and field in config[section]:
      config[section][field] = value
  return config
