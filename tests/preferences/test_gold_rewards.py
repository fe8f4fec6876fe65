"""Gold rewards: each rule on hand-written texts, inputs that must score 0 without raising, and
preference labels with and without Bradley-Terry noise."""

import math

import numpy as np
import pytest

from gptjax.preferences import gold_rewards
from gptjax.preferences.gold_rewards import (GOLD_REWARDS, char_count, label_pair, length_closeness,
                                             pep8_layout, python_compiles)


@pytest.mark.parametrize('text,expected', [
    ('def f(x):\n    return x + 1\n', 1.0),
    ('x = "\\d"\n', 1.0),  # an invalid escape: a warning, not an error
    ('def f(x:\n', 0.0),
    ('x = 1\x00\n', 0.0),  # compile raises ValueError, not SyntaxError
    ('(' * 5000 + ')' * 5000, 0.0),  # nesting too deep for the parser
    ('   \n\t\n', 0.0),  # blank: compiles, but rewarding it would reward stopping at once
    ('x = 1\n' * (gold_rewards.MAX_CHARS // 6 + 1), 0.0),  # valid, but too long to judge
])
def test_python_compiles(text, expected):
  assert python_compiles(text) == expected


def test_length_closeness_peaks_at_the_target_and_is_linear_around_it():
  assert length_closeness('a' * 50, 50) == 1.0
  assert length_closeness('a' * 40, 50) == length_closeness('a' * 60, 50) == pytest.approx(0.8)
  assert length_closeness('', 50) == 0.0 == length_closeness('a' * 150, 50)
  with pytest.raises(ValueError, match='target_chars'):
    length_closeness('a', 0)


def test_char_count_saturates_at_its_cap():
  assert char_count('eel', 'e', 4) == 0.5
  assert char_count('e' * 9, 'e', 4) == 1.0
  assert char_count('xyz', 'e', 4) == 0.0
  with pytest.raises(ValueError, match='one character'):
    char_count('ee', 'ee', 4)


def test_pep8_layout_counts_conforming_non_blank_lines():
  good = 'def f():\n    return 1\n\n'
  assert pep8_layout(good) == 1.0
  assert pep8_layout('def f():\n  return 1\n') == 0.5  # 2-space indent
  assert pep8_layout('def f():\n\treturn 1\n') == 0.5  # a tab
  assert pep8_layout('x = ' + '1' * 80 + '\ny = 2\n') == 0.5  # an 84-character line
  assert pep8_layout('\n  \n') == 0.0


def test_every_registered_reward_is_deterministic_bounded_and_total():
  texts = ['', 'print("hello")\n', 'e' * 300, '\x00\x01 ( [', 'def f(:\n\tpass\n' * 40]
  for name, fn in GOLD_REWARDS.items():
    scores = [fn(text) for text in texts]
    assert scores == [fn(text) for text in texts], name
    assert all(0.0 <= s <= 1.0 for s in scores), (name, scores)
    assert len(set(scores)) > 1, name  # the texts tell some apart
  assert gold_rewards.get('pep8_layout') is pep8_layout
  with pytest.raises(ValueError, match='python_compiles'):
    gold_rewards.get('nope')


def test_label_pair_without_noise_prefers_the_higher_reward_and_flips_coins_on_ties():
  rng = np.random.default_rng(0)
  good, bad = 'x = 1\n', 'x = (\n'
  assert all(label_pair(good, bad, python_compiles, rng) == 0 for _ in range(50))
  assert all(label_pair(bad, good, python_compiles, rng) == 1 for _ in range(50))
  ties = [label_pair(good, 'y = 2\n', python_compiles, rng) for _ in range(2000)]
  assert abs(np.mean(ties) - 0.5) < 0.05  # 4.5 standard errors


def test_label_pair_with_noise_follows_bradley_terry():
  rng = np.random.default_rng(1)
  reward = lambda text: len(text) / 10  # a margin of 0.3 between the two texts below
  temperature = 0.2
  p_a = 1.0 / (1.0 + math.exp(-0.3 / temperature))  # 0.818
  labels = [label_pair('a' * 8, 'a' * 5, reward, rng, bt_noise=temperature) for _ in range(4000)]
  share_a = 1.0 - np.mean(labels)
  assert abs(share_a - p_a) < 4 * math.sqrt(p_a * (1 - p_a) / 4000)
  with pytest.raises(ValueError, match='bt_noise'):
    label_pair('a', 'b', reward, rng, bt_noise=-1.0)
