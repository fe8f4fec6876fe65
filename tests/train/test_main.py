"""The training command line: a config that cannot run is refused in one line, with nothing
written."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

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
@pytest.mark.slow
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


def _main(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'gptjax.main', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


MISTAKES = {  # the command line's mistakes: (arguments, what the one error line must say)
    'no config file': (['--config=experiments/configs/nope.py'],
                       ('--config=experiments/configs/nope.py: no such file',
                        'experiments/configs/tiny.py')),
    'unknown field': (['--config=experiments/configs/tiny.py', '--config.model.nosuch=3'],
                      ("--config.model.nosuch=3: the config has no field or section 'nosuch'",)),
    'unknown section': (['--config=experiments/configs/tiny.py', '--config.nosec.x=3'],
                        ("--config.nosec.x=3: the config has no field or section 'nosec'",)),
    'not a number': (['--config=experiments/configs/tiny.py', '--config.model.d_model=abc'],
                     ('--config.model.d_model=abc', "invalid literal for int()")),
    'empty batch': (['--config=experiments/configs/tiny.py', '--config.data.batch_size=0'],
                    ('data.batch_size=0 must be a whole number >= 1',)),
    'stray argument': (['--config=experiments/configs/tiny.py', 'extra'],
                       ("Unexpected arguments: ['extra']", '--config.x.y=value')),
    'unknown variant': (['--config=experiments/configs/gpt3.py:nonexistent'],
                        ("--config=experiments/configs/gpt3.py:nonexistent: ValueError: Unknown "
                         "variant 'nonexistent'; choose one of ['13b'",)),
}


@pytest.mark.parametrize('name', list(MISTAKES))
@pytest.mark.slow
def test_command_line_mistakes_are_one_line_with_the_fix(tmp_path, name):
  args, expected = MISTAKES[name]
  workdir = tmp_path / 'run'
  run = _main(*args, f'--workdir={workdir}')
  assert run.returncode == 2, run.stderr[-3000:]
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('gptjax.main: error: '), run.stderr[-3000:]
  for text in expected:
    assert text in lines[0], (text, lines[0])
  assert 'Traceback' not in lines[0] and 'File "' not in lines[0], lines[0]
  assert not workdir.exists()


def test_inputs_that_match_no_file_are_refused_before_the_workdir_is_made(tmp_path):
  workdir = tmp_path / 'run'
  run = _main('--config=experiments/configs/tiny.py', f'--workdir={workdir}',
              '--config.data.source=text', f'--config.data.paths={tmp_path}/none/*.txt')
  assert run.returncode == 2 and 'Traceback' not in run.stderr, run.stderr[-3000:]
  assert run.stderr.strip().splitlines()[-1].startswith(
      f"gptjax.main: error: data.paths glob '{tmp_path}/none/*.txt'"), run.stderr[-3000:]
  assert not workdir.exists()  # no lock, no tokenizer.json


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  a_file = tmp_path / 'run'
  a_file.write_text('kept\n')
  run = _main('--config=experiments/configs/tiny.py', f'--workdir={a_file}')
  assert run.returncode == 2 and 'Traceback' not in run.stderr, run.stderr[-3000:]
  assert run.stderr.strip().splitlines()[-1] == (
      f'gptjax.main: error: --workdir={a_file} is a file, not a directory; pass a directory (it '
      'is created if missing).')
  assert a_file.read_text() == 'kept\n'


def test_a_workdir_made_with_another_config_is_refused_untouched(tmp_path):
  """Only the saved config is needed to refuse: the check runs before any data or checkpoint."""
  from experiments.configs import tiny
  saved = tiny.get_config()
  saved.train.learning_rate = 0.5
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text(saved.to_json_best_effort())
  before = _tree(workdir)
  run = _main('--config=experiments/configs/tiny.py', f'--workdir={workdir}')
  assert run.returncode == 2 and 'Traceback' not in run.stderr, run.stderr[-3000:]
  last = run.stderr.strip().splitlines()[-1]
  assert 'train.learning_rate: 0.5 -> ' in last
  assert 'new --workdir' in last and '--allow_config_change' in last
  assert {k: v for k, v in _tree(workdir).items() if k != 'run.lock'} == before
