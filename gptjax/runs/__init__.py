"""The run directory: its files and their formats, the lock on it, and how commands end.

The lowest stage: every other package reads and writes a run through these modules.
"""

from gptjax import lazy_exports

SUBMODULES = ('cli', 'run_dir', 'seeds', 'workdir_lock')
# Public names -> the submodule that defines each.
NAMES = {'RESUME_STATUS': 'cli', 'RunError': 'cli', 'Stopped': 'cli', 'format_duration': 'cli'}
__all__ = [*SUBMODULES, *NAMES]
__getattr__, __dir__ = lazy_exports(__name__, SUBMODULES, NAMES)
