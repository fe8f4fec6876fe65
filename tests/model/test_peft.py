"""Fine-tuning methods (gptjax/model/peft.py, gptjax/model/peft_layers.py): what holds at init, what trains,
parameter counts, the LoRA merge, decoding with the KV cache, sharding and config checks."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from random_models import random_model

from experiments.configs import base
from gptjax.cost import flops
from gptjax.generate import decoding
from gptjax.model import peft
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.model.peft_config import LORA_TARGETS, METHODS, PeftConfig
from gptjax.parallel import sharding

SMALL = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, max_seq_len=24)
P = 4  # prefix and prompt length
# One model per method, spreading the variants every method must run on between them.
CASES = {
    'lora': dict(position='rope', num_kv_heads=2, mlp='swiglu',
                 peft=PeftConfig('lora', lora_rank=4, lora_targets=LORA_TARGETS)),
    'adapter': dict(peft=PeftConfig('adapter', adapter_dim=8)),
    'prefix': dict(position='rope', num_kv_heads=2, scan_layers=True,
                   peft=PeftConfig('prefix', prefix_len=P)),
    'prompt': dict(peft=PeftConfig('prompt', prompt_len=P)),
}
# Row 1 is left-padded by 3 tokens, as `decoding.left_pad` lays out a batch.
TOKENS = jax.random.randint(jax.random.key(1), (4, 12), 0, SMALL['vocab_size'])
MASK = jnp.ones((4, 12), bool).at[1, :3].set(False)
POSITIONS = decoding.prompt_positions(MASK)


def _config(case: str, **overrides) -> GPTConfig:
  return GPTConfig(**{**SMALL, **CASES[case], **overrides})


def _plain(cfg: GPTConfig) -> GPTConfig:
  return dataclasses.replace(cfg, peft=PeftConfig())


def _abstract(cfg: GPTConfig) -> dict:
  """The boxed parameter shapes of the model; nothing is computed."""
  return jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params']


@functools.lru_cache(maxsize=None)
def _initialised() -> dict:
  """method -> the parameters flax's initialisers give one-layer models of 'lora' and 'adapter',
  the method's zero-initialised parts included. Compiling random initialisers is what costs here:
  one jitted init for both, one layer, and an 'rbg' key, whose random bits compile in a fraction
  of the default threefry's time."""
  cfgs = {method: _light(method, num_layers=1) for method in ('lora', 'adapter')}
  init = jax.jit(lambda key: {method: GPT(cfg).init(key, jnp.zeros((1, 8), jnp.int32))['params']
                              for method, cfg in cfgs.items()})
  return nn.unbox(init(jax.random.key(0, impl='rbg')))


def _random(cfg: GPTConfig, std: float = 0.2) -> dict:
  """Every parameter, the method's included, drawn from N(0, std): nothing is zero."""
  return random_model(std, tuple((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg)),
                      ())[1]


@functools.lru_cache(maxsize=None)
def _forward(cfg: GPTConfig):
  """The jitted forward pass of one config, compiled once for the whole file."""
  return jax.jit(lambda params, tokens, positions, mask: GPT(cfg).apply(
      {'params': params}, tokens, positions_BxT=positions, kv_mask_BxS=mask))


def _apply(cfg: GPTConfig, params, tokens) -> np.ndarray:
  return np.asarray(GPT(cfg).apply({'params': params}, tokens))


@pytest.mark.parametrize('method', ['lora', 'adapter'])
@pytest.mark.slow
def test_lora_and_adapter_leave_the_plain_model_unchanged_at_init(method):
  """At init B = 0 (LoRA) and the adapters' up-projections are 0, so the model is the plain one.

  Run op by op, the plain model's operations run unchanged on the same inputs and the method adds
  exact zeros, so the logits agree bit for bit. (Jitted, or inside nn.scan's compiled loop, XLA
  fuses the two programs differently, which can move a result by an ulp.) Nonzero method
  parameters do change the logits.
  """
  cfg = _light(method, num_layers=1)
  params = _initialised()[method]
  trainable, frozen = peft.split_trainable(params, method)
  zero_at_init = {'lora': 'lora_b', 'adapter': 'adapter_up'}[method]
  zeros = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(trainable)
           if path[-1].key == zero_at_init]
  assert zeros and all(not np.asarray(leaf).any() for leaf in zeros)
  plain = _apply(_plain(cfg), frozen, TOKENS)
  np.testing.assert_array_equal(_apply(cfg, params, TOKENS), plain)
  nudged = jax.tree.map(lambda x: x + 0.5, trainable)
  assert np.abs(_apply(cfg, peft.combine(nudged, frozen), TOKENS) - plain).max() > 1e-4


def _light(method: str, num_layers: int = 2) -> GPTConfig:
  """Unrolled models with one plain part, so their op-by-op runs share compilations; without
  biases and with RMSNorm they have fewer operations to compile."""
  sizes = dict(lora_rank=4, lora_targets=('query', 'value', 'out', 'down'), adapter_dim=8,
               prefix_len=P, prompt_len=P)
  return GPTConfig(**{**SMALL, 'num_layers': num_layers}, use_bias=False, norm='rmsnorm',
                   peft=PeftConfig(method, **sizes))


@pytest.mark.slow
def test_prefix_from_the_base_models_keys_reproduces_it_on_those_tokens_prepended():
  """With the prefix set to the base model's keys and values for P token ids, the model computes
  the base model's logits on those ids followed by the tokens (whose positions start at P):
  RoPE rotates the prefix keys at 0..P-1 and the queries at P and on, as in the longer run."""
  cfg = _config('prefix')
  params = _random(cfg)
  _, frozen = peft.split_trainable(params, 'prefix')
  ids = jnp.arange(7, 7 + P, dtype=jnp.int32)[None]
  prefill = jax.jit(decoding.prefill, static_argnums=(1, 4))
  _, cache, _ = prefill(frozen, _plain(cfg), ids, jnp.ones((1, P), bool), 1)
  ones, positions = jnp.ones((4, P + 12), bool), jnp.broadcast_to(jnp.arange(P + 12), (4, P + 12))
  longer = jnp.concatenate([jnp.repeat(ids, 4, axis=0), TOKENS], axis=1)
  want = np.asarray(_forward(_plain(cfg))(frozen, longer, positions, ones))[:, P:]
  run = lambda p: np.asarray(_forward(cfg)(p, TOKENS, positions[:, :12], ones[:, :12]))
  np.testing.assert_allclose(run(peft.prefix_from_cache(params, cache)), want, atol=1e-5, rtol=1e-6)
  assert np.abs(run(params) - want).max() > 1e-2


def test_prompt_from_token_embeddings_reproduces_the_base_model_on_those_tokens_prepended():
  """With the prompt set to the embeddings of P token ids, the model's input is the base model's
  on those ids followed by the tokens, so the logits of the tokens agree."""
  cfg = _config('prompt')
  params = _random(cfg)
  _, frozen = peft.split_trainable(params, 'prompt')
  ids = jnp.arange(7, 7 + P, dtype=jnp.int32)
  ones, positions = jnp.ones((4, P + 12), bool), jnp.broadcast_to(jnp.arange(P + 12), (4, P + 12))
  longer = jnp.concatenate([jnp.tile(ids[None], (4, 1)), TOKENS], axis=1)
  want = np.asarray(_forward(_plain(cfg))(frozen, longer, positions, ones))[:, P:]
  run = lambda p: np.asarray(_forward(cfg)(p, TOKENS, positions[:, :12], ones[:, :12]))
  np.testing.assert_allclose(run(peft.prompt_from_tokens(params, ids)), want, atol=1e-6, rtol=0)
  assert np.abs(run(params) - want).max() > 1e-2


@pytest.mark.slow
def test_training_moves_the_method_parameters_and_nothing_else():
  """AdamW on each method's trainable tree alone, the gradient taken through `combine`: every
  method parameter moves, the loss falls, and the frozen tree is the one the steps started from,
  bit for bit. The four models are unrolled and train side by side in one jitted step: scanned
  gradients take longer to compile, and one compilation costs less than four."""
  cfgs = [_light(method) for method in ('lora', 'adapter', 'prefix', 'prompt')]
  params = [_random(cfg) for cfg in cfgs]
  trainables, frozens = zip(*(peft.split_trainable(p, c.peft.method) for c, p in zip(cfgs, params)))
  frozens_before = jax.tree.map(np.array, frozens)
  optimizer = optax.adamw(1e-2, weight_decay=0.0)  # decay alone would move every nonzero leaf

  def loss(cfg, trainable, frozen):
    logits_BxTxV = GPT(cfg).apply({'params': peft.combine(trainable, frozen)}, TOKENS[:, :-1])
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV)
    return -jnp.take_along_axis(logp_BxTxV, TOKENS[:, 1:, None], axis=-1).mean()

  @jax.jit
  def step(trainables, opt_states, frozens):
    out = []
    for cfg, trainable, opt_state, frozen in zip(cfgs, trainables, opt_states, frozens):
      value, grads = jax.value_and_grad(functools.partial(loss, cfg))(trainable, frozen)
      updates, opt_state = optimizer.update(grads, opt_state, trainable)
      out.append((optax.apply_updates(trainable, updates), opt_state, value))
    return tuple(zip(*out))

  state, opt_states, losses = trainables, tuple(optimizer.init(t) for t in trainables), []
  for _ in range(3):
    state, opt_states, values = step(state, opt_states, frozens)
    losses.append(np.asarray(values))
  assert (losses[-1] < losses[0]).all(), losses
  for (path, before), after in zip(jax.tree_util.tree_leaves_with_path(trainables),
                                  jax.tree.leaves(state)):
    assert np.abs(np.asarray(after) - np.asarray(before)).min() > 0, jax.tree_util.keystr(path)
  jax.tree.map(np.testing.assert_array_equal, frozens, frozens_before)
  for p, trained, frozen in zip(params, state, frozens):
    assert jax.tree.structure(peft.combine(trained, frozen)) == jax.tree.structure(p)


@pytest.mark.parametrize('variant', [
    dict(),
    dict(scan_layers=True, num_kv_heads=2, mlp='swiglu', use_bias=False, tie_embeddings=False),
])
def test_trainable_count_and_split_on_abstract_and_boxed_trees(variant):
  """`trainable_param_count` is the size of what `split_trainable` keeps, for every method; the
  split of boxed shapes (which sharding reads) leaves exactly the plain model's tree frozen, and
  `combine` restores the whole tree."""
  is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
  plain = jax.tree.structure(nn.unbox(_abstract(GPTConfig(**SMALL, **variant))))
  targets = LORA_TARGETS if variant.get('mlp') == 'swiglu' else ('query', 'out', 'down')
  for method in METHODS:
    cfg = GPTConfig(**SMALL, **variant, peft=PeftConfig(
        method, lora_rank=3, lora_targets=targets, adapter_dim=5, prefix_len=P, prompt_len=P + 1))
    boxed = _abstract(cfg)
    trainable, frozen = peft.split_trainable(boxed, method)
    assert (jax.tree.structure(peft.combine(trainable, frozen), is_leaf=is_box)
            == jax.tree.structure(boxed, is_leaf=is_box))
    count = sum(x.size for x in jax.tree.leaves(nn.unbox(trainable)))
    assert flops.trainable_params(cfg) == count, method
    if method != 'full':
      assert jax.tree.structure(nn.unbox(frozen)) == plain


def test_merged_lora_weights_load_into_the_plain_model_and_give_the_same_logits():
  cfg = _config('lora')
  params = _random(cfg, std=0.1)
  merged = peft.merge_lora(params, cfg)
  assert jax.tree.structure(merged) == jax.tree.structure(nn.unbox(_abstract(_plain(cfg))))
  unmerged = np.asarray(_forward(cfg)(params, TOKENS, POSITIONS, MASK))
  got = np.asarray(_forward(_plain(cfg))(merged, TOKENS, POSITIONS, MASK))
  np.testing.assert_allclose(got[MASK], unmerged[MASK], atol=1e-5)
  _, frozen = peft.split_trainable(params, 'lora')  # without the update the logits differ
  without = np.asarray(_forward(_plain(cfg))(frozen, TOKENS, POSITIONS, MASK))
  assert np.abs(without - unmerged).max() > 1e-2


def test_merge_folds_each_update_into_its_kernel_of_stacked_layers():
  """Scanned (every leaf has a leading layers axis), against NumPy: W + (alpha/r)·A·B per layer
  and wrapped kernel, the [N, H, D] attention output included."""
  cfg = _config('lora', scan_layers=True, peft=PeftConfig('lora', lora_rank=4, lora_alpha=6.0,
                                                          lora_targets=('query', 'out')))
  params = _random(cfg)
  merged = peft.merge_lora(params, cfg)
  assert jax.tree.structure(merged) == jax.tree.structure(nn.unbox(_abstract(_plain(cfg))))
  attn, new = params['blocks']['attn'], merged['blocks']['attn']
  a, b = (np.asarray(attn['query_lora'][k], np.float64) for k in ('lora_a', 'lora_b'))
  np.testing.assert_allclose(new['query']['kernel'], attn['query']['kernel']
                             + 1.5 * np.einsum('ldr,lrnh->ldnh', a, b), rtol=1e-6, atol=1e-6)
  a, b = (np.asarray(attn['out_lora'][k], np.float64) for k in ('lora_a', 'lora_b'))
  np.testing.assert_allclose(new['out_kernel'], attn['out_kernel']
                             + 1.5 * np.einsum('lnhr,lrd->lnhd', a, b), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(new['key']['kernel'], attn['key']['kernel'])


@pytest.mark.parametrize('case', CASES)
@pytest.mark.slow
def test_decoding_with_the_kv_cache_reproduces_the_full_forward(case):
  """A left-padded batch fed through the cache 4 tokens a call (the prefill at index 0, then two
  calls that extend it) gives the logits of one forward pass over the whole padded batch at every
  real token, with the method's parameters nonzero. One call shape keeps it to one compilation;
  a call of 1 token runs the same code with t = 1."""
  cfg = _config(case)
  params = _random(cfg)
  full = np.asarray(_forward(cfg)(params, TOKENS, POSITIONS, MASK))
  step = jax.jit(decoding.decode_apply, static_argnums=1)
  cache, decoded = decoding.init_cache(cfg, 4, 12), []
  for t in range(0, 12, 4):
    logits, cache = step(params, cfg, cache, TOKENS[:, t:t + 4], POSITIONS[:, t:t + 4], MASK)
    decoded.append(np.asarray(logits))
  decoded = np.concatenate(decoded, axis=1)
  np.testing.assert_allclose(decoded[MASK], full[MASK], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('case', ['lora', 'prefix'])
@pytest.mark.slow
def test_sharded_apply_equals_the_single_device_apply(case):
  """Parameters placed by the shardings of `split_trainable`'s two boxed parts on a 2x2x2 mesh
  (the method's own leaves split over 'tensor' like the projections they belong to)."""
  cfg = _config(case)
  params = _random(cfg)
  rules = sharding.logical_rules(base.get_config().mesh)
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': 2, 'fsdp': 2, 'tensor': 2}))
  parts = peft.split_trainable(_abstract(cfg), cfg.peft.method)
  shardings = [sharding.logical_shardings(part, mesh, rules) for part in parts]
  assert any('tensor' in s.spec for s in jax.tree.leaves(shardings[0]))
  placed = [jax.device_put(part, s)
            for part, s in zip(peft.split_trainable(params, cfg.peft.method), shardings)]
  apply = lambda trainable, frozen, tokens, positions, mask: GPT(cfg).apply(
      {'params': peft.combine(trainable, frozen)}, tokens, positions_BxT=positions,
      kv_mask_BxS=mask)
  batch = [jax.device_put(x, sharding.batch_sharding(mesh)) for x in (TOKENS, POSITIONS, MASK)]
  sharded = jax.jit(sharding.traced_under(mesh, rules, apply, 'apply'))(*placed, *batch)
  single = _forward(cfg)(params, TOKENS, POSITIONS, MASK)
  np.testing.assert_allclose(np.asarray(sharded)[MASK], np.asarray(single)[MASK], atol=1e-5,
                             rtol=1e-5)


@pytest.mark.parametrize('fields, message', [
    (dict(method='bitfit'), "method='bitfit'"),
    (dict(lora_rank=0), 'lora_rank=0'),
    (dict(lora_alpha=0.0), 'lora_alpha=0.0'),
    (dict(lora_targets=('query', 'qkv')), r"lora_targets names \['qkv'\]"),
    (dict(lora_targets=()), 'lora_targets=()'),
    (dict(lora_targets=('value', 'value')), 'lora_targets'),
    (dict(adapter_dim=0), 'adapter_dim=0'),
    (dict(prefix_len=0), 'prefix_len=0'),
    (dict(prompt_len=-1), 'prompt_len=-1'),
])
def test_bad_finetune_configs_are_refused_naming_the_field(fields, message):
  with pytest.raises(ValueError, match=message):
    PeftConfig(**fields)


def test_configs_that_do_not_fit_the_model_are_refused():
  with pytest.raises(ValueError, match="lora_targets names 'gate'"):
    GPTConfig(**SMALL, peft=PeftConfig('lora', lora_targets=('gate',)))
  with pytest.raises(ValueError, match='peft'):
    GPTConfig.from_config({**SMALL, 'peft': {}})  # the method comes from `finetune`
  cfg = GPTConfig(**SMALL, peft=PeftConfig('prompt', prompt_len=16))  # 16 + 12 > 24
  with pytest.raises(ValueError, match='16 prompt slots \\+ 12 tokens exceed'):
    jax.eval_shape(GPT(cfg).init, jax.random.key(0), TOKENS)
  with pytest.raises(ValueError, match='after its 16 prompt slots'):
    decoding.check_lengths(cfg, 6, 4)
  with pytest.raises(ValueError, match='merge_lora needs a LoRA model'):
    peft.merge_lora({}, cfg)


def test_the_finetune_section_sets_the_method_and_keeps_its_other_fields_to_itself():
  config = base.get_config()
  config.finetune = ml_collections.ConfigDict(dict(
      method='lora', lora_rank=4, lora_targets='query, value,out', task='copy', init_from='/x'))
  cfg = GPTConfig.from_run_config(config)
  assert cfg.peft == PeftConfig('lora', lora_rank=4, lora_targets=('query', 'value', 'out'))
  assert GPTConfig.from_run_config(base.get_config()).peft == PeftConfig()
  config.finetune.method, config.finetune.prompt_len = 'prompt', 129
  config.data.seq_len = 128
  with pytest.raises(ValueError, match=r'data.seq_len=128 \+ 129 prompt slots exceeds'):
    GPTConfig.from_run_config(config)


def test_full_fine_tuning_trains_everything():
  cfg = GPTConfig(**SMALL)
  shapes = nn.unbox(jax.eval_shape(GPT(cfg).init, jax.random.key(0), TOKENS)['params'])
  trainable, frozen = peft.split_trainable(shapes, 'full')
  assert frozen == {} and jax.tree.structure(trainable) == jax.tree.structure(shapes)
  assert flops.trainable_params(cfg) == sum(x.size for x in jax.tree.leaves(shapes))
