"""`python -m gptjax.cost`: the training and serving cost of a model config on a named
accelerator."""

from gptjax.cost import estimator
from gptjax.runs import cli

__doc__ = estimator.__doc__  # what --help prints: the command's usage
estimator.define_flags()
cli.run(estimator.main, 'gptjax.cost')
