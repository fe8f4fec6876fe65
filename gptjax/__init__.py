"""gptjax: GPT language-model scaling experiments in JAX and Flax, one package per stage of a run's
life (docs/architecture.md has the map and the rules of which stage may import which)."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence


def lazy_exports(package: str, submodules: Sequence[str], names: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
  """A package's `__getattr__` and `__dir__` (PEP 562) that import each public name on first use.

  `names` maps a name to the submodule that defines it. A package's public names are then one
  list, yet importing one light module of a stage (the optimizer's schedule check, a run
  directory's file names) does not pull in the rest of that stage, such as the training loop and
  its data pipeline.
  """

  def __getattr__(name: str) -> Any:
    if name in submodules:
      return importlib.import_module(f'{package}.{name}')
    if name in names:
      return getattr(importlib.import_module(f'{package}.{names[name]}'), name)
    raise AttributeError(f'module {package!r} has no attribute {name!r}')

  def __dir__() -> list[str]:
    return sorted([*submodules, *names])

  return __getattr__, __dir__
