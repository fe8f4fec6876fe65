"""Approach 3 on a table: points drawn from Chinchilla's published law come back out, with intervals
that hold the truth; the command prints the fit, and every unusable table ends in one line.

Ground truth is Hoffmann et al. 2022, eq. 10: E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from gptjax.cost import chinchilla
from gptjax.scaling import fit_csv, laws, table as scaling_table

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
TRUE = chinchilla.ChinchillaFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
CHINCHILLA_BUDGET = 5.76e23


def write_table(path, noise: float = 0.01, seed: int = 0, outliers: dict | None = None,
                compute: bool = False) -> str:
  """12 model sizes from 44M to 16B parameters (Chinchilla's range), each at 6 token counts from
  2 to 200 tokens per parameter, with multiplicative noise; `outliers` multiplies the loss of the
  given points (0-based) by the given factor. With `compute`, the table has C = 6 N D for D."""
  rng = np.random.default_rng(seed)
  rows = []
  for n in np.geomspace(4.4e7, 1.6e10, 12):
    for d in n * np.geomspace(2, 200, 6):
      loss = float(TRUE.predict(n, d)) * np.exp(rng.normal(0, noise))
      loss *= (outliers or {}).get(len(rows), 1.0)
      rows.append(f'{n:.6g},{6 * n * d if compute else d:.6g},{loss:.6f}')
  header = 'params,flops,loss' if compute else 'params,tokens,loss'
  with open(path, 'w') as f:
    f.write('# drawn from Hoffmann et al. 2022 eq. 10\n' + header + '\n' + '\n'.join(rows) + '\n')
  return str(path)


def test_fit_recovers_the_law_within_its_bootstrap_intervals(tmp_path):
  """1% noise on 72 points: each constant and exponent inside its 95% interval, intervals no wider
  than the data support (E within 0.2, exponents within 0.2, A and B within a factor of 10), and
  Chinchilla's compute-optimal N at its own budget inside the interval of the fitted N_opt."""
  report = fit_csv.fit_table(write_table(tmp_path / 'points.csv'), n_bootstrap=200,
                             compute=[CHINCHILLA_BUDGET])
  assert report['points'] == 72 and report['dropped'] == []
  for name in chinchilla.CHINCHILLA_PARAMS + ('n_exponent', 'd_exponent'):
    lo, hi = report['intervals'][name]
    assert lo <= getattr(TRUE, name) <= hi and lo <= report[name] <= hi, (name, lo, hi)
  for name in ('E', 'alpha', 'beta', 'n_exponent'):
    lo, hi = report['intervals'][name]
    assert hi - lo < 0.2, (name, lo, hi)
  for name in ('A', 'B'):
    lo, hi = report['intervals'][name]
    assert hi / lo < 10, (name, lo, hi)
  (optimal,) = report['compute_optimal']
  n_true, d_true = TRUE.compute_optimal(CHINCHILLA_BUDGET)
  lo, hi = optimal['intervals']['params']
  assert lo < n_true < hi and lo < optimal['params'] < hi
  assert optimal['params'] * optimal['tokens'] * 6 == pytest.approx(CHINCHILLA_BUDGET)
  assert optimal['tokens_per_param'] == pytest.approx(optimal['tokens'] / optimal['params'])
  lo, hi = optimal['intervals']['loss']
  assert lo < float(TRUE.predict(n_true, d_true)) < hi


def test_compute_column_gives_the_same_fit(tmp_path):
  by_tokens = fit_csv.fit_table(write_table(tmp_path / 'd.csv'), n_bootstrap=0)
  by_compute = fit_csv.fit_table(write_table(tmp_path / 'c.csv', compute=True),
                                 compute_column='flops', n_bootstrap=0)
  for name in chinchilla.CHINCHILLA_PARAMS:
    assert by_compute[name] == pytest.approx(by_tokens[name], rel=1e-3), name
  assert by_compute['columns'] == {'params': 'params', 'compute': 'flops', 'loss': 'loss'}
  assert 'D = C / (6 N) from column' in fit_csv.report_lines(by_compute)[0]


def test_drop_highest_loss_drops_the_outliers_and_the_fit_recovers(tmp_path):
  """Three points with 2-3x their loss, above the highest true loss (5.1, the smallest model on 2
  tokens per parameter): dropping the 3 highest losses removes exactly them (file lines 3 + index:
  a comment and a header come first), and the fit is back near the truth."""
  outliers = {5: 2.0, 30: 2.5, 61: 3.0}
  table = scaling_table.read_csv(write_table(tmp_path / 'points.csv', outliers=outliers))
  selection = scaling_table.select(table, drop_highest_loss=3)
  assert [line for line, _ in selection.dropped] == sorted(3 + i for i in outliers)
  assert len(selection.table) == 69
  kept = selection.table
  fit = laws.fit_chinchilla(kept.params, kept.tokens, kept.loss)
  assert fit.alpha == pytest.approx(0.34, abs=0.03) and fit.beta == pytest.approx(0.28, abs=0.03)


def test_params_range_keeps_the_sizes_inside_it(tmp_path):
  table = scaling_table.read_csv(write_table(tmp_path / 'points.csv'))
  selection = scaling_table.select(table, min_params=1e8, max_params=5e9)
  assert np.all((selection.table.params >= 1e8) & (selection.table.params <= 5e9))
  assert len(selection.table) + len(selection.dropped) == 72
  assert len(selection.dropped) == 6 * 5  # 2 sizes below 1e8, 3 above 5e9


def run_cli(*args: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, '-m', 'gptjax.scaling', *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_command_prints_the_fit_and_writes_json(tmp_path):
  out = tmp_path / 'fit.json'
  process = run_cli('fit', f'--csv={write_table(tmp_path / "points.csv")}', '--bootstrap=50',
                    '--drop_highest_loss=1', f'--compute={CHINCHILLA_BUDGET},1e25',
                    f'--json={out}')
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr
  lines = stdout.splitlines()
  assert lines[0].endswith('71 points fitted (N: params, D: tokens, L: loss); 1 dropped:')
  assert lines[1].startswith('  line 3: one of the 1 highest losses')
  assert 'BFGS from the 16 best of 4500 grid points; 95% intervals from 50 bootstrap' in lines[2]
  for name in ('E ', 'A ', 'B ', 'alpha ', 'beta ', 'a = beta/(alpha+beta)',
               'b = alpha/(alpha+beta)'):
    assert any(line.startswith(f'  {name}') for line in lines), name
  assert any(line.startswith('  C=5.76e+23: N=') and 'D/N=' in line for line in lines)
  assert any(line.startswith('  C=1e+25: N=') for line in lines)
  saved = json.loads(out.read_text())
  assert saved['points'] == 71 and saved['bootstrap'] == 50
  assert saved['alpha'] == pytest.approx(0.34, abs=0.05)
  assert f'  {"alpha":<23s} {saved["alpha"]:<10.4g}' in stdout


BAD_TABLES = {
    'missing_column': ('params,tokens,val\n1e8,1e9,3.0\n', "has no column 'loss'",
                       "its columns are ['params', 'tokens', 'val']"),
    'not_a_number': ('params,tokens,loss\n1e8,1e9,3.0\n2e8,lots,2.9\n',
                     "line 3, column 'tokens': 'lots' is not a number"),
    'empty_cell': ('params,tokens,loss\n1e8,,3.0\n', "line 2, column 'tokens' is empty"),
    'short_row': ('params,tokens,loss\n1e8,3.0\n', 'line 2 has 2 cells, the header 3'),
    'negative': ('params,tokens,loss\n1e8,1e9,-3.0\n',
                 "line 2, column 'loss': -3.0 is not a positive finite number"),
    'nan': ('params,tokens,loss\nnan,1e9,3.0\n', "line 2, column 'params': nan is not a positive"),
    'too_few': ('params,tokens,loss\n1e8,1e9,3.0\n2e8,2e9,2.9\n', '2 points left of 2',
                'needs at least 6'),
    'no_header': ('# only a comment\n', 'has no header line'),
    'duplicate_column': ('params,tokens,loss,loss\n1e8,1e9,3.0,2.0\n',
                         "names the column 'loss' 2 times"),
}


@pytest.mark.parametrize('name', sorted(BAD_TABLES))
def test_an_unusable_table_is_a_value_error_naming_the_fix(tmp_path, name):
  """`cli.run` ends any ValueError in one line with status 2 (tests/runs/test_cli.py); the
  command's own paths to it are checked below."""
  text, *expected = BAD_TABLES[name]
  path = tmp_path / 'points.csv'
  path.write_text(text)
  with pytest.raises(ValueError) as raised:
    fit_csv.fit_table(str(path), n_bootstrap=0)
  for part in expected:
    assert part in str(raised.value)


def test_a_binary_file_is_refused_by_name(tmp_path):
  path = tmp_path / 'points.csv'
  path.write_bytes(b'params,tokens,loss\n\xb0\xff\x00\n')
  with pytest.raises(ValueError, match=rf'{path} is not UTF-8 text'):
    fit_csv.fit_table(str(path), n_bootstrap=0)


@pytest.mark.parametrize('options, expected', [
    (dict(level=95.0), 'level=95.0 must lie strictly between 0 and 1'),
    (dict(compute=[-1.0]), 'compute=-1.0 must be a positive FLOP count'),
    (dict(drop_highest_loss=-2), 'drop_highest_loss=-2 must be >= 0'),
    (dict(drop_highest_loss=70), '2 points left of 72 (70 dropped)'),
    (dict(optimizer='Adam'), "method='Adam'; choose one of ('BFGS', 'L-BFGS-B')"),
])
def test_an_unusable_option_is_a_value_error(tmp_path, options, expected):
  with pytest.raises(ValueError, match=re.escape(expected)):
    fit_csv.fit_table(write_table(tmp_path / 'points.csv'), n_bootstrap=0, **options)


def test_unusable_flag_values_and_a_missing_file_are_value_errors(tmp_path):
  with pytest.raises(ValueError, match="--starts=many: pass a count of grid points >= 1, or 'all'"):
    fit_csv.starts_from_flag('many')
  assert fit_csv.starts_from_flag('all') is None and fit_csv.starts_from_flag('8') == 8
  with pytest.raises(ValueError, match='--compute=big,1e25: pass FLOP counts separated by commas'):
    fit_csv.budgets_from_flag(['big', '1e25'])
  with pytest.raises(ValueError, match='none.csv: no such file'):
    fit_csv.fit_table(str(tmp_path / 'none.csv'))


def test_the_command_ends_each_mistake_in_one_line_with_status_2(tmp_path):
  """A table's ValueError, a flag absl refuses, and a missing command, each in its own process."""
  (tmp_path / 'bad.csv').write_text(BAD_TABLES['missing_column'][0])
  cases = dict(
      bad_table=(['fit', f'--csv={tmp_path}/bad.csv'], "its columns are ['params', 'tokens'"),
      no_csv=(['fit'], 'Flag --csv must have a value'),
      no_command=([f'--csv={tmp_path}/bad.csv'],
                  'name a command first, one of'))
  running = {name: run_cli(*args) for name, (args, _) in cases.items()}  # side by side
  for name, process in running.items():
    _, stderr = process.communicate(timeout=300)
    lines = stderr.strip().splitlines()
    assert process.returncode == 2 and len(lines) == 1, (name, process.returncode, stderr)
    program = 'gptjax.scaling' if name == 'no_command' else 'gptjax.scaling fit'
    assert lines[0].startswith(f'{program}: error: '), (name, stderr)
    assert cases[name][1] in lines[0], (name, lines[0])
