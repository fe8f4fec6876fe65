"""The coordinate check: under muP every layer's activation size holds from d_model 64 to 1024
after 1-3 Adam steps; under SP the logits grow with the width."""

import os
import pathlib
import subprocess
import sys

import pytest

from experiments.configs import base
from gptjax.scaling import mup_check

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
BAND = (1 / 1.5, 1.5)


def _config():
  """CPU-sized: 2 layers, 4 heads (head_dim 16 -> 256), 4 x 16 random tokens, 3 steps.

  The init std is halved (0.01) so that after one step the logits are dominated by their learned
  part, which muP keeps the same at every width; their random init part shrinks as 1/sqrt(m) by
  design, and at 0.02 it still dominates the narrowest model's logits after one step at this rate.
  """
  config = base.get_config()
  config.model.update(num_layers=2, num_heads=4, max_seq_len=16, init_std=0.01)
  config.data.update(seq_len=16, batch_size=4)
  config.train.update(learning_rate=3e-3, grad_clip=0.0)
  return config


@pytest.fixture(scope='module')
def result():
  return mup_check.coord_check(_config(), [64, 1024], steps=3)


@pytest.mark.parametrize('step', [1, 2, 3])
@pytest.mark.slow
def test_under_mup_every_layer_keeps_its_size_from_width_64_to_1024(result, step):
  ratios = mup_check.ratios(result, step)['mup']
  assert set(ratios) == {'embed', 'block_0/attn', 'block_0/mlp', 'block_0', 'block_1/attn',
                         'block_1/mlp', 'block_1', 'logits'}
  outside = {layer: round(r, 3) for layer, r in ratios.items() if not BAND[0] <= r <= BAND[1]}
  assert outside == {}


@pytest.mark.parametrize('step', [1, 2, 3])
def test_under_sp_the_logits_grow_with_width(result, step):
  assert mup_check.ratios(result, step)['sp']['logits'] > BAND[1]


def test_the_table_has_a_row_per_step_and_layer(result):
  text = mup_check.format_tables(result)
  assert text.count('logits') == 2 * 4  # SP and muP, steps 0..3
  assert '1024' in text and 'ratio' in text


def test_the_command_refuses_a_width_the_heads_do_not_divide_in_one_line():
  run = subprocess.run(
      [sys.executable, '-m', 'gptjax.scaling', 'mup_check', '--config=experiments/configs/tiny.py',
       '--widths=64,66'], cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1].startswith('gptjax.scaling mup_check: error: ')
  assert 'd_model=66 is not divisible by num_heads=4' in run.stderr
