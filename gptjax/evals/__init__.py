"""Evaluations of trained runs beyond the validation loss: few-shot generation, multiple choice by
likelihood, and in-context learning signatures, for one run or across a sweep
(`python -m gptjax.evals`, docs/evals.md)."""

from gptjax import lazy_exports

SUBMODULES = ('builtin', 'context_tasks', 'curves', 'fewshot', 'generation', 'multiple_choice',
              'run', 'scoring', 'sweep', 'task_files')
# Public names -> the submodule that defines each.
NAMES = {'Scorer': 'scoring', 'load_scorer': 'scoring', 'evaluate_run': 'run',
         'evaluate_sweep': 'sweep'}
__all__ = [*SUBMODULES, *NAMES]
__getattr__, __dir__ = lazy_exports(__name__, SUBMODULES, NAMES)
