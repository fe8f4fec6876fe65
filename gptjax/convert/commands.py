"""GPT-2 checkpoints between the Hugging Face layout and gptjax run directories.

  python -m gptjax.convert from-hf --hf_dir=gpt2 --workdir=runs/gpt2_import \
      --config=experiments/configs/gpt2.py:124m
  python -m gptjax.convert to-hf --workdir=runs/gpt2_import --out=gpt2_export

from-hf reads a local `config.json` with `model.safetensors` (or `pytorch_model.bin`), and GPT-2's
`vocab.json` + `merges.txt` where they are present, and writes a run directory as the trainer
does: `config.json` (the --config, whose model section becomes the checkpoint's), `tokenizer.json`
and a step-0 checkpoint of the imported parameters with fresh optimizer state. `gptjax.main` with
the command it prints trains on from there, and `gptjax.generate` samples from it.

to-hf writes `config.json` and `model.safetensors` (float32) that
`transformers.GPT2LMHeadModel.from_pretrained` loads, and the run's BPE as `tokenizer.json`; a model
GPT-2 cannot express (RoPE, SwiGLU, RMSNorm, grouped-query attention, an untied head...) is refused.
A LoRA fine-tune (`gptjax.finetune`) exports with its factors merged into the weights; a fine-tune
with adapters, a prefix or a prompt has modules GPT-2 lacks and is refused.

Everything is read and checked before anything is written; a bad input ends in one line on stderr
and exit status 2 (`gptjax.runs.cli`). The `hf` extra (`pip install -e '.[hf]'`) provides
safetensors and torch. docs/interop.md has the details and the tensor mapping
(`gptjax/convert/hf_gpt2.py`).
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from gptjax import train
from gptjax.convert import hf_gpt2
from gptjax.convert.hf_gpt2 import ConversionError
from gptjax.data.tokenizer import BPETokenizer, Tokenizer, gpt2_bpe, load_tokenizer
from gptjax.finetune import state as finetune_state
from gptjax.model.config import GPTConfig
from gptjax.runs import cli, run_dir
from gptjax.train import checkpointing, optim
from gptjax.train.steps import TrainState

HF_CONFIG = 'config.json'
SAFETENSORS = 'model.safetensors'
TORCH_BIN = 'pytorch_model.bin'
VOCAB_FILE, MERGES_FILE = 'vocab.json', 'merges.txt'  # GPT-2's BPE, as released
COMMANDS = ('from-hf', 'to-hf')


def _hf_module(name: str) -> Any:
  """An import of the `hf` extra's packages, or an error that says how to install them."""
  try:
    return importlib.import_module(name)
  except ImportError:
    raise ConversionError(f"Converting Hugging Face checkpoints needs {name.split('.')[0]!r}: "
                          "install the hf extra, pip install -e '.[hf]'.") from None


def read_hf_checkpoint(hf_dir: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json as a dict, every stored tensor by name) of a local GPT-2 directory."""
  if not os.path.isdir(hf_dir):
    raise ConversionError(f'--hf_dir={hf_dir}: no such directory; pass a local directory holding a '
                          f'GPT-2 {HF_CONFIG} and {SAFETENSORS} or {TORCH_BIN}.')
  config_path = os.path.join(hf_dir, HF_CONFIG)
  try:
    with open(config_path) as f:
      hf_config = json.load(f)
  except (OSError, json.JSONDecodeError) as error:
    raise ConversionError(f'{config_path} cannot be read ({error}); a Hugging Face model '
                          'directory holds its config.json.') from None
  safetensors_path, bin_path = os.path.join(hf_dir, SAFETENSORS), os.path.join(hf_dir, TORCH_BIN)
  try:
    if os.path.exists(safetensors_path):
      return hf_config, dict(_hf_module('safetensors.numpy').load_file(safetensors_path))
    if os.path.exists(bin_path):
      state = _hf_module('torch').load(bin_path, map_location='cpu', weights_only=True)
      return hf_config, {name: tensor.float().numpy() for name, tensor in state.items()}
  except ConversionError:
    raise
  except Exception as error:  # each format raises its own types for a damaged file  # noqa: BLE001
    raise ConversionError(f'The weights in {hf_dir} cannot be read ({type(error).__name__}: '
                          f'{str(error)[:200]}).') from None
  raise ConversionError(f'{hf_dir} has no {SAFETENSORS} or {TORCH_BIN}; a sharded checkpoint is '
                        'not read: save it as one file (save_pretrained with a larger max_shard_size).')


def _gpt2_tokenizer(hf_dir: str) -> BPETokenizer | None:
  vocab, merges = os.path.join(hf_dir, VOCAB_FILE), os.path.join(hf_dir, MERGES_FILE)
  if not (os.path.exists(vocab) and os.path.exists(merges)):
    return None
  try:
    return gpt2_bpe(vocab, merges)
  except Exception as error:  # the tokenizers library raises its own exception type  # noqa: BLE001
    raise ConversionError(f'{vocab} and {merges} are not a GPT-2 BPE ({error}).') from None


def imported_config(config: ml_collections.ConfigDict, hf_config: dict[str, Any],
                    has_tokenizer: bool) -> ml_collections.ConfigDict:
  """`config` with the checkpoint's architecture as its model (and GPT-2's BPE as its tokenizer)."""
  config = ml_collections.ConfigDict(config.to_dict())  # an unlocked copy
  config.model.update(hf_gpt2.model_fields(hf_config))
  if has_tokenizer:
    config.data.tokenizer = 'bpe'
  if config.data.seq_len > config.model.max_seq_len:
    raise ConversionError(f'data.seq_len={config.data.seq_len} exceeds the checkpoint\'s '
                          f'n_positions={config.model.max_seq_len}; pass '
                          f'--config.data.seq_len={config.model.max_seq_len} or less.')
  GPTConfig.from_run_config(config)
  return config


def import_hf(hf_dir: str, workdir: str, config: ml_collections.ConfigDict
              ) -> ml_collections.ConfigDict:
  """Writes `workdir` as a step-0 run of the GPT-2 in `hf_dir`; returns the config it holds."""
  if run_dir.read_config_dict(workdir) or os.path.exists(os.path.join(workdir, run_dir.CHECKPOINT_DIR)):
    raise ConversionError(f'--workdir={workdir} already holds a run; import into a new directory.')
  hf_config, tensors = read_hf_checkpoint(hf_dir)
  tokenizer = _gpt2_tokenizer(hf_dir)
  config = imported_config(config, hf_config, tokenizer is not None)
  model_cfg = GPTConfig.from_run_config(config)
  params = hf_gpt2.params_from_hf(tensors, model_cfg)
  if tokenizer is not None and tokenizer.vocab_size != model_cfg.vocab_size:
    raise ConversionError(f'{VOCAB_FILE} has {tokenizer.vocab_size} tokens but the model '
                          f'{model_cfg.vocab_size}; the tokenizer and weights are from different models.')

  # Fresh optimizer state for the imported parameters; the whole state must have the layout the
  # trainer builds from this config, or its restore would refuse the checkpoint.
  params = jax.device_put(params)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=optim.make_optimizer(config.train, model_cfg).init(params))
  layout = lambda tree: [(jax.tree_util.keystr(path), x.shape, x.dtype)
                        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]]
  if layout(state) != layout(train.abstract_train_state(config)):
    raise AssertionError('The imported state differs in layout from the one train.py builds.')

  manager = checkpointing.make_manager(workdir, save_every=1, keep=1, async_save=False)
  checkpointing.save(manager, 0, state, None, force=True)
  manager.wait_until_finished()
  manager.close()
  if tokenizer is not None:
    tokenizer.save(workdir)
  run_dir.write_config(workdir, config)  # last: a directory with config.json is a whole run
  return config


def _run_tokenizer(workdir: str) -> Tokenizer | None:
  if not os.path.exists(os.path.join(workdir, run_dir.TOKENIZER_FILE)):
    return None
  return load_tokenizer(workdir)


def export_hf(workdir: str, out: str) -> GPTConfig:
  """Writes the latest checkpoint of the run in `workdir` (LoRA merged) to `out` as a GPT-2;
  returns its model."""
  config = run_dir.read_config(workdir)
  model_cfg = GPTConfig.from_config(config.model)
  reasons = hf_gpt2.unexpressible(model_cfg)
  tokenizer = _run_tokenizer(workdir)
  if tokenizer is not None and tokenizer.vocab_size > model_cfg.vocab_size:
    reasons.append(f'its tokenizer has {tokenizer.vocab_size} tokens, more than the model\'s '
                   f'vocab_size={model_cfg.vocab_size}')
  if reasons:
    raise ConversionError(f'GPT-2 cannot express the model of {workdir}: {"; ".join(reasons)}. '
                          'Only a run trained with the GPT-2 architecture exports to GPT-2.')
  _, params = finetune_state.plain_run(workdir)  # a LoRA fine-tune with its factors merged
  tensors = hf_gpt2.params_to_hf(jax.device_get(params), model_cfg)
  eos_id = None if tokenizer is None else int(tokenizer.eos_id)
  payload = _hf_module('safetensors.numpy').save(tensors, metadata={'format': 'pt'})

  run_dir.write_atomic(os.path.join(out, SAFETENSORS), payload)
  if isinstance(tokenizer, BPETokenizer):  # a byte-level run has no tokenizer transformers reads
    tokenizer.save(out)
  # last: transformers takes a directory with config.json for a model
  run_dir.write_atomic(os.path.join(out, HF_CONFIG),
                       json.dumps(hf_gpt2.hf_config(model_cfg, eos_id), indent=2, sort_keys=True))
  return model_cfg


def continue_command(config_file: str, argv: list[str], workdir: str,
                     written: ml_collections.ConfigDict, given: ml_collections.ConfigDict) -> str:
  """The `gptjax.main` command line whose config equals the imported run's: the --config file,
  the user's overrides, and the fields the import changed."""
  changed = {f'--config.{section}.{name}': value for section in ('model', 'data')
             for name, value in written[section].items() if value != given[section][name]}
  kept = [arg for arg in argv if arg.startswith('--config.') and arg.split('=')[0] not in changed]
  args = [f'--config={config_file}', f'--workdir={workdir}', *kept,
          *(f'{flag}={value}' for flag, value in changed.items())]
  return 'python -m gptjax.main ' + ' '.join(shlex.quote(arg) for arg in args)


def main(argv: list[str]) -> None:
  """Runs one command; a bad input raises ConversionError, which `cli.run` ends in one line."""
  logging.set_verbosity(logging.WARNING)  # orbax's per-save INFO lines; the result is printed
  if argv[1:] not in ([command] for command in COMMANDS):
    raise ConversionError(f'Name one command, {" or ".join(COMMANDS)}; got {argv[1:]}.')
  f = flags.FLAGS
  if argv[1] == 'from-hf':
    if not (f.hf_dir and f.workdir and f.config):
      raise ConversionError('from-hf needs --hf_dir, --workdir and --config (the settings the '
                            'imported run trains with, e.g. experiments/configs/gpt2.py:124m).')
    written = import_hf(f.hf_dir, f.workdir, f.config)
    command = continue_command(config_flags.get_config_filename(f['config']), sys.argv,
                               f.workdir, written, f.config)
    print(f'Imported {f.hf_dir} into {f.workdir}.\nTrain on with: {command}\n'
          f'Sample with: python -m gptjax.generate --workdir={f.workdir} --prompt=...')
  else:
    if not (f.workdir and f.out):
      raise ConversionError('to-hf needs --workdir (a gptjax run) and --out.')
    export_hf(f.workdir, f.out)
    print(f'Wrote {f.out}: transformers.GPT2LMHeadModel.from_pretrained({f.out!r}) loads it.')


def define_flags() -> None:
  """Flags exist only when run as a script: importing the library must not claim global names."""
  config_flags.DEFINE_config_file(
      'config', None, 'from-hf: the get_config() file the imported run trains with; its model '
      "section is replaced by the checkpoint's architecture.", lock_config=True)
  flags.DEFINE_string('hf_dir', None, 'from-hf: a local Hugging Face GPT-2 directory.')
  flags.DEFINE_string('workdir', None, 'The gptjax run directory to write (from-hf) or read (to-hf).')
  flags.DEFINE_string('out', None, 'to-hf: the directory to write the GPT-2 files into.')
