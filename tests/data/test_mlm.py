"""The masked-LM objective: BERT's corruption statistics, its loss on selected positions only, the
bidirectional model against the causal one, deterministic resumable masking, the refusals, and a
small run that learns."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import base
from gptjax import data as data_lib, train
from gptjax.data import masking
from gptjax.data.tokens import TokenStream
from gptjax.model import attention
from gptjax.model.config import GPTConfig
from gptjax.model.gpt import GPT
from gptjax.runs import run_dir
from gptjax.train import checks
from gptjax.train.steps import loss_fn

EOS = 0
VOCAB = 256


def _corpus_tokens(n: int, seed: int = 0) -> np.ndarray:
  """Random byte ids with a separator about every 50 tokens, as documents would leave them."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, VOCAB, n)
  tokens[rng.random(n) < 0.02] = EOS
  return tokens


def test_bert_corruption_statistics_over_a_million_tokens():
  tokens = _corpus_tokens(1_000_000).reshape(1000, 1000)
  rng = np.random.default_rng(1)
  inputs, labels = np.stack([masking.mask_window(row, rng, data_vocab_size=VOCAB, special_ids=(EOS,))
                             for row in tokens]).swapaxes(0, 1)
  selected = labels != masking.IGNORE
  special = tokens == EOS
  assert not (selected & special).any()  # separators are never predicted...
  np.testing.assert_array_equal(inputs[special], EOS)  # ...nor corrupted
  np.testing.assert_array_equal(inputs[~selected], tokens[~selected])
  np.testing.assert_array_equal(labels[selected], tokens[selected])
  assert abs(selected.sum() / (~special).sum() - 0.15) < 0.002
  masked = inputs[selected] == masking.mask_id(VOCAB)
  kept = inputs[selected] == tokens[selected]
  replaced = ~masked & ~kept
  assert abs(masked.mean() - 0.8) < 0.01
  assert abs(replaced.mean() - 0.1) < 0.01  # a random draw equal to the original counts as kept
  assert abs(kept.mean() - 0.1) < 0.01
  assert inputs[selected][~masked].max() < VOCAB  # random replacements are data tokens


def _model(causal: bool, vocab: int = VOCAB + 1) -> tuple[GPT, dict]:
  cfg = GPTConfig(vocab_size=vocab, d_model=32, num_layers=2, num_heads=4, max_seq_len=16,
                  causal=causal, attention_impl='xla')
  model = GPT(cfg)
  return model, model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))['params']


@pytest.mark.slow
def test_the_loss_counts_the_selected_positions_only():
  model, params = _model(causal=False)
  rng = np.random.default_rng(2)
  batch = np.stack([masking.mask_window(row, rng, data_vocab_size=VOCAB, special_ids=(EOS,))
                    for row in _corpus_tokens(4 * 16, seed=3).reshape(4, 16)])  # [B, 2, T]
  logits = np.asarray(model.apply({'params': params}, jnp.asarray(batch[:, 0])), np.float64)
  log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
      -1, keepdims=True)) - logits.max(-1, keepdims=True)
  b, t = np.nonzero(batch[:, 1] != masking.IGNORE)
  expected = -log_probs[b, t, batch[:, 1][b, t]].mean()
  assert 0 < len(b) < batch[:, 1].size
  got = float(loss_fn(params, model, jnp.asarray(batch), None))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_a_later_token_reaches_earlier_positions_only_without_the_causal_mask():
  tokens = jnp.asarray(_corpus_tokens(16, seed=4)[None])
  changed = tokens.at[0, 10].set((tokens[0, 10] + 1) % VOCAB)
  for causal in (True, False):
    model, params = _model(causal)
    before = model.apply({'params': params}, tokens)
    after = model.apply({'params': params}, changed)
    if causal:
      np.testing.assert_array_equal(before[0, :10], after[0, :10])  # exactly unchanged
    else:
      assert np.abs(np.asarray(before[0, :10] - after[0, :10])).min(axis=-1).max() > 0
      assert (np.abs(np.asarray(before[0, :10] - after[0, :10])).max(axis=-1) > 1e-6).all()


@pytest.mark.slow
def test_with_every_token_masked_the_initial_loss_is_ln_v(monkeypatch):
  """No label reaches the input: with every token selected and replaced by [MASK], an untrained
  model can do no better than uniform. (BERT's 10% kept tokens do show their label, by design:
  with them the initial loss is lower.)"""
  monkeypatch.setattr(masking, 'SELECT_RATE', 1.0)
  monkeypatch.setattr(masking, 'MASK_SHARE', 1.0)
  model, params = _model(causal=False)
  rng = np.random.default_rng(5)
  random_tokens = rng.integers(1, VOCAB, (8, 16))
  batch = np.stack([masking.mask_window(row, rng, data_vocab_size=VOCAB, special_ids=(EOS,))
                    for row in random_tokens])
  assert (batch[:, 1] == random_tokens).all()
  loss = float(loss_fn(params, model, jnp.asarray(batch), None))
  assert abs(loss - math.log(VOCAB + 1)) < 0.01


def test_masking_in_the_pipeline_is_deterministic_and_resumes_exactly(tmp_path):
  path = tmp_path / 'tokens.bin'
  _corpus_tokens(40_000, seed=6).astype(np.uint16).tofile(path)
  stream = TokenStream([str(path)], 'uint16')
  masker = masking.Masker(VOCAB, special_ids=(EOS,))

  def batches():
    return iter(data_lib.window_batches(stream, 32, 8, seed=7, repeat=True, transform=masker)
                .to_iter_dataset())

  first, second = batches(), batches()
  one = [next(first) for _ in range(3)]
  assert one[0].shape == (8, 2, 32) and one[0].dtype == np.int32
  for a, b in zip(one, (next(second) for _ in range(3))):
    np.testing.assert_array_equal(a, b)
  state = first.get_state()
  expected = next(first)
  resumed = batches()
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed), expected)
  windows = data_lib.Windows(stream, 33)
  assert any((row[0][row[1] == masking.IGNORE] == windows[i][:32][row[1] == masking.IGNORE]).all()
             for i in range(len(windows)) for row in one[0][:1])  # rows are windows, minus one


def test_objective_and_attention_must_agree():
  config = base.get_config()
  config.train.objective = 'mlm'
  with pytest.raises(ValueError, match='needs model.causal=False'):
    checks.check_config(config)
  config.model.causal = False
  checks.check_config(config)
  assert GPTConfig.from_run_config(config).vocab_size == config.model.vocab_size + 1  # [MASK]
  assert masking.mask_id(config.model.vocab_size) == config.model.vocab_size
  config.train.objective = 'clm'
  with pytest.raises(ValueError, match='needs model.causal=True'):
    checks.check_config(config)
  config.train.objective = 'span'
  with pytest.raises(ValueError, match="train.objective='span'; choose one of"):
    checks.check_config(config)


def test_bidirectional_attention_runs_where_it_can_and_is_refused_elsewhere():
  cpu = jax.devices()[0]
  assert attention.resolve('', cpu, jnp.float32, 32, causal=False)[0] == 'xla'
  for impl in ('blocked', 'cpu_fused'):
    with pytest.raises(ValueError, match='causal attention only'):
      attention.resolve(impl, cpu, jnp.float32, 32, causal=False)
    with pytest.raises(ValueError, match='causal attention only'):
      GPTConfig(causal=False, attention_impl=impl)
  rng = np.random.default_rng(8)
  q, k, v = (rng.normal(size=(2, 8, 4, 16)).astype(np.float32) for _ in range(3))
  scores = np.einsum('btnh,bsnh->bnts', q, k) / 4.0
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  expected = np.einsum('bnts,bsnh->btnh', weights / weights.sum(-1, keepdims=True), v)
  np.testing.assert_allclose(attention.bidirectional_attention(q, k, v, impl='xla'), expected,
                             rtol=1e-5, atol=1e-6)


def test_a_bidirectional_model_refuses_to_decode():
  from gptjax.generate import decoding
  from gptjax.generate.sampling import SamplingConfig
  model, params = _model(causal=False)
  with pytest.raises(ValueError, match='cannot decode'):
    decoding.generate(params, np.ones((1, 4), np.int32), None, jax.random.key(0),
                      config=model.config, max_new_tokens=2, sampling=SamplingConfig())


@pytest.mark.slow
def test_a_small_mlm_run_learns_the_masked_tokens(tmp_path):
  config = base.get_config()
  # RoPE: a masked token's own embedding says nothing, so the model must learn to read its
  # neighbours, which relative positions make quick.
  config.model.update(d_model=64, num_layers=2, num_heads=4, max_seq_len=64, causal=False,
                      position='rope')
  config.data.update(seq_len=64, batch_size=32, max_corpus_bytes=400_000)
  config.train.update(objective='mlm', num_steps=300, warmup_steps=10, learning_rate=5e-3,
                      log_every=100, eval_every=300, eval_batches=4, checkpoint_every=1000)
  final = train.train_and_evaluate(config, str(tmp_path / 'mlm'))
  unigram = data_lib.build_data(config, str(tmp_path / 'mlm')).unigram_entropy
  assert final['eval_loss'] < unigram - 0.4, (final['eval_loss'], unigram)
  assert 'eval_bits_per_byte' not in final and 0.2 < final['eval_accuracy'] < 1


def _member(tmp_path, name, objective, width, rate, seed, loss, accuracy, finished=True):
  from experiments.sweeps import clm_vs_mlm as study
  config = study.get_base()
  config.train.objective, config.model.causal, config.model.d_model = (
      objective, objective == 'clm', width)
  config.train.learning_rate, config.seed = rate, seed
  member = tmp_path / name
  member.mkdir()
  run_dir.write_config(str(member), config)
  step = study.NUM_STEPS if finished else study.NUM_STEPS // 2
  (member / run_dir.METRICS_FILE).write_text(json.dumps(
      {'step': step, 'eval_loss': loss, 'eval_accuracy': accuracy, 'flops_full': 1e11}) + '\n')


def test_the_study_table_reports_seed_means_and_draws_the_figure(tmp_path):
  """Three seeds of CLM at d32, two of MLM (a third unfinished, left out): mean ± standard
  error, and the seed count."""
  from experiments import clm_vs_mlm
  for seed, loss in ((1, 2.10), (2, 2.14), (3, 2.12)):
    _member(tmp_path, f'clm_d32_s{seed}', 'clm', 32, 8e-3, seed, loss, 0.41)
  for seed, loss in ((1, 1.90), (2, 1.96)):
    _member(tmp_path, f'mlm_d32_s{seed}', 'mlm', 32, 1.6e-2, seed, loss, 0.47)
  _member(tmp_path, 'mlm_d32_s3', 'mlm', 32, 1.6e-2, 3, 1.5, 0.6, finished=False)
  cells = clm_vs_mlm.collect(str(tmp_path))
  assert {key: len(runs) for key, runs in cells.items()} == {('clm', 32): 3, ('mlm', 32): 2}
  report = clm_vs_mlm.format_report(clm_vs_mlm.summarise(cells)).splitlines()
  assert report[1].split()[:5] == ['clm', '32', '0.008', '1e+11', '2.1200']
  assert '± 0.0115 (3 seeds)' in report[1]  # sd 0.02 over sqrt(3)
  assert '1.9300 ± 0.0300 (2 seeds)' in report[2]
  clm_vs_mlm.plot(cells, str(tmp_path / 'plots' / 'study.png'))
  assert (tmp_path / 'plots' / 'study.png').stat().st_size > 10_000


def test_the_study_rates_are_each_cells_parabola_minimum(tmp_path):
  from experiments import clm_vs_mlm
  for rate, loss in ((4e-3, 2.3), (8e-3, 2.2), (1.6e-2, 2.3)):
    _member(tmp_path, f'mlm_d32_lr{rate:g}', 'mlm', 32, rate, 0, loss, 0.4)
  rates = clm_vs_mlm.choose_rates(clm_vs_mlm.collect(str(tmp_path)))
  assert rates == {'mlm': {'32': pytest.approx(8e-3)}}
