"""`python -m gptjax.convert`: GPT-2 checkpoints in from Hugging Face (from-hf) and out to it
(to-hf)."""

from gptjax.convert import commands
from gptjax.runs import cli

__doc__ = commands.__doc__  # what --help prints: the command's usage
commands.define_flags()
cli.run(commands.main, 'gptjax.convert')
