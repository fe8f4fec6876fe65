"""`python -m gptjax.cost`: the training and serving cost of a model config on a named
accelerator."""

from gptjax.cost import estimator
from gptjax.runs import cli

estimator.define_flags()
cli.run(estimator.main, 'gptjax.cost')
