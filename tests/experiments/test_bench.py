"""The training-step benchmark's arithmetic and its profile summary."""

import gzip
import json
import os
import pathlib
import subprocess
import sys

import pytest

from experiments import profiling

_ROOT = str(pathlib.Path(__file__).resolve().parents[2])


def test_summary_groups_ops_by_kind_per_step_and_skips_wrappers(tmp_path):
  events = [
      {'ph': 'X', 'name': 'ynn_fusion.3', 'dur': 300.0},
      {'ph': 'X', 'name': 'ynn_fusion.17', 'dur': 500.0},
      {'ph': 'X', 'name': 'dot.2', 'dur': 200.0},
      {'ph': 'X', 'name': 'ThunkExecutor::Execute', 'dur': 5000.0},  # wraps the ops above
      {'ph': 'X', 'name': '$api.py:2479 block_until_ready', 'dur': 5000.0},
      {'ph': 'i', 'name': 'dot.9', 'dur': 999.0},  # an instant, not a duration
  ]
  path = tmp_path / 'perfetto_trace.json.gz'
  with gzip.open(path, 'wt') as f:
    json.dump({'traceEvents': events}, f)
  kinds = profiling.summarize(str(path), steps=2)
  assert [op.name for op in kinds] == ['ynn_fusion', 'dot']
  assert kinds[0].ms_per_step == pytest.approx(0.4) and kinds[0].calls_per_step == 1
  assert kinds[1].ms_per_step == pytest.approx(0.1) and kinds[1].calls_per_step == 0.5


def test_summary_by_source_names_the_model_operation_and_folds_layers(tmp_path):
  hlo_text = """
  %copy_fusion.4 = f32[2,4,256,32]{3,2,1,0} fusion(%p), kind=kLoop, calls=%c, metadata={op_name="jit(train_step)/while/body/closed_call/jvp(GPT)/block_0/attn/transpose" stack_frame_id=1}
  %copy_fusion.9 = f32[2,4,256,32]{3,2,1,0} fusion(%p), kind=kLoop, calls=%c, metadata={op_name="jit(train_step)/while/body/closed_call/jvp(GPT)/block_3/attn/transpose"}
  ROOT %dot.2 = f32[512,128]{1,0} dot(%a, %b), metadata={op_name="jit(train_step)/transpose(jvp(GPT))/block_1/mlp/up/dot_general;jit(train_step)/transpose(jvp(GPT))/block_1/mlp/add"}
  """
  events = [
      {'ph': 'X', 'name': 'copy_fusion.4', 'dur': 100.0},
      {'ph': 'X', 'name': 'copy_fusion.9', 'dur': 300.0},
      {'ph': 'X', 'name': 'dot.2', 'dur': 50.0},
      {'ph': 'X', 'name': 'cudnn_flash_bprop_kernel', 'dur': 20.0},  # not in the HLO
  ]
  path = tmp_path / 'perfetto_trace.json.gz'
  with gzip.open(path, 'wt') as f:
    json.dump(events, f)
  rows = profiling.summarize_by_source(str(path), steps=1, hlo_text=hlo_text)
  assert [(op.name, op.ms_per_step, op.calls_per_step) for op in rows] == [
      ('copy_fusion <- forward block_*/attn/transpose', 0.4, 2),
      ('dot <- backward block_*/mlp/up/dot_general', 0.05, 1),
      ('cudnn_flash_bprop_kernel', 0.02, 1),
  ]


@pytest.mark.slow
def test_bench_reports_consistent_rates_and_a_profile(tmp_path):
  out_json, profile_dir = tmp_path / 'bench.json', tmp_path / 'profile'
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  run = subprocess.run(
      [sys.executable, '-m', 'experiments.bench', '--configs=tiny', '--steps=3', '--warmup=1',
       '--batch_size=4', '--seq_len=64', '--cpu_devices=2', '--devices=1,2',
       f'--json={out_json}', f'--profile_dir={profile_dir}'],
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  result, split = json.loads(out_json.read_text())['results']
  assert (result['devices'], split['devices']) == (1, 2)
  # Both CPU devices share the host whose whole peak was measured: MFU is not divided by 2.
  assert split['mfu_measured'] == pytest.approx(split['flops_per_s'] / split['measured_peak'])
  tokens = 4 * 64
  assert result['tokens_per_s'] == pytest.approx(tokens / result['step_time_s'])
  # tiny: d_model 128, 4 layers, byte vocabulary 256 tied; the full count by hand, per token:
  # 2x the 12 d^2 matmuls per layer and the 4 T d attention products, forward, and the head 2 d V,
  # then x3 for forward + backward.
  d, layers, t, vocab = 128, 4, 64, 256
  per_token = 3 * (layers * (2 * 12 * d * d + 4 * t * d) + 2 * d * vocab)
  assert result['flops_per_s'] == pytest.approx(tokens * per_token / result['step_time_s'],
                                                rel=1e-6)
  assert result['mfu_measured'] == pytest.approx(result['flops_per_s'] / result['measured_peak'])
  kinds = {op['name']: op for op in result['op_kinds']}
  assert kinds and all(op['ms_per_step'] >= 0 for op in kinds.values())
  assert any('fusion' in name or 'dot' in name for name in kinds)
  assert list(profile_dir.glob('tiny_1/**/perfetto_trace.json.gz'))
  assert 'ms/step' in run.stdout
