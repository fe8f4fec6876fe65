"""The commands README.md and docs/ show a user: each names a module that exists, flags that its
`--helpfull` lists, config files and variants that load and config fields they have; the cost
examples and the sweep dry runs run."""

import functools
import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
SUBCOMMANDS = {'gptjax.scaling': ('fit', 'plots', 'mup_check'),
               'gptjax.convert': ('from-hf', 'to-hf'),
               'gptjax.preferences': ('pairs', 'reward', 'dpo', 'ppo'),
               'gptjax.data': ('prepare',),
               'experiments.tuning': ('optimizer', 'lr')}


def _commands() -> list[tuple[str, list[str]]]:
  """(where, argv after `python -m`) of every command in a fenced block or a code span."""
  found = []
  for doc in DOCS:
    text = doc.read_text()
    lines = [line for block in re.findall(r'```[a-z]*\n(.*?)```', text, re.S)
             for line in re.sub(r'\\\n\s*', ' ', block).splitlines()]
    lines += re.findall(r'`(python -m [^`]+)`', text)
    for line in lines:
      line = line.strip()
      if not line.startswith('python -m ') or line.startswith('python -m pytest'):
        continue
      argv = [token.strip('[]') for token in shlex.split(line, comments=True)[2:]]
      found.append((f'{doc.name}: {line[:80]}', [token for token in argv if token]))
  return found


COMMANDS = _commands()


def _command(argv: list[str]) -> tuple[str, str | None, list[str]]:
  """(module, subcommand or None, the rest) of a command's argv."""
  module, rest = argv[0], argv[1:]
  if rest and rest[0] in SUBCOMMANDS.get(module, ()):
    return module, rest[0], rest[1:]
  return module, None, rest


def _flag_name(token: str) -> str:
  return token[2:].split('=', 1)[0]


@functools.lru_cache(maxsize=None)
def _known_flags(module: str, subcommand: str | None) -> frozenset[str]:
  argv = [sys.executable, '-m', module, *([subcommand] if subcommand else []), '--helpfull']
  run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  text = run.stdout + run.stderr
  names = re.findall(r'^\s+--(?:\[no\])?([A-Za-z0-9_.]+):', text, re.M)
  names += ['no' + name for name in re.findall(r'^\s+--\[no\]([A-Za-z0-9_.]+):', text, re.M)]
  assert names, (argv, run.stdout[-1000:], run.stderr[-1000:])
  return frozenset(names)


def _load_config(spec: str):
  path, _, variant = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('doc_config', ROOT / path)
  config_module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(config_module)
  return config_module.get_config(variant) if variant else config_module.get_config()


def test_the_docs_show_commands_and_the_reader_finds_them():
  modules = {_command(argv)[0] for _, argv in COMMANDS}
  assert {'gptjax.main', 'gptjax.generate', 'gptjax.cost', 'launch.sweep'} <= modules, modules
  assert len(COMMANDS) > 40 and COST_EXAMPLES and DRY_RUNS


@pytest.mark.parametrize('where, argv', COMMANDS, ids=[where for where, _ in COMMANDS])
def test_each_command_names_a_module_and_configs_that_exist(where, argv):
  module, subcommand, rest = _command(argv)
  spec = importlib.util.find_spec(module)
  main = f'{module}.__main__' if spec.submodule_search_locations else module
  assert importlib.util.find_spec(main) is not None, where
  config = None
  for token in rest:
    name, _, value = token[2:].partition('=')
    if name == 'config' and value.partition(':')[0].endswith('.py'):  # not a placeholder
      config = _load_config(value)
    elif name in ('sweep', 'init_from_config') and value.endswith('.py'):
      assert (ROOT / value).exists(), (where, value)
    elif name.startswith('config.') and config is not None:
      section = config
      for part in name.split('.')[1:]:
        assert part in section, (where, name)
        section = section[part]


@pytest.mark.slow
@pytest.mark.parametrize('where, argv', COMMANDS, ids=[where for where, _ in COMMANDS])
def test_each_flag_is_one_its_command_defines(where, argv):
  module, subcommand, rest = _command(argv)
  known = _known_flags(module, subcommand)
  unknown = [token for token in rest if token.startswith('--')
             and not _flag_name(token).startswith('config.') and _flag_name(token) not in known]
  assert unknown == [], where


def _runnable(argv: list[str]) -> bool:
  """A whole example, not a mention of one flag: it names a config file and no placeholder."""
  values = [token.partition('=')[2] for token in argv if token.startswith('--')]
  return (any(token.startswith('--config=') and '.py' in token for token in argv)
          and not any(re.fullmatch(r'[A-Z_]+|\.\.\.', value) for value in values))


COST_EXAMPLES = [argv for _, argv in COMMANDS if argv[0] == 'gptjax.cost' and _runnable(argv)]


@pytest.mark.parametrize('argv', COST_EXAMPLES)
def test_the_cost_examples_run(argv):
  run = subprocess.run([sys.executable, '-m', *argv], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert run.returncode == 0, run.stderr[-2000:]
  assert 'Training on' in run.stdout


@pytest.mark.slow
def test_the_flag_reader_sees_a_commands_own_flags_and_only_those():
  known = _known_flags('gptjax.generate', None)
  assert {'workdir', 'num_beams', 'max_new_tokens'} <= known and 'sweep' not in known
  assert 'csv' in _known_flags('gptjax.scaling', 'fit')


DRY_RUNS = [argv for _, argv in COMMANDS if argv[0] == 'launch.sweep' and '--dry_run' in argv
            and not any(token.startswith('--workdir=gs://') for token in argv)]


@pytest.mark.parametrize('argv', DRY_RUNS)
def test_the_dry_run_examples_plan_and_write_nothing(tmp_path, argv):
  workdir = tmp_path / 'runs'
  argv = [f'--workdir={workdir}' if token.startswith('--workdir=') else token for token in argv]
  run = subprocess.run([sys.executable, '-m', *argv], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert run.returncode == 0, run.stderr[-2000:]
  assert 'new' in run.stdout and not any(workdir.rglob('*.jsonl'))


FIT_EXAMPLES = [argv for _, argv in COMMANDS if argv[:2] == ['gptjax.scaling', 'fit']
                and '--csv=points.csv' in argv and len(argv) > 3]


@pytest.mark.slow
@pytest.mark.parametrize('argv', FIT_EXAMPLES)
def test_the_fit_example_prints_what_the_docs_show(tmp_path, monkeypatch, argv):
  """On the table docs/scaling.md describes (written by the table tests' own helper)."""
  monkeypatch.syspath_prepend(str(ROOT / 'tests' / 'scaling'))
  import test_table  # pylint: disable=import-outside-toplevel
  test_table.write_table(tmp_path / 'points.csv')
  run = subprocess.run([sys.executable, '-m', *argv], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600, env={**os.environ, 'PYTHONPATH': str(ROOT)})
  assert run.returncode == 0, run.stderr[-2000:]
  shown = (ROOT / 'docs' / 'scaling.md').read_text()
  first = run.stdout.splitlines()[0]
  assert first == 'points.csv: 72 points fitted (N: params, D: tokens, L: loss); 0 dropped.'
  assert first in shown and (tmp_path / 'fit.json').exists()
