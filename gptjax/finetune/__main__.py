"""`python -m gptjax.finetune`: supervised fine-tuning of a pre-trained run, in full or with a PEFT
method."""

from gptjax.finetune import run
from gptjax.runs import cli

__doc__ = run.__doc__  # what --help prints: the command's usage
run.define_flags()
cli.run(run.main, 'gptjax.finetune')
