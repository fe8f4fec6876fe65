"""The fine-tuning study's table: exact match with its Wilson interval over the prompts."""

import scipy.stats

from experiments import finetune_study


def test_the_table_gives_each_exact_match_its_interval():
  rows = [{'base': 'clm_d64_lr0.004', 'run': 'lora16', 'base_params': 116_480,
           'trainable': 36_864, 'loss': 1.61, 'exact_match': 4 / 256}]
  table = finetune_study.format_table(rows, {'clm_d64_lr0.004': 0.0}, 256).splitlines()
  wilson = scipy.stats.binomtest(4, 256).proportion_ci(0.95, method='wilson')
  assert table[2].split()[-3:] == ['0.016', f'[{wilson.low:.3f},', f'{wilson.high:.3f}]']
  assert table[1].split()[-3:] == ['0.000', '[0.000,', '0.015]']  # 0 of 256 is not "no skill"
  assert 'clm_d64_lr0.004 (no tuning)' in table[1]
