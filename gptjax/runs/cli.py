"""How the command lines end: a user's mistake or a run that cannot go on is one line, not a traceback.

Every `python -m gptjax.<tool>` runs its main through `run`, which turns
  - a flag that does not parse, a missing `--config` file, an unknown config field or section, and
    any `ValueError` or `OSError` from main (a config that cannot run, a workdir that is a file or
    read-only) into one line on stderr and exit status 2;
  - a `RunError` (a run that stopped and says why: non-finite training, a busy workdir, no
    readable checkpoint) into one line and exit status 1;
  - `Stopped` (SIGTERM or Ctrl-C reached a training loop, which saved a checkpoint first) into one
    line and exit status 75, sysexits' EX_TEMPFAIL: not finished, to be resumed by running the
    same command again, which is what a scheduler or the sweep runner does with it;
  - Ctrl-C outside a training loop into one line and exit status 130.
Programming errors still end in a traceback: they are for the maintainers, not the user.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Callable, NoReturn, Sequence

from absl import app, flags, logging

USAGE_STATUS = 2
RUN_STATUS = 1
RESUME_STATUS = 75  # sysexits.h EX_TEMPFAIL: stopped after saving; the same command resumes it
INTERRUPTED_STATUS = 130


class RunError(RuntimeError):
  """A run stopped for a reason its message states, with the fix; nothing written is lost."""


class Stopped(RunError):
  """A signal stopped the run after it saved a checkpoint: not finished, to be resumed."""


class _QuietLibraries(logging.logging.Filter):
  """Keeps orbax's per-save INFO chatter out of the progress log; its warnings still show."""

  def filter(self, record) -> bool:
    return record.levelno >= logging.logging.WARNING or 'orbax' not in record.pathname


def quiet_libraries() -> None:
  """Call from a training command's main: its log is then the run's progress lines."""
  logging.get_absl_handler().addFilter(_QuietLibraries())


def one_line(text: str) -> str:
  return ' '.join(str(text).split())


def fail(program: str, message: str, status: int = USAGE_STATUS) -> NoReturn:
  print(f'{program}: error: {one_line(message)}', file=sys.stderr)
  sys.exit(status)


def _config_files(argv: Sequence[str]) -> list[tuple[str, str]]:
  """(flag, file) of every `--<flag>=<file>.py[:<arg>]` naming a defined flag: a config file."""
  found = []
  for arg in argv[1:]:
    match = re.fullmatch(r'--(\w+)=([^:]+\.py)(:.*)?', arg)
    if match and match.group(1) in flags.FLAGS:
      found.append((match.group(1), match.group(2)))
  return found


def _override_named(argv: Sequence[str], key: str) -> str:
  """The `--config.a.b=v` argument whose path holds `key`, for naming it in an error."""
  for arg in argv[1:]:
    path = arg.split('=', 1)[0]
    if path.startswith('--') and '.' in path and key in path.split('.')[1:]:
      return arg
  return ''


def _config_file_error(message: str) -> str:
  """A flag error, less the traceback ml_collections puts in it when a config file's `get_config`
  raised: the flag and the exception's own line ("--config=...: ValueError: Unknown variant ...")."""
  if 'Traceback (most recent call last)' not in message:
    return message
  flag = message.split(': Error whilst parsing config file', 1)[0]
  last = next((line.strip() for line in reversed(message.splitlines())
               if re.match(r'^\s*[A-Za-z_.]*(Error|Exception)\b', line)), message.splitlines()[-1])
  return f'{flag}: {last}'


def _flags_parser(program: str) -> Callable[[list[str]], list[str]]:
  def parse(argv: list[str]) -> list[str]:
    for name, path in _config_files(argv):
      if not os.path.isfile(path):
        fail(program, f'--{name}={path}: no such file; pass the path of a get_config() file, '
                      'e.g. experiments/configs/tiny.py.')
    try:
      return flags.FLAGS(argv)
    except flags.Error as error:
      fail(program, f'{_config_file_error(str(error)).rstrip(".")}. Pass --helpshort to see the '
                    'flags.')
    except (AttributeError, KeyError) as error:  # ml_collections: an override of an unknown field
      key = str(error).strip('"\'')
      arg = _override_named(argv, key) or key
      fail(program, f'{arg}: the config has no field or section {key!r}; the config file lists '
                    'the fields there are (a new one is added there first).')
    except OSError as error:
      fail(program, str(error))
  return parse


def run(main: Callable[[list[str]], Any], program: str,
        usage_errors: tuple[type[BaseException], ...] = (ValueError, OSError)) -> None:
  """`absl.app.run(main)`, ending user mistakes and stopped runs in one line (see the module
  doc)."""
  def guarded(argv: list[str]) -> Any:
    try:
      return main(argv)
    except Stopped as error:
      fail(program, str(error), RESUME_STATUS)
    except RunError as error:
      fail(program, str(error), RUN_STATUS)
    except app.UsageError as error:
      fail(program, str(error), USAGE_STATUS)
    except usage_errors as error:
      fail(program, str(error), USAGE_STATUS)
    except KeyboardInterrupt:
      fail(program, 'interrupted.', INTERRUPTED_STATUS)

  app.run(guarded, flags_parser=_flags_parser(program))


def format_duration(seconds: float) -> str:
  """'4m07s', '1h05m', '12.5 days' or '3.2 years': exact for an ETA, readable for a cost
  estimate."""
  seconds = max(float(seconds), 0.0)
  if seconds >= 365 * 86400:
    return f'{seconds / (365 * 86400):.3g} years'
  if seconds >= 4 * 86400:
    return f'{seconds / 86400:.3g} days'
  hours, rest = divmod(int(seconds), 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'
