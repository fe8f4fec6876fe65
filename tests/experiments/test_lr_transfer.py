"""The LR-transfer report: means over seeds, each width's best rate and its interval over seeds."""

import json
import math

import numpy as np
import pytest

from experiments import lr_transfer
from experiments.sweeps import mup_lr_transfer as study
from gptjax.runs import run_dir


def _write(tmp_path, width, log2_lr, seed, loss, finished=True):
  config = study.get_base()
  config.model.d_model, config.train.learning_rate, config.seed = width, 2.0**log2_lr, seed
  member = tmp_path / f"{study.member('sp', width, log2_lr).name}_s{seed}"
  member.mkdir()
  run_dir.write_config(str(member), config)
  step = study.NUM_STEPS if finished else study.NUM_STEPS // 2
  (member / run_dir.METRICS_FILE).write_text(json.dumps({'step': step, 'eval_loss': loss}) + '\n')


def test_each_width_reports_the_seed_mean_and_the_best_rates_interval_over_seeds(tmp_path):
  """Seed s has its loss parabola's minimum at log2 lr -9 + 0.3 s: the mean's vertex is -8.7,
  and resampling whole seeds keeps it within [-9, -8.4]."""
  for seed in (0, 1, 2):
    for k in range(-12, -5):
      _write(tmp_path, 64, k, seed, 2.5 + 0.01 * (k - (-9 + 0.3 * seed))**2 + 0.001 * seed)
  _write(tmp_path, 64, -4, 0, 9.9, finished=False)  # unfinished: left out
  losses = lr_transfer.collect(str(tmp_path))
  by_lr = losses['sp'][64]
  assert len(by_lr) == 7 and all(len(by_seed) == 3 for by_seed in by_lr.values())
  mean = lr_transfer.means(losses)['sp'][64]
  assert mean[2.0**-9] == pytest.approx(np.mean([by_lr[2.0**-9][s] for s in (0, 1, 2)]))
  grid, vertex = lr_transfer.best_log2_lr(mean)
  assert grid == -9 and vertex == pytest.approx(-8.7, abs=1e-9)
  lo, hi = lr_transfer.best_interval(by_lr)
  assert -9.0 - 1e-9 <= lo <= vertex <= hi <= -8.4 + 1e-9 and hi > lo
  report = lr_transfer.format_report(losses)
  assert 'mean over 3 seed(s)' in report and '  -9 (-8.70) [' in report
  one_seed = {lr: {0: by_seed[0]} for lr, by_seed in by_lr.items()}
  assert all(math.isnan(x) for x in lr_transfer.best_interval(one_seed))
