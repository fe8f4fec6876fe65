"""The import rules of the code base, read from the source (function-level imports included).

  - `gptjax/` is one package per stage, and a stage imports only the stages `ALLOWED` names;
  - the model imports nothing of training, data, sharding or launching, and queries no devices;
  - the scaling fits import neither the model nor training;
  - no module of `gptjax/` imports `experiments` or `launch`;
  - `launch` plans sweeps without the training stack;
  - `launch` and `experiments` use each stage's public names only (its `__init__`'s `__all__`);
  - the modules of `gptjax/` import each other without a cycle, annotations included;
and two habits: no module over ~400 lines, no development history in code, tests or docs.
"""

import ast
import configparser
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('gptjax', 'launch', 'experiments')

# Which stage may import which: the one statement of the rule (docs/architecture.md shows it as a
# table). A stage's command (`__main__.py`) and `gptjax/main.py` sit above every stage.
ALLOWED = {
    'runs': set(),
    'data': {'runs'},
    'model': set(),
    'parallel': {'model'},
    'cost': {'runs', 'model'},
    'train': {'runs', 'data', 'model', 'parallel', 'cost'},
    'generate': {'model'},
    'scaling': {'runs', 'cost', 'model', 'train'},
    'finetune': {'runs', 'data', 'model', 'parallel', 'cost', 'train', 'generate'},
    'preferences': {'runs', 'data', 'model', 'parallel', 'cost', 'train', 'generate', 'finetune'},
    'convert': {'runs', 'data', 'model', 'train', 'finetune'},
    'evals': {'runs', 'data', 'model', 'parallel', 'cost', 'train', 'generate', 'finetune',
              'scaling'},
}
STAGES = tuple(ALLOWED)
TRAINING_STACK = {'gptjax.train.loop', 'gptjax.train.steps', 'gptjax.train.checkpointing',
                  'gptjax.data', 'gptjax.parallel'}
# The scaling fits read records and nothing of the model or training; the muP check is the one
# scaling module that trains.
SCALING_FITS = ('records', 'accounting', 'laws', 'holdout', 'exponents', 'huber', 'isoflop', 'envelope', 'replicas', 'table', 'fit_csv',
                'plots', 'report')


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(path): path for package in PACKAGES
          for path in sorted((ROOT / package).rglob('*.py'))}


def _imports(path: pathlib.Path, known: set[str], annotations: bool = False) -> set[str]:
  """The project modules `path` imports anywhere in its body, as dotted names.

  `from a.b import c` names module `a.b.c` where that is a module, else `a.b`; a submodule does
  not count as importing its package's `__init__` (Python runs it first, but it cannot cycle).
  Imports under `if TYPE_CHECKING:` are for annotations only and never run, so they count only
  with `annotations`.
  """
  tree = ast.parse(path.read_text(), str(path))
  for_annotations = {id(inner) for node in ast.walk(tree)
                     if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                     and node.test.id == 'TYPE_CHECKING'
                     for statement in node.body for inner in ast.walk(statement)}
  found = set()
  for node in ast.walk(tree):
    if id(node) in for_annotations and not annotations:
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


def _graph(annotations: bool = False) -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(path, set(modules), annotations) - {name}
          for name, path in modules.items()}


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
  """Annotation-only imports included: two modules that name each other's types are one job."""
  graph = {name: {m for m in deps if m.startswith('gptjax')}
           for name, deps in _graph(annotations=True).items() if name.startswith('gptjax')}
  assert len(graph) > 20  # the check really reads the package
  assert _cycles(graph) == []


def test_no_gptjax_module_imports_experiments_or_launch():
  offenders = {name: sorted(d for d in deps if d.split('.')[0] in ('experiments', 'launch'))
               for name, deps in _graph().items() if name.startswith('gptjax')}
  assert {name: deps for name, deps in offenders.items() if deps} == {}


def _stage(module: str) -> str | None:
  """The stage package of a gptjax module, or None for a command (`__main__`, `gptjax.main`)."""
  parts = module.split('.')
  if parts[0] != 'gptjax' or len(parts) < 2 or parts[-1] == '__main__' or parts[1] == 'main':
    return None
  return parts[1]


def _in(stack: set[str], module: str) -> bool:
  return any(module == top or module.startswith(top + '.') for top in stack)


def test_every_stage_is_a_package_with_a_declared_place():
  tops = {path.parent.name for path in (ROOT / 'gptjax').glob('*/__init__.py')}
  assert tops == set(ALLOWED)
  loose = sorted(p.name for p in (ROOT / 'gptjax').glob('*.py')
                 if p.name not in ('__init__.py', 'main.py'))
  assert loose == []


def test_stages_import_only_the_stages_below_them():
  graph = _graph()
  crossings = {(name, dep) for name, deps in graph.items() for dep in deps
               if _stage(name) and _stage(dep) and _stage(dep) != _stage(name)}
  assert len(crossings) > 20  # the check really reads the packages
  wrong = sorted(f'{name} -> {dep}' for name, dep in crossings
                 if _stage(dep) not in ALLOWED[_stage(name)])
  assert wrong == []


def test_the_allowed_imports_form_no_circle():
  assert _cycles({stage: ALLOWED[stage] for stage in ALLOWED}) == []
  assert _cycles({'a': {'b'}, 'b': {'a'}}) == [['a', 'b']]  # and a circle would be seen


def test_the_model_imports_no_training_data_sharding_or_launch_and_queries_no_device():
  graph = _graph()
  model = [name for name in graph if _stage(name) == 'model']
  reached = set().union(*(_reachable(graph, name) for name in model))
  assert 'gptjax.model.attention' in reached  # the check follows imports
  assert not {m for m in reached if _in(TRAINING_STACK | {'launch'}, m)}, sorted(reached)
  for path in (ROOT / 'gptjax' / 'model').glob('*.py'):
    source = path.read_text()
    for query in ('jax.devices', 'get_abstract_mesh', '.platform', 'device_kind'):
      assert query not in source, (path.name, query)


def test_the_scaling_fits_import_neither_the_model_nor_training():
  graph = _graph()
  for fits in SCALING_FITS:
    reached = _reachable(graph, f'gptjax.scaling.{fits}')
    assert not {m for m in reached if _in(TRAINING_STACK | {'gptjax.model'}, m)}, (fits, reached)


def test_launch_plans_sweeps_without_the_training_stack():
  graph = _graph()
  for name in [n for n in graph if n.startswith('launch')]:
    assert not {m for m in _reachable(graph, name) if _in(TRAINING_STACK, m)}, name


def _public_names(stage: str) -> set[str]:
  return set(importlib.import_module(f'gptjax.{stage}').__all__)


def test_every_public_name_of_a_stage_exists():
  for stage in STAGES:
    package = importlib.import_module(f'gptjax.{stage}')
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert missing == [], stage


def test_launch_and_experiments_use_the_stages_public_names_only():
  """`from gptjax.<stage> import name` with a name the stage's `__init__` exports, and no
  `_private` attribute of anything imported from gptjax."""
  wrong = []
  for top in ('launch', 'experiments'):
    for path in sorted((ROOT / top).rglob('*.py')):
      tree = ast.parse(path.read_text(), str(path))
      bound = set()
      for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.startswith('gptjax') for a in node.names):
          wrong.append(f'{path.name}:{node.lineno} import {node.names[0].name}')
        if not (isinstance(node, ast.ImportFrom) and node.module
                and node.module.split('.')[0] == 'gptjax'):
          continue
        stage = node.module.split('.')[1:]
        for alias in node.names:
          bound.add(alias.asname or alias.name)
          if not stage and alias.name in ALLOWED:
            continue  # `from gptjax import train`: the stage's package itself
          if len(stage) != 1 or stage[0] not in ALLOWED:
            wrong.append(f'{path.name}:{node.lineno} from {node.module} import {alias.name}')
          elif alias.name not in _public_names(stage[0]):
            wrong.append(f'{path.name}:{node.lineno} {node.module}.{alias.name}')
      wrong += [f'{path.name}:{node.lineno} {node.value.id}.{node.attr}' for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in bound and node.attr.startswith('_')]
  assert wrong == []


def test_each_command_is_its_package_main():
  for command in ('generate', 'cost', 'convert', 'finetune', 'preferences', 'scaling', 'evals'):
    assert (ROOT / 'gptjax' / command / '__main__.py').exists(), command


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
