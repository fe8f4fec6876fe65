"""The fine-tuning study's plan (rate selection apart from the reported seeds, sizes matched by
trainable count) and its tables (seed summaries, pooled Wilson intervals, paired differences)."""

import ml_collections
import numpy as np
import pytest
import scipy.stats

from experiments import finetune_methods as plan
from experiments import finetune_tables as tables
from experiments.sweeps import clm_vs_mlm
from gptjax.cost import flops
from gptjax.model import GPTConfig

NARROW, WIDE = plan.BASES


def _trainable(base: str, method: str, size: int | None) -> int:
  config = clm_vs_mlm.get_base()
  d_model = plan.BASES[base]
  for key, value in clm_vs_mlm.member('clm', d_model, 1e-3, 'x', 0).overrides.items():
    section, _, field = key.rpartition('.')
    (config[section] if section else config)[field] = value
  member = plan.Member(base, method, size, 1e-3, 0)
  config.finetune = ml_collections.ConfigDict(
      {k.split('.')[1]: v for k, v in member.overrides().items() if k.startswith('finetune.')})
  return flops.trainable_params(GPTConfig.from_run_config(config))


@pytest.mark.parametrize('method', [m for m, _, _ in plan.METHODS])
def test_the_wider_base_has_sizes_matching_the_narrow_bases_trainable_counts(method):
  scale = plan.BASES[NARROW] / plan.BASES[WIDE]
  for size in plan.sizes(NARROW, method):
    assert size in plan.sizes(WIDE, method)  # matched r/a/P
    narrow = _trainable(NARROW, method, size)
    wide = _trainable(WIDE, method, round(size * scale))
    assert abs(wide - narrow) <= 0.11 * narrow, (method, size, narrow, wide)
    assert _trainable(WIDE, method, size) > 1.8 * narrow  # same r/a/P: about twice the count


def test_rates_are_chosen_at_a_seed_the_table_does_not_report():
  selection = plan.selection_members()
  assert {m.seed for m in selection} == {plan.SELECTION_SEED}
  assert len(selection) == sum(len(plan.RATES[m]) for m in plan.methods()) * len(plan.BASES)
  losses = {m: abs(np.log10(m.rate) + 2) for m in selection}  # lowest at rate 1e-2 where on grid
  rates = plan.choose_rates(losses)
  assert rates[(NARROW, 'full')] == 1e-2 and rates[(WIDE, 'prompt')] == 1e-2
  reported = plan.seed_members(rates, 3)
  assert {m.seed for m in reported} == {0, 1, 2}
  assert not {m.name for m in reported} & {m.name for m in selection}
  assert all(m.rate == rates[(m.base, m.method)] for m in reported)
  assert [m.seed for m in reported] == sorted(m.seed for m in reported)  # seed-major


def _rows(method, size, losses, matches, base=NARROW):
  return [{'base': base, 'method': method, 'size': size, 'rate': 1e-2, 'seed': seed,
           'trainable': 100, 'loss': loss, 'exact_match': match}
          for seed, (loss, match) in enumerate(zip(losses, matches))]


def test_exact_match_shows_the_seed_spread_and_the_pooled_wilson_interval():
  group = _rows('lora', 16, [1.0, 1.1, 1.2], [4 / 256, 10 / 256, 1 / 256])
  text = tables.format_match(group, 256)
  wilson = scipy.stats.binomtest(15, 768).proportion_ci(0.95, method='wilson')
  sem = np.std([4 / 256, 10 / 256, 1 / 256], ddof=1) / np.sqrt(3)
  assert text == f'{15 / 768:.3f} ± {sem:.3f} [{wilson.low:.3f}, {wilson.high:.3f}]'
  assert tables.format_match(_rows('lora', 2, [1, 1, 1], [0, 0, 0]), 256).endswith('[0.000, 0.005]')


def test_the_size_comparison_pairs_seeds_and_covers_both_matchings():
  narrow = _rows('prompt', 4, [5.0, 5.5, 4.8], [0, 0, 0])
  same_p = _rows('prompt', 4, [4.5, 5.1, 4.2], [0, 0, 0], base=WIDE)
  same_count = _rows('prompt', 2, [4.9, 5.4, 4.9], [0, 0, 0], base=WIDE)
  comparisons = {c['matched']: c for c in tables.size_comparisons(narrow + same_p + same_count)}
  assert set(comparisons) == {'r/a/P', 'count'} and comparisons['count']['wide_size'] == 2
  differences = np.array([4.5, 5.1, 4.2]) - np.array([5.0, 5.5, 4.8])
  paired = comparisons['r/a/P']['difference']
  assert paired.mean == pytest.approx(differences.mean())
  assert paired.sem == pytest.approx(differences.std(ddof=1) / np.sqrt(3))
  # Unpaired, the bases' shared seed-to-seed swing would swamp the 0.5 difference.
  assert paired.sem < 0.5 * np.std([5.0, 5.5, 4.8], ddof=1)


def test_the_selection_grid_stars_the_choice_and_flags_an_edge():
  members = [plan.Member(NARROW, 'prompt', 32, rate, plan.SELECTION_SEED)
             for rate in plan.RATES['prompt']]
  losses = dict(zip(members, [3.0, 2.0, 2.5, 2.9]))
  text = tables.format_selection(losses, plan.choose_rates(losses))
  assert '0.03: 2.000*' in text and 'edge' not in text
  losses = dict(zip(members, [3.0, 2.8, 2.5, 2.1]))
  assert '0.3: 2.100*  (edge of the grid)' in tables.format_selection(
      losses, plan.choose_rates(losses))


def test_a_grid_grows_past_the_end_holding_its_best_rate_at_most_twice():
  def members(rates):
    return [plan.Member(NARROW, 'prefix', 32, rate, plan.SELECTION_SEED) for rate in rates]

  start = plan.RATES['prefix']
  falling = lambda rate: -np.log10(rate)  # the higher the rate, the lower the loss
  losses = {m: falling(m.rate) for m in members(start)}
  (more,) = plan.extensions(losses)
  assert more.rate == plan.LADDER[plan.LADDER.index(start[-1]) + 1]
  losses[more] = falling(more.rate)
  (last,) = plan.extensions(losses)
  losses[last] = falling(last.rate)
  assert plan.extensions(losses) == []  # grown by MAX_EXTENSION rates: stop
  interior = {m: abs(np.log10(m.rate) + 2) for m in members(start)}  # best at 1e-2, inside
  assert plan.extensions(interior) == []
  lowest = {m: np.log10(m.rate) for m in members(start)}
  assert [m.rate for m in plan.extensions(lowest)] == [1e-3]
