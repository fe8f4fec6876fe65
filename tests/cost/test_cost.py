"""Cost arithmetic against published figures and hand computations."""

import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import gpt3
from gptjax.cost import estimator
from gptjax.cost.flops import Accelerator
from gptjax.model.config import GPTConfig
from gptjax.scaling.laws import ChinchillaFit

# A made-up chip with round numbers, so every expected value below is worked by hand.
CHIP = Accelerator(peak_bf16_flops=1e9, peak_fp32_flops=None, memory_bandwidth_bytes_per_s=1e8,
                   memory_bytes=1e6, price_per_hour_usd=3.6, device_kind_substrings=('X',))
# D=16, L=2, 2 heads of H=8, F=64, V=100, 32 learned positions, biases, tied head.
HAND = GPTConfig(vocab_size=100, d_model=16, num_layers=2, num_heads=2, max_seq_len=32)
# Parameters: per layer 2 LayerNorms (64) + QKV 16*48+48 (816) + out 16*16+16 (272)
#   + MLP 16*64+64 + 64*16+16 (2128) = 3280; 2 layers + final norm 32 = 6592; + token table 1600
#   + position table 512 = 8704.
HAND_PARAMS = 8704
# Forward FLOPs per token at context 8, per layer: projections 2*16*48 + 2*16*16 = 2048,
#   attention 2*2*8*16 = 512, MLP 2*2*16*64 = 4096 -> 6656; 2 layers + output 2*16*100 = 16512.
HAND_FLOPS_AT_8 = 16512
KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 8 * 2  # layers * (K, V) * heads * head_dim * bf16 bytes = 128
ROOT = pathlib.Path(__file__).resolve().parents[2]


def gpt3_175b() -> GPTConfig:
  return GPTConfig.from_config(gpt3.get_config('175b').model)


def test_gpt3_175b_training_flops_match_the_paper():
  # Brown et al. 2020, table D.1: 3.14e23 FLOPs for 175B on 300B tokens.
  est = estimator.training_estimate(gpt3_175b(), 2048, 300e9, 'a100')
  assert est.flops_by_method['6nd'] == pytest.approx(3.14e23, rel=0.02)
  assert est.flops_by_method['kaplan'] == pytest.approx(3.14e23, rel=0.02)
  assert est.flops_by_method['6nd'] < est.flops_by_method['full'] < 1.05 * 3.14e23


def test_gpt3_175b_training_time_matches_megatron_estimate():
  # Narayanan et al. 2021 (sec. 5.1): 175B on 300B tokens, 1024 A100s at 140 TFLOP/s each takes
  # ~34 days counting 8ND (with activation recomputation); 6ND at the same rate is 6/8 of that.
  est = estimator.training_estimate(gpt3_175b(), 2048, 300e9, 'a100', num_accelerators=1024,
                                    mfu=140e12 / 312e12, method='6nd')
  assert est.seconds / 86400 == pytest.approx(34 * 6 / 8, rel=0.03)


def test_training_time_hours_and_dollars_by_hand():
  assert estimator.training_time_s(1e18, 1e12, num_accelerators=10, mfu=0.5) == pytest.approx(2e5)
  est = estimator.training_estimate(HAND, 8, 1e6, CHIP, num_accelerators=4, mfu=0.5)
  assert est.params.total == HAND_PARAMS
  assert est.flops_by_method['6nd'] == 6 * HAND_PARAMS * 1e6
  seconds = est.flops / (4 * 1e9 * 0.5)
  assert est.seconds == pytest.approx(seconds)
  assert est.accelerator_hours == pytest.approx(4 * seconds / 3600)
  assert est.usd == pytest.approx(4 * seconds / 3600 * 3.6)
  cheaper = estimator.training_estimate(HAND, 8, 1e6, CHIP, num_accelerators=4, mfu=0.5,
                                        price_per_hour=1.8)
  assert cheaper.usd == pytest.approx(est.usd / 2)


def test_serving_small_batch_is_memory_bound_by_hand():
  est = estimator.serving_estimate(HAND, CHIP, batch_size=4, context=8)
  assert est.flops_per_step == 4 * HAND_FLOPS_AT_8
  assert est.weight_bytes == 2 * HAND_PARAMS  # bf16
  assert est.kv_bytes == 4 * 8 * KV_BYTES_PER_TOKEN  # 4096
  assert est.compute_s == pytest.approx(4 * 16512 / 1e9)  # 66 us
  assert est.memory_s == pytest.approx((17408 + 4096) / 1e8)  # 215 us
  assert est.bound == 'memory' and est.num_accelerators == 1 and est.fits_in_memory
  assert est.tokens_per_s == pytest.approx(4 / 215.04e-6)
  # 1000 tokens = 250 steps of 215.04 us = 0.05376 s on one chip at $3.6/h.
  assert est.usd_per_1k_tokens == pytest.approx(0.05376 / 3600 * 3.6)


def test_serving_large_batch_is_compute_bound_by_hand():
  est = estimator.serving_estimate(HAND, CHIP, batch_size=64, context=8)
  assert est.compute_s == pytest.approx(64 * 16512 / 1e9)  # 1.057 ms
  assert est.memory_s == pytest.approx((17408 + 64 * 8 * 128) / 1e8)  # 0.829 ms
  assert est.bound == 'compute'
  assert est.step_s == est.compute_s


def test_serving_takes_the_fewest_chips_that_hold_weights_and_cache():
  small_memory = Accelerator(1e9, None, 1e8, 1e4, 3.6, ('X',))  # 21504 bytes need 3 chips
  est = estimator.serving_estimate(HAND, small_memory, batch_size=4, context=8)
  assert est.num_accelerators == 3
  assert est.memory_s == pytest.approx(21504 / 3e8)
  forced = estimator.serving_estimate(HAND, small_memory, batch_size=4, context=8, num_accelerators=2)
  assert not forced.fits_in_memory
  int8 = estimator.serving_estimate(HAND, CHIP, batch_size=4, context=8, weight_dtype='int8')
  assert int8.weight_bytes == HAND_PARAMS


def test_grouped_query_attention_shrinks_the_kv_cache():
  gqa = GPTConfig(vocab_size=100, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1)
  assert estimator.kv_cache_bytes(gqa, 4, 8) == estimator.kv_cache_bytes(HAND, 4, 8) / 2


def test_chinchilla_tokens():
  assert estimator.chinchilla_tokens(70e9) == pytest.approx(1.4e12)  # Chinchilla: 70B on 1.4T
  fit = ChinchillaFit(**estimator.HOFFMANN_2022_FIT)
  n_opt, d_opt = fit.compute_optimal(1e23)
  assert estimator.chinchilla_tokens(float(n_opt), fit) == pytest.approx(float(d_opt), rel=1e-6)

  class SquareRootFit:  # N_opt = sqrt(C / 6) = D_opt
    def compute_optimal(self, c):
      return np.sqrt(c / 6), np.sqrt(c / 6)

  assert estimator.chinchilla_tokens(1e9, SquareRootFit()) == pytest.approx(1e9, rel=1e-6)


def test_errors_name_the_value_and_the_fix():
  with pytest.raises(ValueError, match="accelerator='v100'; choose one of"):
    estimator.training_estimate(HAND, 8, 1e6, 'v100')
  with pytest.raises(ValueError, match="dtype='float32'"):
    estimator.training_estimate(HAND, 8, 1e6, 'tpu_v4', dtype='float32')
  with pytest.raises(ValueError, match='mfu=1.5'):
    estimator.training_estimate(HAND, 8, 1e6, 'a100', mfu=1.5)
  with pytest.raises(ValueError, match="method='8nd'"):
    estimator.training_estimate(HAND, 8, 1e6, 'a100', method='8nd')


def test_cli_prints_a_report_and_takes_config_overrides():
  """The report's figures, worked from the shapes: GPT-3 175B cut to 48 layers, 300B tokens."""
  out = subprocess.run(
      [sys.executable, '-m', 'gptjax.cost', '--config=experiments/configs/gpt3.py:175b',
       '--config.model.num_layers=48', '--tokens=300e9', '--accelerator=h100', '--batch_size=8'],
      capture_output=True, text=True, check=True, cwd=ROOT).stdout
  layers, d, vocab, context, tokens, batch = 48, 12288, 50257, 2048, 300e9, 8
  # Per layer: QKV and output projections 4d² + 4d, MLP 8d² + 5d, two LayerNorms 4d; then the
  # final LayerNorm 2d; the token and position tables (V + T)·d (the head is tied).
  non_embedding = layers * (12 * d * d + 13 * d) + 2 * d
  total = non_embedding + (vocab + context) * d
  flops_6nd = 6 * total * tokens
  flops_kaplan = 6 * (non_embedding + layers * context * d) * tokens  # 3 x (2N + 2·L·T·d)
  # 'full': 3 x the forward's matmuls at 2 FLOPs per multiply-add: per layer the Q, K, V and
  # output projections 8d², the MLP 16d², QK^T and AV 4·T·d; then the output layer 2·d·V.
  flops_full = 3 * (layers * (24 * d * d + 4 * context * d) + 2 * d * vocab) * tokens

  # The report prints 3 significant figures: the same rounding of these numbers, digit for digit.
  model = re.search(r'Model experiments/configs/gpt3.py:175b: (\S+) parameters '
                    r'\((\S+) non-embedding\)', out)
  assert model, out
  assert model.groups() == (f'{total / 1e9:.3g}B', f'{non_embedding / 1e9:.3g}B')  # 87.6B, 87B
  counts = re.search(r'6nd (\S+) \| kaplan (\S+) \| full (\S+) ', out)
  assert counts, out
  assert counts.groups() == tuple(f'{f:.3g}' for f in (flops_6nd, flops_kaplan, flops_full))
  memory = re.search(r'weights (\S+) GB \+ KV cache (\S+) GB', out)
  assert memory, out
  kv_bytes = batch * context * layers * 2 * d * 2  # K and V of every layer, bfloat16
  assert memory.groups() == (f'{2 * total / 1e9:.3g}', f'{kv_bytes / 1e9:.3g}')
  assert 'memory-bound' in out and 'per 1,000 tokens' in out


@pytest.mark.parametrize('flag, line', [
    ('--tokens=nan', 'gptjax.cost: error: --tokens=nan must be a finite number >= 0'),
    ('--price_per_hour=-2', 'gptjax.cost: error: --price_per_hour=-2.0 must be a finite number'),
    ('--mfu=1.5', 'gptjax.cost: error: num_accelerators=1 must be >= 1 and mfu=1.5 in (0, 1]'),
])
def test_cli_refuses_impossible_numbers_in_one_line(flag, line):
  run = subprocess.run([sys.executable, '-m', 'gptjax.cost', '--config=experiments/configs/tiny.py',
                        flag], capture_output=True, text=True, cwd=ROOT)
  assert run.returncode == 2 and run.stdout == ''
  assert run.stderr.strip().startswith(line) and len(run.stderr.strip().splitlines()) == 1
