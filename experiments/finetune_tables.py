"""The fine-tuning study's tables and figure, from its rows (one per run: base, method, size, rate,
seed, trainable parameters, final response loss and exact match).

A cell is a (base, method, size); its runs differ by seed only. Response losses are summarised as
mean ± standard error over seeds (`gptjax.runs.seeds.SeedSummary`). Exact match gets the same, plus
the 95% Wilson interval of all the prompts scored over the seeds pooled: that interval counts
prompt sampling only, the ± the spread between seeds.
"""

from __future__ import annotations

import collections
import os
from typing import Iterable, Sequence

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from experiments import finetune_methods as plan  # noqa: E402
from gptjax.runs import seeds  # noqa: E402

Cell = tuple[str, str, int | None]  # base, method, size


def cells(rows: Iterable[dict]) -> dict[Cell, list[dict]]:
  """Rows grouped by (base, method, size), each group in seed order."""
  grouped = collections.defaultdict(list)
  for row in rows:
    grouped[(row['base'], row['method'], row['size'])].append(row)
  return {cell: sorted(group, key=lambda r: r['seed']) for cell, group in grouped.items()}


def summary(group: Sequence[dict], key: str) -> seeds.SeedSummary:
  return seeds.SeedSummary(tuple(r[key] for r in group), tuple(r['seed'] for r in group))


def format_match(group: Sequence[dict], prompts: int) -> str:
  """'0.480 ± 0.021 [0.445, 0.516]': mean ± standard error over seeds, then the Wilson interval
  of the pooled count over len(group) * prompts prompts."""
  hits = sum(round(r['exact_match'] * prompts) for r in group)
  lo, hi = seeds.binomial_interval(hits, prompts * len(group))
  match = summary(group, 'exact_match')
  return f'{match.mean:.3f} ± {match.sem:.3f} [{lo:.3f}, {hi:.3f}]'


def _label(method: str, size: int | None) -> str:
  return method if size is None else f'{method}{size}'


def format_selection(losses: dict, rates: dict[tuple[str, str], float]) -> str:
  """The rate grid: each (base, method)'s final response loss at every rate, the chosen one
  starred, and a note where it lies on the grid's edge."""
  lines = [f'Rate selection at seed {plan.SELECTION_SEED} (response loss on its validation '
           'prompts; * chosen):']
  for base in plan.BASES:
    for method in plan.methods():
      grid = sorted((m.rate, loss) for m, loss in losses.items()
                    if m.base == base and m.method == method)
      if not grid:
        continue
      chosen = rates[(base, method)]
      cells_ = '  '.join(f'{rate:g}: {loss:.3f}{"*" if rate == chosen else " "}'
                         for rate, loss in grid)
      edge = '  (edge of the grid)' if chosen in (grid[0][0], grid[-1][0]) else ''
      lines.append(f'  {base:<16} {method:<8} {cells_}{edge}')
  return '\n'.join(lines)


def format_table(rows: Sequence[dict], prompts: int) -> str:
  """Per base: the untuned base, then every fine-tune cell over its seeds."""
  grouped = cells(rows)
  count = max(len(g) for g in grouped.values())
  lines = [f'{"run":<26} {"trainable":>9} {"rate":>6} {"response loss":>17} '
           f'{"exact match ± se [95% Wilson]":>30}   ({count} seeds)']
  for base in plan.BASES:
    for method in ('none',) + plan.methods():
      for (b, m, size), group in sorted(grouped.items(), key=lambda item: item[0][2] or 0):
        if (b, m) != (base, method):
          continue
        rate = '-' if method == 'none' else f'{group[0]["rate"]:g}'
        loss = summary(group, 'loss')
        lines.append(f'{base + " " + _label(method, size):<26} {group[0]["trainable"]:>9,} '
                     f'{rate:>6} {loss.mean:>8.3f} ± {loss.sem:.3f} '
                     f'{format_match(group, prompts):>30}')
  return '\n'.join(lines)


def paired_difference(wide: Sequence[dict], narrow: Sequence[dict]) -> seeds.SeedSummary:
  """Wide minus narrow response loss, seed by seed: both bases see the same examples, order and
  validation prompts at one seed, so the pairing removes that part of the noise."""
  by_seed = {r['seed']: r['loss'] for r in narrow}
  pairs = [(r['seed'], r['loss'] - by_seed[r['seed']]) for r in wide if r['seed'] in by_seed]
  return seeds.SeedSummary(tuple(d for _, d in pairs), tuple(s for s, _ in pairs))


def size_comparisons(rows: Sequence[dict]) -> list[dict]:
  """Each method and narrow-base size against the wider base at the same r/a/P and at the size
  scaled to the same trainable count: their trainable counts and the paired loss difference."""
  grouped = cells(rows)
  narrow_base, *wider = plan.BASES
  out = []
  for wide_base in wider:
    scale = plan.BASES[narrow_base] / plan.BASES[wide_base]
    for method in plan.methods():
      for size in plan.sizes(narrow_base, method):
        narrow = grouped.get((narrow_base, method, size))
        for matched, wide_size in (('r/a/P', size),
                                   ('count', None if size is None else round(size * scale))):
          wide = grouped.get((wide_base, method, wide_size))
          if narrow and wide and not (matched == 'count' and size is None):
            out.append({'method': method, 'size': size, 'matched': matched, 'wide_size': wide_size,
                        'narrow': narrow, 'wide': wide,
                        'difference': paired_difference(wide, narrow)})
  return out


def format_size_comparison(rows: Sequence[dict]) -> str:
  narrow_base, *_ = plan.BASES
  lines = [f'Wider base minus {narrow_base}, response loss, paired over seeds '
           '(negative: the wider base is better):',
           f'  {"method":<10} {"matched":<7} {"trainable narrow / wide":>24} '
           f'{"difference ± se":>18} {"95% t interval":>18}']
  for c in size_comparisons(rows):
    lo, hi = c['difference'].interval
    counts = f'{c["narrow"][0]["trainable"]:,} / {c["wide"][0]["trainable"]:,}'
    lines.append(f'  {_label(c["method"], c["size"]):<10} {c["matched"]:<7} {counts:>24} '
                 f'{c["difference"].mean:>+9.3f} ± {c["difference"].sem:.3f} '
                 f'[{lo:+.3f}, {hi:+.3f}]')
  return '\n'.join(lines)


def plot(rows: Sequence[dict], path: str) -> None:
  """Response loss against trainable parameters, one panel per base and a line per method, each
  point its cell's mean with the standard error as the bar."""
  grouped = cells(r for r in rows if r['method'] != 'none')
  bases = [b for b in plan.BASES if any(cell[0] == b for cell in grouped)]
  figure, axes = plt.subplots(1, len(bases), figsize=(5 * len(bases), 4.2), squeeze=False)
  for axis, base in zip(axes[0], bases):
    for method in plan.methods():
      points = sorted(((group[0]['trainable'], summary(group, 'loss'))
                       for (b, m, _), group in grouped.items() if (b, m) == (base, method)),
                      key=lambda point: point[0])
      if points:
        axis.errorbar([p for p, _ in points], [s.mean for _, s in points],
                      yerr=[s.sem for _, s in points], marker='o', capsize=3, label=method)
    axis.set_xscale('log')
    axis.set_yscale('log')
    axis.set_title(f'base {base}')
    axis.set_xlabel('trainable parameters')
    axis.set_ylabel('response loss (nats/token), mean ± se over seeds')
    axis.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  figure.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  figure.savefig(path, dpi=120)
  plt.close(figure)
