"""Supervised fine-tuning of a pre-trained run (`python -m gptjax.finetune`).

The model, tokenizer and data source come from the run named by --init_from; this config sets what
fine-tuning changes: the sequence length and batch, the optimizer and schedule, the mesh, and the
method and task. Fields of `finetune`:
  method: 'full' trains every parameter; 'lora' | 'adapter' | 'prefix' | 'prompt' train only the
    method's parameters (`gptjax/model/peft.py`, docs/finetuning.md), the base stays frozen.
  lora_rank, lora_alpha, lora_targets (comma-separated among query, key, value, out, up, down,
    gate), adapter_dim, prefix_len, prompt_len: the methods' sizes.
  task: 'reverse' | 'sort' | 'add' (synthetic, scored by exact match), 'docstring' (function
    bodies from their signature and docstring, from the run's corpus), 'jsonl' (task_path).
  task_path, eval_path: JSONL files of {"prompt": ..., "response": ...} lines for task='jsonl'
    (without eval_path, a stable 5% of task_path validates).
  num_examples, eval_examples: training and validation examples (the most read for 'docstring').
"""

import ml_collections

from experiments.configs import base


def get_config():
  pretraining = base.get_config()
  config = ml_collections.ConfigDict()
  config.seed = 0

  d = config.data = ml_collections.ConfigDict()
  d.seq_len = 64
  d.batch_size = 32

  t = config.train = pretraining.train
  t.num_steps = 300
  t.learning_rate = 1e-3
  t.warmup_steps = 30
  t.weight_decay = 0.0
  t.log_every = 20
  t.eval_every = 100
  t.checkpoint_every = 100

  config.mesh = pretraining.mesh
  config.distributed = pretraining.distributed
  config.log = pretraining.log

  f = config.finetune = ml_collections.ConfigDict()
  f.init_from = ''
  f.method = 'full'
  f.lora_rank = 8
  f.lora_alpha = 16.0
  f.lora_targets = 'query,value'
  f.adapter_dim = 16
  f.prefix_len = 8
  f.prompt_len = 8
  f.task = 'reverse'
  f.task_path = ''
  f.eval_path = ''
  f.num_examples = 20000
  f.eval_examples = 256
  return config
