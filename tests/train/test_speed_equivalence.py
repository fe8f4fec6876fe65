"""The CPU training path computes the same training run as a plain GPT.

The reference below is the textbook model written out by hand over the same parameter tree: three
separate query/key/value products, the full T×T masked softmax, layer norms and GELU spelled out,
one pass over the whole batch. Twenty optimizer steps of the project's train step (the CPU
attention backends, the batch in cache-sized passes) must follow it within float32 rounding,
for multi-head and grouped-query attention and for a sequence length that the attention blocks do
not divide.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import base
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.parallel import hardware, sharding
from gptjax.train import loop, optim
from gptjax.train.steps import TrainState, train_step


def _layer_norm(x_BxTxD, p):
  mean = x_BxTxD.mean(-1, keepdims=True)
  var = ((x_BxTxD - mean) ** 2).mean(-1, keepdims=True)
  return (x_BxTxD - mean) / jnp.sqrt(var + 1e-5) * p['scale'][None, None] + p['bias'][None, None]


def _reference_loss(params, batch_BxT1, cfg: GPTConfig):
  """Next-token loss of a plain pre-norm GPT with learned positions and tied embeddings."""
  tokens_BxT, targets_BxT = batch_BxT1[:, :-1], batch_BxT1[:, 1:]
  t = tokens_BxT.shape[1]
  x = params['embed']['embedding'][tokens_BxT] + params['pos_embed'][:t][None]
  causal_TxT = jnp.tril(jnp.ones((t, t), bool))
  for layer in range(cfg.num_layers):
    p = params[f'block_{layer}']
    h = _layer_norm(x, p['attn_norm'])
    a = p['attn']
    q, k, v = (jnp.einsum('btd,dnh->btnh', h, a[name]['kernel']) + a[name]['bias'][None, None]
               for name in ('query', 'key', 'value'))
    group = cfg.num_heads // cfg.kv_heads
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    logits = jnp.einsum('bqnh,bknh->bnqk', q, k) / math.sqrt(cfg.head_dim)
    probs = jax.nn.softmax(jnp.where(causal_TxT[None, None], logits, -jnp.inf), axis=-1)
    o = jnp.einsum('bnqk,bknh->bqnh', probs, v)
    x = x + jnp.einsum('btnh,nhd->btd', o, a['out_kernel']) + a['out_bias'][None, None]
    m = p['mlp']
    u = _layer_norm(x, p['mlp_norm']) @ m['up']['kernel'] + m['up']['bias'][None, None]
    gelu = 0.5 * u * (1 + jnp.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
    x = x + gelu @ m['down']['kernel'] + m['down']['bias'][None, None]
  logits = _layer_norm(x, params['final_norm']) @ params['embed']['embedding'].T
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(log_probs, targets_BxT[..., None], axis=-1).mean()


def _counting_batch(key, batch: int, length: int, vocab: int):
  """Rows that count up from a random start by a random stride: learnable within a few steps."""
  start_key, stride_key = jax.random.split(key)
  start_Bx1 = jax.random.randint(start_key, (batch, 1), 0, vocab)
  stride_Bx1 = jax.random.randint(stride_key, (batch, 1), 1, 4)
  return (start_Bx1 + stride_Bx1 * jnp.arange(length)[None]) % vocab


def _train_config():
  config = base.get_config()
  config.train.num_steps, config.train.warmup_steps, config.train.learning_rate = 20, 2, 3e-3
  return config.train


@pytest.mark.parametrize('attention_impl', ['cpu_fused', 'blocked'])
@pytest.mark.parametrize('num_kv_heads, seq_len, batch', [(0, 128, 16), (2, 100, 4)])
@pytest.mark.slow
def test_twenty_steps_follow_the_plain_reference(num_kv_heads, seq_len, batch, attention_impl):
  cfg = GPTConfig(vocab_size=64, d_model=64, num_layers=2, num_heads=4, num_kv_heads=num_kv_heads,
                  max_seq_len=seq_len, attention_impl=attention_impl)
  tx = optim.make_optimizer(_train_config())
  params = nn.unbox(GPT(cfg).init(jax.random.key(0), jnp.zeros((1, seq_len), jnp.int32))['params'])
  # A budget of 2 rows per pass, so both cases run their batch in several accumulated passes.
  passes = hardware.passes_per_step(batch, seq_len, 1, budget=2 * seq_len, batch_shards=1)
  assert passes == batch // 2
  fast_step = jax.jit(functools.partial(train_step, model=GPT(cfg), optimizer=tx,
                                        schedule=optim.learning_rate_schedule(_train_config()),
                                        grad_accum_steps=passes))

  @jax.jit
  def reference_step(params, opt_state, batch_BxT1):
    loss, grads = jax.value_and_grad(_reference_loss)(params, batch_BxT1, cfg)
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(jnp.add, params, updates), opt_state, loss

  fast = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  ref_params, ref_opt_state = params, tx.init(params)
  fast_losses, ref_losses = [], []
  for i in range(20):
    batch_BxT1 = _counting_batch(jax.random.key(i), batch, seq_len + 1, cfg.vocab_size)
    fast, metrics = fast_step(fast, batch_BxT1)
    ref_params, ref_opt_state, ref_loss = reference_step(ref_params, ref_opt_state, batch_BxT1)
    fast_losses.append(float(metrics['train_loss'])), ref_losses.append(float(ref_loss))
  np.testing.assert_allclose(fast_losses, ref_losses, rtol=1e-5)
  assert ref_losses[-1] < ref_losses[0] - 0.5  # the run actually trained
  for path, got in jax.tree_util.tree_leaves_with_path(fast.params):
    want = functools.reduce(lambda tree, entry: tree[entry.key], path, ref_params)
    if jax.tree_util.keystr(path).endswith("['key']['bias']"):
      # Softmax ignores a shift shared by a query's logits, so the key bias has zero gradient: in
      # both runs it holds rounding noise that Adam scales up to ~lr-sized steps. Both stay ~0.
      assert np.abs(got).max() < 1e-4 and np.abs(want).max() < 1e-4
    else:
      np.testing.assert_allclose(got, want, atol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_data_parallel_cpu_step_gives_each_device_its_own_rows():
  """On 8 devices each one trains on its own rows: no pass gathers the batch onto every device."""
  config = base.get_config()
  config.model.update(d_model=32, num_layers=1, num_heads=2, max_seq_len=256)
  config.data.batch_size, config.data.seq_len = 16, 256
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 8, 1, 1
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:8])
  rules = sharding.logical_rules(config.mesh)
  state, shardings = loop.create_train_state(config, mesh, rules)
  jit_train, _ = loop.jit_steps(config, hardware.resolve(config, mesh), mesh, rules, shardings)
  batch = jax.ShapeDtypeStruct((16, 257), jnp.int32, sharding=sharding.batch_sharding(mesh))
  hlo = jit_train.lower(state, batch, optim.schedule_numbers(config.train)).compile().as_text()
  assert 'all-gather' not in hlo and 'all-reduce' in hlo  # gradients are reduced, rows stay put
