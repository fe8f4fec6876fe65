"""Devices: the mesh and its logical-axis rules, multi-host start-up, and the choices that depend
on the hardware (attention backend, passes per step), made once per run (docs/scale-out.md)."""

from gptjax import lazy_exports

SUBMODULES = ('distributed', 'hardware', 'sharding')
# Public names -> the submodule that defines each.
NAMES = {'check_config': 'hardware'}
__all__ = [*SUBMODULES, *NAMES]
__getattr__, __dir__ = lazy_exports(__name__, SUBMODULES, NAMES)
