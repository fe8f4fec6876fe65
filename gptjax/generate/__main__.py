"""Command line sampling from a trained run: its latest checkpoint, its tokenizer, a prompt.

  python -m gptjax.generate --workdir=runs/tiny --prompt="def " --max_new_tokens=200 \
      [--temperature=0.8 --top_k=40 --top_p=0.95 --num_beams=1 --seed=0]

Sampling goes through `decoding.sample_windowed`, which slides the context window once the prompt
and output outgrow max_seq_len, so --max_new_tokens is not limited by the model's context; beam
search keeps the whole output in one context.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np
from absl import app, flags

from gptjax.data.tokenizer import load_or_train_tokenizer
from gptjax.finetune import state
from gptjax.generate.beam_search import BeamSearchConfig, beam_search
from gptjax.generate.decoding import left_pad, sample_windowed
from gptjax.generate.sampling import SamplingConfig
from gptjax.model.config import GPTConfig
from gptjax.parallel import hardware
from gptjax.runs import cli, run_dir

_WORKDIR = flags.DEFINE_string('workdir', None,
                                'Run directory holding config.json and checkpoints/.')
_PROMPT = flags.DEFINE_string('prompt', '', 'Text to continue; empty starts from the EOS token.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 200,
                                 'Tokens to generate (fewer if EOS comes first).')
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0, 'Softmax temperature; 0 is greedy.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Keep the k most likely tokens; 0 keeps all.')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus mass to keep; 1.0 keeps all.')
_BEAMS = flags.DEFINE_integer('num_beams', 1,
                               'Beam search when > 1 (then the sampling flags are ignored).')
_LENGTH_PENALTY = flags.DEFINE_float('length_penalty', 0.0,
                                     'Beam search GNMT length-penalty exponent alpha.')
_SEED = flags.DEFINE_integer('seed', 0, 'PRNG seed for sampling.')
flags.mark_flag_as_required('workdir')


def main(argv: Sequence[str]) -> None:
  """Loads a run's latest checkpoint and tokenizer, then prints the prompt and its continuation."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  if _MAX_NEW.value < 1:
    raise ValueError(f'--max_new_tokens={_MAX_NEW.value} must be at least 1.')
  if _BEAMS.value < 1:
    raise ValueError(f'--num_beams={_BEAMS.value} must be at least 1 (1 samples, more search).')
  if run_dir.exists(os.path.join(_WORKDIR.value, run_dir.CONFIG_FILE)) and 'ppo' in (
      run_dir.read_config(_WORKDIR.value)):
    raise ValueError(f'{_WORKDIR.value} is a PPO run: its checkpoints hold the policy, its critic '
                     'and beta together, which this command does not read. Load the policy with '
                     'gptjax.preferences.ppo_training.load_state(WORKDIR).policy.params, or '
                     'sample the SFT or DPO run it started from.')
  config, params = state.load_params(_WORKDIR.value)
  if not config.model.get('causal', True):
    raise ValueError(f'{_WORKDIR.value} holds a bidirectional model (model.causal=False, trained '
                     'on masked tokens): it cannot generate text left to right.')
  model_config = hardware.resolve_attention(GPTConfig.from_run_config(config), jax.devices()[0])
  tokenizer = load_or_train_tokenizer(config, _WORKDIR.value)
  prompt_ids = [int(i) for i in tokenizer.encode(_PROMPT.value)] or [int(tokenizer.eos_id)]
  stop_tokens = (int(tokenizer.eos_id),)
  if _BEAMS.value > 1:  # beams need the whole output in one cache: no sliding window
    room = model_config.max_seq_len - len(prompt_ids) + 1
    if room < 1:
      raise ValueError(f'The prompt has {len(prompt_ids)} tokens, but beam search keeps prompt and '
                       f'output in the model\'s {model_config.max_seq_len}-token context: shorten '
                       f'the prompt, or sample (--num_beams=1), which slides the context window.')
    if _MAX_NEW.value > room:
      raise ValueError(f'Beam search keeps prompt and output in one {model_config.max_seq_len}-'
                           f'token context: use --max_new_tokens<={room} or sample instead.')
    out = beam_search(params, *left_pad([prompt_ids]), config=model_config,
                      max_new_tokens=_MAX_NEW.value, stop_tokens=stop_tokens,
                      beam=BeamSearchConfig(num_beams=_BEAMS.value, alpha=_LENGTH_PENALTY.value))
    new_ids = np.asarray(out.tokens_BxWxN[0, 0, :int(out.lengths_BxW[0, 0])]).tolist()
  else:
    sampling = SamplingConfig(temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                              top_p=_TOP_P.value)
    new_ids = sample_windowed(params, model_config, prompt_ids, _MAX_NEW.value,
                              jax.random.key(_SEED.value), sampling, stop_tokens)
  print(_PROMPT.value + tokenizer.decode([i for i in new_ids if i not in stop_tokens]))


if __name__ == '__main__':
  cli.run(main, 'gptjax.generate')
