"""Evaluating a sweep: records carry the checkpoint's compute, an evaluation killed half-way
resumes without redoing what is recorded, and the curves and table are drawn from the records."""

import json
import os

import jax
import numpy as np
import pytest

from experiments.configs import base
from gptjax.evals import curves, generation, run, scoring, sweep
from gptjax.parallel import sharding
from gptjax.train import loop

TINY = {
    'model.d_model': 16, 'model.num_layers': 1, 'model.num_heads': 2, 'model.max_seq_len': 64,
    'data.seq_len': 64, 'data.batch_size': 8, 'data.max_corpus_bytes': 400_000,
    'train.num_steps': 4, 'train.warmup_steps': 1, 'train.log_every': 2, 'train.eval_every': 4,
    'train.eval_batches': 1, 'train.checkpoint_every': 4, 'train.async_checkpoints': False,
}
TASKS = 'position_loss,induction,add,next_line'


pytestmark = pytest.mark.slow  # three short training runs


@pytest.fixture(scope='module')
def sweep_dir(tmp_path_factory):
  """Two finished members of one design budget (a second seed of the first) and one unfinished."""
  root = tmp_path_factory.mktemp('sweep')
  for name, extra in (('c1e9_d16l1', {}), ('c1e9_d16l1_s1', {'seed': 1}),
                      ('c1e9_d8l1', {'model.d_model': 8})):
    config = base.get_config()
    for key, value in {**TINY, **extra}.items():
      section, _, field = key.rpartition('.')
      (config[section] if section else config)[field] = value
    loop.train_and_evaluate(config, str(root / name))
  metrics = root / 'c1e9_d8l1' / 'metrics.jsonl'  # unfinished: its last evaluation is gone
  lines = metrics.read_text().splitlines()
  metrics.write_text('\n'.join(line for line in lines if 'eval_loss' not in line) + '\n')
  return str(root)


def _lines(member):
  with open(os.path.join(member, run.EVALS_FILE)) as f:
    return f.read().splitlines()


def test_a_killed_sweep_evaluation_resumes_without_redoing_finished_work(sweep_dir, monkeypatch):
  tasks, shots = run.parse_tasks(TASKS), [0, 2]
  members = sweep.finished_members(sweep_dir)
  assert [os.path.basename(m) for m in members] == ['c1e9_d16l1', 'c1e9_d16l1_s1']
  real = run.evaluate_run
  calls = []

  def killed_in_the_second_member(member, *args, **kwargs):
    calls.append(os.path.basename(member))
    if len(calls) == 2:
      original = run.generation.evaluate
      monkeypatch.setattr(run.generation, 'evaluate', lambda *a, **k: (_ for _ in ()).throw(
          KeyboardInterrupt()))
      try:
        return real(member, *args, **kwargs)
      finally:
        monkeypatch.setattr(run.generation, 'evaluate', original)
    return real(member, *args, **kwargs)

  monkeypatch.setattr(run, 'evaluate_run', killed_in_the_second_member)
  with pytest.raises(KeyboardInterrupt):
    sweep.evaluate_sweep(sweep_dir, tasks, shots, examples=8, seed=0)
  first, second = members
  done_first, partial = _lines(first), _lines(second)
  assert len(done_first) == 2 + 2 + 1  # position_loss, induction, add at 0 and 2 shots, next_line
  assert len(partial) == 2  # the context tasks, recorded before the kill
  with open(os.path.join(second, run.EVALS_FILE), 'a') as f:
    f.write('{"task": "cut sh')  # a line the kill cut short

  calls.clear()
  monkeypatch.setattr(run, 'evaluate_run', real)
  sweep.evaluate_sweep(sweep_dir, tasks, shots, examples=8, seed=0)
  assert _lines(first) == done_first  # not loaded, not redone
  finished = [json.loads(line) for line in _lines(second) if line.startswith('{"task": "')
              and line.endswith('}')]
  assert [r['task'] for r in finished] == ['position_loss', 'induction', 'add', 'add',
                                           'next_line']
  assert _lines(second)[:2] == partial


def test_records_carry_the_checkpoints_compute_and_the_table_averages_seeds(sweep_dir, tmp_path):
  members = sweep.evaluate_sweep(sweep_dir, run.parse_tasks(TASKS), [0, 2], examples=8, seed=0)
  rows = curves.final_records(members)
  metrics = [json.loads(line) for line in open(os.path.join(members[0], 'metrics.jsonl'))]
  final = next(r for r in metrics if r['step'] == 4 and 'flops_full' in r)
  for row in (r for r in rows if r['member'] == 'c1e9_d16l1'):
    assert row['step'] == 4 and row['flops_full'] == final['flops_full']
    assert row['params_total'] == final['params_total'] and row['eval_loss'] == final['eval_loss']
  induction = [r for r in rows if r['task'] == 'induction']
  assert len(induction) == 2 and {r['design'] for r in induction} == {'c1e9_d16l1'}
  table = curves.budget_table(rows)
  gains = [r['induction_gain'] for r in induction]
  assert f'induction_gain {sum(gains) / 2:.4f} ± ' in table and '(2 seeds)' in table
  for task in ('induction', 'add', 'next_line'):
    curves.plot_task(rows, task, str(tmp_path / f'{task}.png'))
    assert os.path.getsize(tmp_path / f'{task}.png') > 10_000


def test_a_scorer_split_over_a_mesh_scores_and_decodes_as_one_device(sweep_dir):
  member = sweep.finished_members(sweep_dir)[0]
  on_mesh = scoring.load_scorer(member)
  config = on_mesh.config.copy_and_resolve_references()
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  mesh = sharding.make_mesh(config.mesh)
  split = scoring.Scorer(on_mesh.params, on_mesh.model_cfg, on_mesh.tokenizer, config,
                         on_mesh.step, mesh=mesh, rules=sharding.logical_rules(config.mesh))
  alone = scoring.Scorer(jax.device_get(on_mesh.params), on_mesh.model_cfg, on_mesh.tokenizer,
                         config, on_mesh.step)
  assert on_mesh.mesh.size == 8 and split.batch_size % 4 == 0
  rng = np.random.default_rng(0)
  contexts = [list(rng.integers(1, 256, n)) for n in (3, 20, 50)]
  continuations = [list(rng.integers(1, 256, n)) for n in (4, 2, 9)]
  for scorer in (on_mesh, split):
    np.testing.assert_allclose(scorer.continuation_scores(contexts, continuations)[0],
                               alone.continuation_scores(contexts, continuations)[0], atol=1e-3)
    assert (generation.greedy_continuations(scorer, contexts, 6)
            == generation.greedy_continuations(alone, contexts, 6))
