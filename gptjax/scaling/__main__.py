"""`python -m gptjax.scaling COMMAND --flags`: the scaling commands that stand apart from a sweep.

  fit        approach 3 (and the compute-optimal allocation) fitted to any CSV of (N, D, L) points
  plots      the figures of a sweep directory's records
  mup_check  the muP coordinate check over a list of widths (docs/mup.md)
A sweep runs its own fits and figures after the last member (`python -m launch.sweep`).
"""

import importlib
import sys

from absl import app

from gptjax.runs import cli

COMMANDS = {'fit': 'fit_csv', 'plots': 'plots', 'mup_check': 'mup_check'}
PROGRAM = 'gptjax.scaling'

command = next((arg for arg in sys.argv[1:] if not arg.startswith('-')), None)
if command not in COMMANDS:
  cli.fail(PROGRAM, f'name a command first, one of {sorted(COMMANDS)}: e.g. '
           f'python -m {PROGRAM} fit --csv=FILE (got {command!r}).')
sys.argv.remove(command)
module = importlib.import_module(f'gptjax.scaling.{COMMANDS[command]}')
__doc__ = module.__doc__  # what --help prints: the command's usage
module.define_flags()
if command == 'fit':
  cli.run(module.main, f'{PROGRAM} fit')
else:
  app.run(module.main)
