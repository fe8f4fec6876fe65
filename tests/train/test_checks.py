"""The run's config checks: each stage refuses its own fields, composed in one call (8 simulated
devices, so the tiny config's batch splits over a data axis of 8)."""

import pytest

from experiments.configs import tiny
from gptjax.parallel import sharding
from gptjax.train import checks


@pytest.fixture
def mesh():
  return sharding.make_mesh(tiny.get_config().mesh)


@pytest.mark.parametrize('field, value, says', [
    ('data.seq_len', 0, 'data.seq_len=0 must be a whole number >= 1'),
    ('data.source', 'web', "Unknown data.source='web'"),
    ('data.tokenizer', 'words', "data.tokenizer='words'; choose 'byte' or 'bpe'"),
    ('model.d_model', 30, 'd_model=30 is not divisible by num_heads'),
    ('model.vocab_size', 10**12, 'vocab_size=1,000,000,000,000 exceeds 2,147,483,647'),
    ('train.num_steps', 0, 'train.num_steps=0 must be a whole number >= 1'),
    ('train.b2', 1.0, 'train.b2=1.0 must be in [0, 1)'),
    ('train.objective', 'mlm', 'needs model.causal=False'),
    ('data.batch_size', 3, 'data.batch_size=3 must be divisible by the data-parallel mesh size'),
    ('train.tokens_per_pass', 'many', "train.tokens_per_pass='many'; use 'auto'"),
])
def test_each_stage_refuses_its_own_field(mesh, field, value, says):
  config = tiny.get_config()
  checks.check_run_config(config, mesh)  # the config as shipped passes
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ValueError) as error:
    checks.check_run_config(config, mesh)
  assert says in str(error.value)


def test_a_stage_adds_its_checks_and_they_run_last(mesh):
  seen = []
  checks.check_run_config(tiny.get_config(), mesh, lambda config: seen.append(config.seed))
  assert seen == [tiny.get_config().seed]
  config = tiny.get_config()
  config.train.num_steps = 0  # a stage's own check never runs on a config the stages refuse
  with pytest.raises(ValueError, match='train.num_steps'):
    checks.check_run_config(config, mesh, lambda config: seen.append('ran'))
  assert seen == [tiny.get_config().seed]


def test_one_step_per_call_is_refused_by_name():
  config = tiny.get_config()
  config.train.steps_per_call = 4
  with pytest.raises(ValueError, match='train.steps_per_call=4: fine-tuning takes one step'):
    checks.check_one_step_per_call(config, 'fine-tuning')
