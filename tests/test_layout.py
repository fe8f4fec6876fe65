"""The import rules of the code base, read from the source (function-level imports included).

  - the model imports nothing of training, data, sharding or launching, and queries no devices;
  - the scaling fits import neither the model nor training;
  - no module of `gptjax/` imports `experiments` or `launch`;
  - `launch` plans sweeps without the training stack;
  - the modules of `gptjax/` import each other without a cycle;
and two habits: no module over ~400 lines, no development history in code, tests or docs.
"""

import ast
import configparser
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('gptjax', 'launch', 'experiments')
TRAINING_STACK = {'gptjax.train', 'gptjax.train.steps', 'gptjax.data', 'gptjax.data.tokens', 'gptjax.data.corpus',
                  'gptjax.train.checkpointing', 'gptjax.parallel.sharding', 'gptjax.parallel.hardware',
                  'gptjax.parallel.distributed'}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(path): path for package in PACKAGES
          for path in sorted((ROOT / package).rglob('*.py'))}


def _imports(path: pathlib.Path, known: set[str]) -> set[str]:
  """The project modules `path` imports anywhere in its body, as dotted names.

  `from a.b import c` names module `a.b.c` where that is a module, else `a.b`; a submodule does
  not count as importing its package's `__init__` (Python runs it first, but it cannot cycle).
  Imports under `if TYPE_CHECKING:` are for annotations only and never run, so they do not count.
  """
  tree = ast.parse(path.read_text(), str(path))
  for_annotations = {id(inner) for node in ast.walk(tree)
                     if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                     and node.test.id == 'TYPE_CHECKING'
                     for statement in node.body for inner in ast.walk(statement)}
  found = set()
  for node in ast.walk(tree):
    if id(node) in for_annotations:
      continue
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [f'{node.module}.{alias.name}' if f'{node.module}.{alias.name}' in known
               else node.module for alias in node.names]
    else:
      continue
    found.update(name for name in names if name.split('.')[0] in PACKAGES)
  return found


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
  seen, stack = set(), [start]
  while stack:
    for name in graph.get(stack.pop(), ()):
      if name not in seen:
        seen.add(name)
        stack.append(name)
  return seen


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected groups of more than one module (Tarjan), each sorted."""
  index, low, on_stack, stack, groups = {}, {}, set(), [], []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for succ in graph.get(node, ()):
      if succ not in index:
        visit(succ)
        low[node] = min(low[node], low[succ])
      elif succ in on_stack:
        low[node] = min(low[node], index[succ])
    if low[node] == index[node]:
      group = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        group.append(member)
        if member == node:
          break
      if len(group) > 1:
        groups.append(sorted(group))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return groups


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'd': {'a', 'c'}}) == []


def test_the_import_reader_sees_function_level_imports(tmp_path):
  source = tmp_path / 'module.py'
  source.write_text('def f():\n  from gptjax import train\n  import launch.sweep\n')
  assert _imports(source, {'gptjax.train'}) == {'gptjax.train', 'launch.sweep'}


def test_gptjax_modules_import_each_other_without_a_cycle():
  graph = {name: {m for m in deps if m.startswith('gptjax')}
           for name, deps in _graph().items() if name.startswith('gptjax')}
  assert len(graph) > 20  # the check really reads the package
  assert _cycles(graph) == []


def test_no_gptjax_module_imports_experiments_or_launch():
  offenders = {name: sorted(d for d in deps if d.split('.')[0] in ('experiments', 'launch'))
               for name, deps in _graph().items() if name.startswith('gptjax')}
  assert {name: deps for name, deps in offenders.items() if deps} == {}


def test_the_model_imports_no_training_data_sharding_or_launch_and_queries_no_device():
  graph = _graph()
  reached = _reachable(graph, 'gptjax.model')
  assert 'gptjax.model.attention' in reached  # the check follows imports
  assert not reached & (TRAINING_STACK | {'launch'}), sorted(reached)
  source = (ROOT / 'gptjax' / 'model.py').read_text()
  for query in ('jax.devices', 'get_abstract_mesh', '.platform', 'device_kind'):
    assert query not in source


def test_the_scaling_fits_import_neither_the_model_nor_training():
  graph = _graph()
  for fits in ('gptjax.scaling', 'gptjax.scaling.isoflop', 'gptjax.scaling.records', 'gptjax.scaling.plots'):
    reached = _reachable(graph, fits)
    assert not reached & (TRAINING_STACK | {'gptjax.model'}), (fits, sorted(reached))


def test_launch_plans_sweeps_without_the_training_stack():
  graph = _graph()
  for name in [n for n in graph if n.startswith('launch')]:
    assert not _reachable(graph, name) & TRAINING_STACK, name


@pytest.mark.parametrize('package', PACKAGES)
def test_no_module_holds_two_jobs(package):
  sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines())
           for path in (ROOT / package).rglob('*.py')}
  assert {path: n for path, n in sizes.items() if n > 420} == {}


def test_code_tests_and_docs_say_what_is_true_now():
  history = re.compile('issue' + r' #?[0-9]|(first|second|third) session', re.I)
  files = [p for top in (*PACKAGES, 'tests', 'docs') for p in (ROOT / top).rglob('*')
           if p.suffix in ('.py', '.md', '.sh', '.cc', '.sbatch')]
  files += [ROOT / 'README.md', ROOT / 'BENCHMARKS.md']
  hits = [f'{p.relative_to(ROOT)}:{i}' for p in files if p.exists()
          for i, line in enumerate(p.read_text().splitlines(), 1) if history.search(line)]
  assert hits == []


def test_the_cpu_kernel_source_ships_as_package_data():
  """A wheel holds only what setup.cfg's package_data names: the kernel is built from it."""
  from gptjax.model.attention import cpu_fused
  config = configparser.ConfigParser()
  config.read(ROOT / 'setup.cfg')
  shipped = {path.resolve() for package, pattern in config['options.package_data'].items()
             for path in (ROOT / package.replace('.', '/')).glob(pattern.strip())}
  assert pathlib.Path(cpu_fused._SOURCE).resolve() in shipped
