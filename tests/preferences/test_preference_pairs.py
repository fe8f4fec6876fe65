"""Preference pairs: the JSONL file and its errors, the held-out split, labelling, the rows the
reward model and DPO read, responses read back from a rollout, and the pairs stage end to end."""

import json
import os
import pathlib

import numpy as np
import pytest
from preference_runs import policy_run, stage_config

from experiments.configs import preferences
from gptjax.data.tokenizer import ByteTokenizer
from gptjax.parallel import sharding
from gptjax.preferences import (gold_rewards, pair_data, pair_sampling, pairs as preference_pairs,
                                ppo_training, rollouts, stage as preference_stage)
from gptjax.preferences.pairs import Pair

COUNT_E = gold_rewards.get('count_e_20')


def _write(path, lines):
  path.write_text(''.join(line + '\n' for line in lines))
  return str(path)


def test_pairs_round_trip_with_optional_fields(tmp_path):
  pairs = [Pair('p', 'ee', 'e', 0.1, 0.05, chosen_truncated=True), Pair('q', 'a', 'b')]
  path = str(tmp_path / 'pairs.jsonl')
  preference_pairs.write_pairs(path, pairs)
  assert preference_pairs.read_pairs(path) == pairs
  assert preference_pairs.pairs_path(str(tmp_path)) == path  # a pairs workdir names its file


def test_pairs_read_back_every_character_a_sample_can_hold(tmp_path):
  """Line and paragraph separators, NEL, form feed and CRLF inside responses stay in them."""
  odd = 'a\u2028b\u2029c\x85d\x0ce\x1cf\r\ng\u00e9'
  pairs = [Pair(odd, odd + 'x', 'y' + odd), Pair('q', 'a', 'b')]
  path = str(tmp_path / 'pairs.jsonl')
  preference_pairs.write_pairs(path, pairs)
  assert preference_pairs.read_pairs(path) == pairs
  crlf = tmp_path / 'crlf.jsonl'  # a file saved on Windows reads the same
  crlf.write_bytes(pathlib.Path(path).read_bytes().replace(b'\n', b'\r\n'))
  assert preference_pairs.read_pairs(str(crlf)) == pairs


@pytest.mark.parametrize('line,message', [
    ('{"prompt": "p", "chosen": "a"', r'x\.jsonl:2: not valid JSON'),
    ('{"prompt": "p", "chosen": 1, "rejected": "b"}', r'x\.jsonl:2: expected an object'),
    ('["p", "a", "b"]', r'x\.jsonl:2: expected an object'),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "gold_chosen": "high"}', 'finite number'),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "gold_chosen": NaN}', 'finite number'),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_truncated": 1}', 'true or false'),
])
def test_a_malformed_line_is_named(tmp_path, line, message):
  path = _write(tmp_path / 'x.jsonl', ['{"prompt": "p", "chosen": "a", "rejected": "b"}', line])
  with pytest.raises(ValueError, match=message):
    preference_pairs.read_pairs(path)


def test_empty_missing_and_binary_files_are_refused(tmp_path):
  with pytest.raises(ValueError, match='holds no pairs'):
    preference_pairs.read_pairs(_write(tmp_path / 'empty.jsonl', ['', '  ']))
  with pytest.raises(ValueError, match='no such pairs file'):
    preference_pairs.read_pairs(str(tmp_path / 'absent.jsonl'))
  (tmp_path / 'binary.jsonl').write_bytes(b'\xff\xfe{}')
  with pytest.raises(ValueError, match='not UTF-8'):
    preference_pairs.read_pairs(str(tmp_path / 'binary.jsonl'))


def test_the_split_holds_out_whole_prompts_the_same_way_every_time():
  pairs = [Pair(f'prompt {i}', 'a', 'b') for i in range(200) for _ in range(2)]
  train, held_out = preference_pairs.split_pairs(pairs, 0.25, 'here')
  assert 30 < len(held_out) / 2 < 70  # about a quarter of the 200 prompts
  assert not {p.prompt for p in train} & {p.prompt for p in held_out}
  assert preference_pairs.split_pairs(pairs, 0.25, 'here') == (train, held_out)
  with pytest.raises(ValueError, match='here: its 1 prompts leave'):
    preference_pairs.split_pairs(pairs[:2], 0.25, 'here')


def test_labels_follow_the_gold_reward_and_ties_are_dropped():
  samples = [('e', False), ('eee', True), ('ee', False), ('x', False), ('yy', False)]
  rng = np.random.default_rng(0)
  pairs = preference_pairs.label_samples('p', samples, COUNT_E, rng, bt_noise=0.0, skip_ties=True)
  assert len(pairs) == 10 - 1  # the one tie: 'x' and 'yy' both score 0
  assert all(p.gold_chosen > p.gold_rejected for p in pairs)
  assert all(p.chosen_truncated == (p.chosen == 'eee') for p in pairs)
  kept = preference_pairs.label_samples('p', samples, COUNT_E, rng, bt_noise=0.0, skip_ties=False)
  assert len(kept) == 10
  noisy = preference_pairs.label_samples('p', samples * 20, COUNT_E, np.random.default_rng(1),
                                         bt_noise=0.5, skip_ties=True)
  wrong = np.mean([p.gold_chosen < p.gold_rejected for p in noisy])
  assert 0.2 < wrong < 0.5  # margins of 0.05 to 0.15 at temperature 0.5: often mislabelled


def test_pair_rows_mark_prompt_and_response_and_end_complete_responses_with_eos():
  tok = ByteTokenizer()
  row = pair_data.pair_row(tok, Pair('abcdef', 'xy', 'zzz', chosen_truncated=True), 4, 5)
  tokens, segments = row[:, 0], row[:, 1]
  assert tokens[0].tolist() == list(b'cdefxy') + [0, 0, 0]  # the prompt's last 4 tokens
  assert tokens[1].tolist() == list(b'cdefzzz') + [tok.eos_id, 0]
  assert segments[0].tolist() == [1] * 4 + [2] * 2 + [0] * 3
  assert segments[1].tolist() == [1] * 4 + [2] * 4 + [0]
  assert pair_data.pair_row(tok, Pair('a', 'x' * 5, 'y'), 4, 5) is None  # 5 + EOS > 5
  cut = pair_data.pair_row(tok, Pair('a', 'x' * 7, 'y', chosen_truncated=True), 4, 5)
  assert (cut[0, 1] == pair_data.RESPONSE).sum() == 5


def test_responses_are_read_back_without_eos_and_marked_if_cut_off():
  tok = ByteTokenizer()
  eos = tok.eos_id
  tokens = np.array([[eos, 97, 98, 99, eos], [97, 98, 120, 121, 122]])  # prompt 'ab' / 'ab'
  response = np.array([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1]], bool)
  rollout = rollouts.Rollout(tokens, tokens >= 0, response)
  assert rollouts.responses(tok, rollout) == (['bc', 'xyz'], [False, True])


def test_the_pairs_stage_writes_labelled_pairs_and_a_rerun_reuses_them(tmp_path):
  policy = policy_run(str(tmp_path / 'policy'), std=0.5)
  config = stage_config('pairs', **{'pairs.prompt_task': 'reverse', 'pairs.num_prompts': 16,
                                    'pairs.samples_per_prompt': 3, 'pairs.skip_ties': False})
  workdir = str(tmp_path / 'pairs')
  pairs, sampled = pair_sampling.make_pairs(config, policy, workdir)
  assert sampled and len(pairs) == 16 * 3
  assert all(p.gold_chosen >= p.gold_rejected for p in pairs)
  assert all(p.gold_chosen == COUNT_E(p.chosen) for p in pairs)
  assert all(p.prompt.startswith('reverse(') for p in pairs)
  assert all(len(p.chosen.encode()) <= 3 * 8 for p in pairs)  # 8 bytes, some shown as U+FFFD
  assert sorted(os.listdir(workdir)) == ['config.json', 'pairs.jsonl', 'run.lock', 'sources.json',
                                         'tokenizer.json']
  written = json.loads((tmp_path / 'pairs' / 'config.json').read_text())
  assert written['preferences']['init_from'] == os.path.abspath(policy)
  again, sampled = pair_sampling.make_pairs(config, policy, workdir)
  assert not sampled and again == pairs


def test_every_stage_config_resolves_against_a_policy_run(tmp_path):
  """The config file's defaults pass every check a stage makes before it reads its inputs."""
  policy = policy_run(str(tmp_path / 'policy'), max_seq_len=128)
  for stage in preferences.STAGES:
    config = preference_stage.resolve_config(preferences.get_config(stage), policy)
    assert config.data.seq_len == 96 and 'finetune' not in config
    mesh = sharding.make_mesh(config.mesh)
    if stage == 'pairs':
      pair_sampling.check_config(config)
      continue
    preference_stage.check_train_config(config, mesh)
    if stage == 'ppo':
      ppo_training.check_config(config, mesh)
  with pytest.raises(ValueError, match='exceeds model.max_seq_len'):
    preference_stage.resolve_config(preferences.get_config('dpo'), policy_run(
        str(tmp_path / 'short'), max_seq_len=64))
