"""How every command line ends: user mistakes and stopped runs in one line with their exit status;
programming errors keep their traceback."""

import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROGRAM = textwrap.dedent('''
    import sys
    from absl import flags
    from gptjax.runs import cli
    RAISE = flags.DEFINE_string('raise_', '', 'What main raises.')

    def main(argv):
      kind = RAISE.value
      if kind == 'value':
        raise ValueError('model.d_model=-1 must be\\n   positive; pick one.')
      if kind == 'os':
        raise FileNotFoundError('runs/x/config.json does not exist.')
      if kind == 'run':
        raise cli.RunError('Training became non-finite at step 3.')
      if kind == 'stopped':
        raise cli.Stopped('Stopped at step 40 after saving a checkpoint; rerun to resume.')
      if kind == 'interrupt':
        raise KeyboardInterrupt
      if kind == 'bug':
        raise AttributeError('a programming error')
      print('ran')

    cli.run(main, 'tool')
''')


@pytest.mark.parametrize('kind, status, line', [
    ('value', 2, 'tool: error: model.d_model=-1 must be positive; pick one.'),
    ('os', 2, 'tool: error: runs/x/config.json does not exist.'),
    ('run', 1, 'tool: error: Training became non-finite at step 3.'),
    ('stopped', 75, 'tool: error: Stopped at step 40 after saving a checkpoint; rerun to resume.'),
    ('interrupt', 130, 'tool: error: interrupted.'),
])
def test_each_kind_of_stop_is_one_line_with_its_status(kind, status, line):
  run = subprocess.run([sys.executable, '-c', PROGRAM, f'--raise_={kind}'], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert (run.returncode, run.stderr.strip()) == (status, line)


def test_a_programming_error_keeps_its_traceback():
  run = subprocess.run([sys.executable, '-c', PROGRAM, '--raise_=bug'], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 1 and 'Traceback' in run.stderr and 'AttributeError' in run.stderr


def test_an_unknown_flag_is_one_line():
  run = subprocess.run([sys.executable, '-c', PROGRAM, '--nosuch=1'], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 2
  assert run.stderr.strip().startswith('tool: error: Unknown command line flag')
  assert len(run.stderr.strip().splitlines()) == 1
