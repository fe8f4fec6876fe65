"""A sweep's records to scaling laws: the table of records, the three Chinchilla approaches with
bootstrap intervals and seed noise, the checks, the report and the figures (docs/scaling.md).

The fits read runs only through `gptjax.runs`; they import neither the model nor training. The muP
coordinate check (`python -m gptjax.scaling mup_check`) is the one command here that trains."""

from gptjax import lazy_exports

SUBMODULES = ('accounting', 'envelope', 'exponents', 'holdout', 'huber', 'isoflop', 'laws', 'plots', 'records', 'replicas', 'report',
              'table')
# Public names -> the submodule that defines each.
NAMES = {'fit_and_report': 'report'}
__all__ = [*SUBMODULES, *NAMES]
__getattr__, __dir__ = lazy_exports(__name__, SUBMODULES, NAMES)
