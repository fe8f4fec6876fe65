"""Loading run records from synthetic workdirs, including the debris a crash leaves."""

import json
import os
import re

import numpy as np
import pytest

from gptjax.runs import run_dir
from gptjax.scaling import records


def write_run(root, name, lines, config=None):
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  with open(os.path.join(workdir, run_dir.METRICS_FILE), 'w') as f:
    f.write(''.join(line if isinstance(line, str) else json.dumps(line) + '\n' for line in lines))
  if config is not None:
    with open(os.path.join(workdir, run_dir.CONFIG_FILE), 'w') as f:
      json.dump(config, f)
  return workdir


def eval_line(step, loss, params=1000):
  return dict(step=step, tokens_seen=step * 64, eval_loss=loss, train_loss=loss + 0.1,
              flops_kaplan=6.0 * params * step * 64, flops_full=7.0 * params * step * 64,
              params_total=params + 500, params_non_embedding=params)


def test_load_run_skips_partial_last_line_with_warning(tmp_path):
  workdir = write_run(tmp_path, 'a', [eval_line(10, 3.0), {'step': 15, 'train_loss': 2.9},
                                      eval_line(20, 2.5), '{"step": 30, "eval_lo'])
  with pytest.warns(UserWarning,
                    match=re.escape(run_dir.METRICS_FILE) + ':4: skipping a malformed record'):
    rows = run_dir.read_metrics(workdir)
  assert [r['step'] for r in rows] == [10, 15, 20]


def test_non_finite_strings_become_floats(tmp_path):
  workdir = write_run(tmp_path, 'a', [dict(eval_line(10, 3.0), eval_loss='nan', grad_norm='inf')])
  (row,) = run_dir.read_metrics(workdir)
  assert np.isnan(row['eval_loss']) and row['grad_norm'] == np.inf


def test_load_sweep_and_final_records(tmp_path):
  write_run(tmp_path, 'small', [eval_line(10, 3.0), eval_line(20, 2.6)], config={'seed': 0})
  resumed = [eval_line(10, 2.8, 4000), {'step': 12, 'train_loss': 2.7}, eval_line(20, 2.4, 4000),
             eval_line(20, 2.3, 4000)]  # a restart logged step 20 again
  write_run(tmp_path, 'big', resumed)
  os.makedirs(tmp_path / 'not_a_run')
  rows = records.load_sweep(str(tmp_path))
  assert [(r['run'], r['step']) for r in rows] == [('big', 10), ('big', 20), ('small', 10),
                                                  ('small', 20)]
  final = records.final_records(rows)
  assert {r['run']: r['eval_loss'] for r in final} == {'big': 2.3, 'small': 2.6}
  np.testing.assert_array_equal(records.column(final, 'params_non_embedding'), [4000, 1000])
  assert run_dir.read_config_dict(str(tmp_path / 'small')) == {'seed': 0}
  assert run_dir.read_config_dict(str(tmp_path / 'big')) == {}


def test_column_names_missing_field_and_reads_structured_arrays():
  with pytest.raises(ValueError, match=r"1 of 2 records have no field 'flops_full'.*row 1"):
    records.column([{'flops_full': 1.0}, {'eval_loss': 2.0}], 'flops_full')
  table = np.array([(1.0, 2.0)], dtype=[('eval_loss', 'f8'), ('step', 'f8')])
  np.testing.assert_array_equal(records.column(table, 'step'), [2.0])


def test_empty_sweep_says_what_is_missing(tmp_path):
  write_run(tmp_path, 'a', [{'step': 1, 'train_loss': 3.0}])
  with pytest.raises(ValueError, match='No eval records'):
    records.load_sweep(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='is not a directory'):
    records.load_sweep(str(tmp_path / 'nope'))
