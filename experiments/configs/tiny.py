"""A GPT small enough to train on a 2-core CPU in about two minutes on the embedded stdlib corpus.

Byte-level tokens; the validation loss ends well below the corpus's unigram entropy (the loss of a
model that ignores context), which is the check that it learned something about Python source.
"""

from experiments.configs import base


def get_config():
  config = base.get_config()
  m = config.model
  m.d_model = 128
  m.num_layers = 4
  m.num_heads = 4
  m.max_seq_len = 128

  d = config.data
  d.source = 'stdlib'
  d.tokenizer = 'byte'
  d.seq_len = 128
  d.batch_size = 16

  t = config.train
  t.num_steps = 600
  t.warmup_steps = 50
  t.learning_rate = 2e-3
  t.log_every = 20
  t.eval_every = 100
  t.eval_batches = 8
  t.checkpoint_every = 200
  return config
