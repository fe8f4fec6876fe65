"""Supervised fine-tuning of a pre-trained run, in full or with a parameter-efficient method,
through the pre-training step, loop and checkpoints (`python -m gptjax.finetune`,
docs/finetuning.md)."""

from gptjax import lazy_exports

SUBMODULES = ('run', 'sft_data', 'state', 'tasks')
# Public names -> the submodule that defines each.
NAMES = {'exact_match': 'run', 'finetune': 'run'}
__all__ = [*SUBMODULES, *NAMES]
__getattr__, __dir__ = lazy_exports(__name__, SUBMODULES, NAMES)
