"""The coordinate check, with the default init: under muP the change of every hidden layer from
its initial value holds its size from d_model 64 to 512 over 1-3 Adam steps, and the logits' change
does not grow; under SP the changes grow with the width."""

import os
import pathlib
import subprocess
import sys

import pytest

from experiments.configs import base
from gptjax.scaling import mup_check

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
BAND = (1 / 1.5, 1.5)


WIDTHS = [64, 128, 256, 512]


def _config():
  """CPU-sized: 2 layers, 4 heads (head_dim 16 -> 128), 4 x 16 random tokens, 3 steps, the
  default init std."""
  config = base.get_config()
  config.model.update(num_layers=2, num_heads=4, max_seq_len=16)
  config.data.update(seq_len=16, batch_size=4)
  config.train.update(learning_rate=3e-3, grad_clip=0.0)
  return config


@pytest.fixture(scope='module')
def result():
  return mup_check.coord_check(_config(), WIDTHS, steps=3)


@pytest.mark.parametrize('step', [1, 2, 3])
@pytest.mark.slow
def test_under_mup_every_hidden_layer_changes_as_much_at_every_width(result, step):
  """The logits' change does not grow; it shrinks (0.46-0.64 from 64 to 512 measured): with the
  readout multiplier 1/m, the part of the change that comes from the hidden layers meeting the
  random init of the tied table falls as 1/sqrt(m), the learned part holds."""
  ratios = mup_check.ratios(result, step)['mup']
  assert set(ratios) == {'embed', 'block_0/attn', 'block_0/mlp', 'block_0', 'block_1/attn',
                         'block_1/mlp', 'block_1', 'logits'}
  outside = {layer: round(r, 3) for layer, r in ratios.items()
             if layer != 'logits' and not BAND[0] <= r <= BAND[1]}
  assert outside == {}
  assert ratios['logits'] <= BAND[1]


@pytest.mark.parametrize('step', [1, 2, 3])
def test_under_sp_the_changes_grow_with_width(result, step):
  ratios = mup_check.ratios(result, step)['sp']
  assert ratios['logits'] > 3 and min(ratios[f'block_{i}'] for i in (0, 1)) > 5


def test_the_table_has_a_row_per_step_and_layer(result):
  text = mup_check.format_tables(result)
  assert text.count('logits') == 2 * 4  # SP and muP, steps 0..3
  assert '512' in text and 'ratio' in text and 'mean |x_t - x_0|' in text


def test_the_command_refuses_a_width_the_heads_do_not_divide_in_one_line():
  run = subprocess.run(
      [sys.executable, '-m', 'gptjax.scaling', 'mup_check', '--config=experiments/configs/tiny.py',
       '--widths=64,66'], cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1].startswith('gptjax.scaling mup_check: error: ')
  assert 'd_model=66 is not divisible by num_heads=4' in run.stderr
