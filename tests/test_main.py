"""The training command line: a config that cannot run is refused in one line, with nothing written."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (override, what the error line must name: the field and its value, and the fix)
BAD_CONFIGS = {
    'heads': ('--config.model.num_heads=3',
              ('num_heads=3', 'd_model=128', 'pick num_heads that divides d_model')),
    'warmup': ('--config.train.warmup_steps=2000',
               ('train.warmup_steps=2000', 'num_steps=1000', 'shorten the warmup or train longer')),
    'batch': ('--config.data.batch_size=12',
              ('data.batch_size=12', 'pick a batch size that is a multiple of 8')),
    'passes': ('--config.train.tokens_per_pass=lots',
               ("train.tokens_per_pass='lots'", "use 'auto'")),
}


def _tree(path: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else b''
          for p in sorted(path.rglob('*'))}


@pytest.mark.parametrize('name, existing_workdir', [('heads', False), ('warmup', True),
                                                    ('batch', False), ('passes', True)])
def test_a_bad_config_is_refused_in_one_line_before_anything_is_written(tmp_path, name,
                                                                         existing_workdir):
  """Exit status 2, one error line naming the field and the fix, no traceback, workdir as it was."""
  override, expected = BAD_CONFIGS[name]
  workdir = tmp_path / 'run'
  if existing_workdir:
    workdir.mkdir()
    (workdir / 'notes.txt').write_text('kept as it is\n')
  before = _tree(workdir) if existing_workdir else None
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  run = subprocess.run(
      [sys.executable, '-m', 'gptjax.main', '--config=experiments/configs/base.py',
       f'--workdir={workdir}', override],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 2, run.stderr[-3000:]
  assert 'Traceback' not in run.stderr, run.stderr[-3000:]
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('gptjax.main: error: '), run.stderr[-3000:]
  for text in expected:
    assert text in lines[0], (text, lines[0])
  if existing_workdir:
    assert _tree(workdir) == before
  else:
    assert not workdir.exists(), _tree(workdir)
