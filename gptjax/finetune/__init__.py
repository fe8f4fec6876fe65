"""Supervised fine-tuning of a pre-trained run, in full or with a parameter-efficient method,
through the pre-training step, loop and checkpoints (`python -m gptjax.finetune`, docs/finetuning.md)."""

from gptjax.finetune import run, sft_data, state, tasks
from gptjax.finetune.run import exact_match, finetune
