"""Base config: every field a run reads, with defaults. Other configs start from this one.

Durations are in optimizer steps; one step consumes `data.batch_size * data.seq_len` tokens
(gradient accumulation splits that batch into `train.grad_accum_steps` micro-batches).
"""

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.vocab_size = 256  # overwritten from the tokenizer when data.tokenizer == 'bpe'
  m.d_model = 128
  m.num_layers = 4
  m.num_heads = 4
  m.num_kv_heads = 0  # 0 means num_heads (plain multi-head attention); fewer gives grouped-query
  m.mlp_dim = 0  # 0 means 4 * d_model (GELU) or the LLaMA-style 8/3 * d_model rounded to 64 (SwiGLU)
  m.max_seq_len = 256
  m.position = 'learned'  # 'learned' | 'sinusoidal' | 'rope'
  m.rope_theta = 10000.0
  m.mlp = 'gelu'  # 'gelu' | 'swiglu'
  m.norm = 'layernorm'  # 'layernorm' | 'rmsnorm'
  m.use_bias = True
  m.tie_embeddings = True
  m.dropout = 0.0
  m.init_std = 0.02  # residual output projections are scaled by 1/sqrt(2 * num_layers)
  # 'sp' | 'mup' (docs/mup.md): under muP the init, the Adam learning rate of each parameter and
  # the readout and attention multipliers scale with d_model / base_width, so the hyperparameters
  # tuned at d_model == base_width hold at every width (where muP equals SP exactly).
  m.parametrization = 'sp'
  m.base_width = 0  # the proxy's d_model; needed under 'mup', unused under 'sp'
  m.base_head_dim = 0  # the proxy's head_dim under 'mup'; 0: base_width / num_heads
  m.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16'
  m.param_dtype = 'float32'
  m.scan_layers = False  # nn.scan over blocks: compile time independent of depth
  m.remat = 'none'  # 'none' | 'full' | 'dots' (save matmul outputs, recompute the rest)
  # 'xla' | 'cudnn' | 'blocked' | 'cpu_fused' (gptjax/model/attention); '' picks the fastest that
  # runs where the run is set up ('cpu_fused' on a CPU, else 'blocked'; 'cudnn' on NVIDIA GPUs in
  # bf16)
  m.attention_impl = ''
  m.causal = True  # False: bidirectional attention, for train.objective='mlm'
  return m


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = get_model_config()

  d = config.data = ml_collections.ConfigDict()
  d.source = 'stdlib'  # 'stdlib' | 'text' | 'tokens' | 'arrayrecord' | 'hf'
  d.paths = ''  # glob(s), comma separated, for 'text' / 'tokens' / 'arrayrecord' / 'hf'
  d.val_paths = ''  # optional separate validation glob(s); else a split by file
  d.val_fraction = 0.05  # fraction of files (text) or tokens (token shards) held out
  d.tokenizer = 'byte'  # 'byte' | 'bpe'
  d.bpe_vocab_size = 4096
  d.tokenizer_path = ''  # a tokenizer.json to use instead of training a BPE (e.g. the shards' own)
  d.decode_errors = 'replace'  # undecodable bytes: 'replace' (U+FFFD) | 'skip' the file | 'strict'
  d.token_dtype = 'uint16'  # for .bin token shards
  # data.source='hf' (pip install -e '.[data]'): data.paths of parquet/JSONL/CSV/Arrow files, or
  # a dataset by name (hub or local directory); each row's text_field is one document.
  d.text_field = 'text'
  d.hf_name = ''
  d.hf_config = ''
  d.hf_split = 'train'
  d.hf_streaming = False  # read the named dataset as a stream (corpora too large to cache whole)
  d.seq_len = 128
  d.batch_size = 16  # global batch, in sequences
  d.max_corpus_bytes = 0  # 0: whole corpus; else stop reading after this many bytes (quick runs)
  d.worker_count = 0

  t = config.train = ml_collections.ConfigDict()
  # 'clm': predict every next token; 'mlm': BERT's masked tokens (gptjax/data/masking.py), with
  # model.causal=False
  t.objective = 'clm'
  t.num_steps = 1000
  t.learning_rate = 1e-3
  t.min_lr_ratio = 0.1  # cosine decays to learning_rate * min_lr_ratio
  t.warmup_steps = 100
  t.schedule = 'cosine'  # 'cosine' | 'constant' | 'inverse_sqrt'
  t.weight_decay = 0.1
  t.b1 = 0.9
  t.b2 = 0.95
  t.eps = 1e-8
  t.grad_clip = 1.0  # global-norm clipping; 0 disables
  t.grad_accum_steps = 1
  # Optimizer steps per jitted call: > 1 saves the host's share of each step, which dominates for
  # tiny models on a CPU (docs/performance.md); logs, evals and checkpoints land on the same steps.
  t.steps_per_call = 1
  # Tokens per host in one forward+backward pass: each micro-batch is split into sequential passes
  # of at most this many tokens ('0': never). 'auto' is 1024 on a CPU, where small passes keep the
  # activations in the caches, and off elsewhere; the run logs what it resolved to.
  t.tokens_per_pass = 'auto'
  t.log_every = 10
  t.eval_every = 200
  t.eval_batches = 8
  t.checkpoint_every = 500
  t.keep_checkpoints = 3
  t.async_checkpoints = True

  mesh = config.mesh = ml_collections.ConfigDict()
  # Sizes of the device mesh axes; one may be -1 ("all the devices the others leave").
  mesh.data = -1
  mesh.fsdp = 1
  mesh.tensor = 1
  # On a CPU-only host: split it into this many XLA devices (0: one), each running its share of
  # the batch (BENCHMARKS.md measures 2 on a 2-core host).
  mesh.cpu_devices = 0
  # Logical axis name -> mesh axis (or axes). The model only names logical axes.
  mesh.rules = (
      ('batch', ('data', 'fsdp')),
      ('length', None),
      ('vocab', 'tensor'),
      ('embed', 'fsdp'),
      ('heads', 'tensor'),
      ('kv_heads', 'tensor'),
      ('head_dim', None),
      ('mlp', 'tensor'),
      ('layers', None),
      ('act_embed', None),
      ('act_heads', 'tensor'),
      ('act_mlp', 'tensor'),
      ('act_vocab', 'tensor'),
  )

  dist = config.distributed = ml_collections.ConfigDict()
  dist.enabled = False  # call jax.distributed.initialize (auto-detected on Cloud TPU and SLURM)
  dist.coordinator_address = ''
  dist.num_processes = 0
  dist.process_id = -1

  # Weights & Biases, beside metrics.jsonl and TensorBoard (pip install -e '.[wandb]'): every record
  # is sent to the project named here ('' sends nothing). A sweep's members share a group named after
  # the sweep file unless wandb_group names one; a resumed run continues its own W&B run.
  log = config.log = ml_collections.ConfigDict()
  log.wandb_project = ''
  log.wandb_entity = ''  # '' : your default entity
  log.wandb_name = ''  # '' : the workdir's name
  log.wandb_group = ''
  log.wandb_tags = ''  # comma-separated
  return config
