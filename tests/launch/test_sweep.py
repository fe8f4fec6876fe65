"""Sweeps: the IsoFLOP design's arithmetic, member checks, dry runs, skip/resume/failure handling of
the runner (with a fake trainer), its --commands, --fit_only and --compute_key flags, the
fit-and-plot stage on synthetic records, and one real member.

The fake trainer is a few lines of Python that write the records a finished (or half-finished) run
would, so the runner's bookkeeping is tested in seconds; the one real member proves the command the
runner builds actually trains with `gptjax.main`.
"""

import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap

import faults
import numpy as np
import synthetic
import pytest

import launch
from gptjax.cost import flops
from gptjax.model.config import GPTConfig
from gptjax.runs import run_dir
from gptjax.scaling import records, report
from launch import local, status, sweep as runner

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
CPU_SWEEP = os.path.join(ROOT, 'experiments', 'sweeps', 'cpu_scaling.py')
TPU_SWEEP = os.path.join(ROOT, 'experiments', 'sweeps', 'tpu_scaling.py')


@pytest.fixture(scope='module')
def cpu_sweep():
  return launch.load_sweep_file(CPU_SWEEP)


# ---------------------------------------------------------------- design


@pytest.mark.parametrize('path', [CPU_SWEEP, TPU_SWEEP])
def test_isoflop_members_spend_their_budget(path):
  """Each member spends its budget (FLOPs spent, total N) within half a step, so one budget's
  members agree within 10%; Kaplan's C of the same run is 6ND plus the attention term, less than
  what it spends (the readout)."""
  base, members = launch.load_sweep_file(path)
  tokens_per_step = base.data.batch_size * base.data.seq_len
  budgets = {m.budget for m in members}
  assert len(budgets) >= 3 and max(budgets) / min(budgets) >= 10
  for member in members:
    config = launch.resolve(base, member)
    plan = launch.plan(config)
    cfg = GPTConfig.from_run_config(config)
    counts, d, t = flops.param_counts(cfg), plan.tokens, config.data.seq_len
    assert plan.params == counts.total and plan.tokens == plan.steps * tokens_per_step
    assert abs(plan.flops - member.budget) <= plan.flops_per_token * tokens_per_step / 2
    kaplan = launch.plan(config, 'kaplan')
    n = counts.non_embedding
    assert kaplan.params == n and kaplan.tokens == d
    assert kaplan.flops == pytest.approx(6 * n * d + 6 * cfg.num_layers * t * cfg.d_model * d)
    assert kaplan.flops < plan.flops
    assert config.train.warmup_steps < config.train.num_steps
  for budget in budgets:  # several sizes per budget, each trained on fewer tokens as it grows
    plans = {p.params: p for p in (launch.plan(launch.resolve(base, m)) for m in members
                                   if m.budget == budget)}
    group = [plans[n] for n in sorted(plans)]
    assert len(group) >= 4
    assert all(a.tokens > b.tokens for a, b in zip(group, group[1:]))
    spent = [p.flops for p in group]
    assert max(spent) / min(spent) <= 1.1


def test_extra_seeds_are_replicas_of_their_member(cpu_sweep):
  """A size with seeds=2 adds `<member>_s1`: the same config but for the seed."""
  base, members = cpu_sweep
  by_name = {m.name: m for m in members}
  replicas = [m for m in members if m.name.endswith('_s1')]
  assert len({m.budget for m in replicas}) == 5 and len(replicas) == 10
  for replica in replicas:
    first = launch.resolve(base, by_name[replica.name.removesuffix('_s1')])
    second = launch.resolve(base, replica)
    assert second.seed == first.seed + 1
    second.seed = first.seed
    assert second.to_dict() == first.to_dict()
  with pytest.raises(ValueError, match="'c1e11_d16l2': seeds=0 must be at least 1"):
    launch.isoflop_members(base, {1e11: [launch.Size(16, 2, 2, 1e-3, seeds=0)]})


@pytest.mark.parametrize('num_steps', [7, 50, 99, 100, 101, 761, 2417])
def test_schedule_overrides_put_the_last_eval_on_the_last_step(num_steps):
  o = launch.schedule_overrides(num_steps, warmup_fraction=0.05, num_evals=4, checkpoints=2,
                                log_lines=8)
  evals = [s for s in range(1, num_steps + 1) if s % o['train.eval_every'] == 0 or s == num_steps]
  assert evals[-1] == num_steps and len(evals) == min(4, num_steps)
  assert o['train.eval_every'] % o['train.log_every'] == 0  # evals land on log lines
  assert o['train.checkpoint_every'] % o['train.eval_every'] == 0
  assert 1 <= o['train.warmup_steps'] < num_steps


def _base():
  base, _ = launch.load_sweep_file(CPU_SWEEP)
  return base


def test_design_errors_name_the_member_and_the_fix():
  base = _base()
  with pytest.raises(ValueError, match=r"c1e11_d512l8'.*fewer than min_steps=50.*Drop this size"):
    launch.isoflop_members(base, {1e11: [launch.Size(512, 8, 8, 1e-3)]})
  with pytest.raises(ValueError, match=r"c1e12_d30l2'.*d_model=30 is not divisible by num_heads=4"):
    launch.isoflop_members(base, {1e12: [launch.Size(30, 2, 4, 1e-3)]})
  with pytest.raises(ValueError, match=r"no 'dmodel' in model\. Did you mean 'model\.d_model'"):
    launch.resolve(base, launch.Member('m', {'model.dmodel': 8}))
  with pytest.raises(ValueError, match=r"'mesh.rules'.*must be bool, int, float or str"):
    launch.resolve(base, launch.Member('m', {'mesh.rules': (('batch', 'data'),)}))
  with pytest.raises(ValueError, match=r"Member 'm': data.seq_len=256 exceeds model.max_seq_len"):
    launch.resolve(base, launch.Member('m', {'data.seq_len': 256}))
  with pytest.raises(ValueError, match=r"Member 'm': train.warmup_steps=9 must be in \[0, num"):
    launch.resolve(base, launch.Member('m', {'train.num_steps': 9, 'train.warmup_steps': 9}))
  member = launch.Member('a', {})
  with pytest.raises(ValueError, match="Two members are named 'a'"):
    launch.check_members(base, [member, member])
  with pytest.raises(ValueError, match="'plots' is reserved"):
    launch.check_members(base, [launch.Member('plots', {})])


TRAINING_STACK = ('gptjax.train.loop', 'gptjax.train.steps', 'gptjax.train.checkpointing',
                  'gptjax.data', 'gptjax.parallel')


def test_planning_a_sweep_imports_no_training_stack():
  """The runner resolves, plans and fits a sweep; only its members' processes train."""
  code = ('import json, sys, launch, launch.sweep, gptjax.scaling.report, gptjax.scaling.plots\n'
          'base, members = launch.load_sweep_file(sys.argv[1])\n'
          'launch.plan(launch.resolve(base, members[0]))\n'
          "print(json.dumps(sorted(m for m in sys.modules if m.startswith('gptjax.'))))")
  result = subprocess.run([sys.executable, '-c', code, CPU_SWEEP], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  loaded = json.loads(result.stdout)
  # The check sees real imports.
  assert 'gptjax.cost.flops' in loaded and 'gptjax.scaling.plots' in loaded
  assert not set(TRAINING_STACK) & set(loaded), loaded


def test_resolve_leaves_the_base_untouched(cpu_sweep):
  base, members = cpu_sweep
  before = base.to_json_best_effort()
  config = launch.resolve(base, members[-1])
  assert base.to_json_best_effort() == before
  assert config.model.d_model == members[-1].overrides['model.d_model']


@pytest.mark.filterwarnings('ignore:the load_module')  # ml_collections' own config loader
def test_members_start_largest_budget_first_and_replicas_after_their_twins(cpu_sweep):
  base, members = cpu_sweep
  jobs = []
  for member in members:
    config = launch.resolve(base, member)
    jobs.append(local.Job(member, config, launch.plan(config), member.name, start_step=0))
  order = [job.member.name for job in sorted(jobs, key=local._start_order)]
  largest = max(member.budget for member in members)
  longest = max((job for job in jobs if job.member.budget == largest),
                key=lambda job: job.plan.steps)
  assert order[0] == longest.member.name == 'c6e11_d16l2'  # the most steps of the largest budget
  position = {name: i for i, name in enumerate(order)}
  for name in order:
    if name.endswith('_s1'):
      twin = name.removesuffix('_s1')
      same_budget = [n for n in order if n.split('_')[0] == name.split('_')[0]]
      assert position[name] > max(position[n] for n in same_budget if not n.endswith('_s1'))
      assert position[twin] < position[name]
  flops = [job.plan.flops for job in sorted(jobs, key=local._start_order)]
  assert flops == sorted(flops, key=lambda f: -float(f'{f:.1g}'))


def test_member_command_reproduces_the_member_config(cpu_sweep):
  """The flags the runner passes rebuild, in gptjax.main's own flag parser, the member's config."""
  from absl import flags
  from ml_collections import config_flags
  base, members = cpu_sweep
  member = members[0]
  argv = local.member_command(CPU_SWEEP, member, 'unused')[2:]  # after `python -m`
  argv = ['gptjax.main'] + [a for a in argv[1:] if not a.startswith('--workdir')]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=values, sys_argv=argv, lock_config=True)
  values(argv)
  expected = launch.resolve(base, member)
  as_dict = lambda config: json.loads(config.to_json_best_effort())  # noqa: E731
  assert as_dict(values.config) == as_dict(expected)


# ---------------------------------------------------------------- runner, with a fake trainer

FAKE_TRAINER = textwrap.dedent('''
    """Writes the records of a run of num_steps; 'fail' prints a traceback and exits 1 instead;
    'slow' waits for SIGTERM and exits, as a real member does once it has saved a checkpoint."""
    import json, os, signal, sys, time
    from gptjax.runs import run_dir
    workdir, num_steps, d_model, mode, calls = sys.argv[1:]
    num_steps, d_model = int(num_steps), int(d_model)
    with open(calls, 'a') as f:
      f.write(os.path.basename(workdir) + '\\n')
    if mode == 'slow':
      def stop(signum, frame):
        with open(os.path.join(workdir, 'stopped'), 'w') as f:
          f.write(signal.Signals(signum).name)
        sys.exit(0)
      signal.signal(signal.SIGTERM, stop)
      open(os.path.join(workdir, 'ready'), 'w').close()
      time.sleep(60)
      sys.exit(3)
    if mode == 'pause' and not os.path.exists(os.path.join(workdir, 'paused')):
      os.makedirs(workdir, exist_ok=True)  # preempted once: saved, then exited "resume me"
      open(os.path.join(workdir, 'paused'), 'w').close()
      print('gptjax.main: error: Stopped at step 4 after saving a checkpoint; rerun the same '
            'command to resume.', flush=True)
      sys.exit(75)
    if mode == 'drift':  # a config that no longer matches the sweep file's, as after an edit
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, run_dir.CONFIG_FILE), 'w') as f:
        json.dump({'train': {'learning_rate': 0.5}}, f)
      sys.exit(0)
    if mode == 'fail':
      print('Traceback (most recent call last):\\nFloatingPointError: The training loss became '
            'nan at step 3.', flush=True)
      sys.exit(1)
    os.makedirs(workdir, exist_ok=True)
    n = 12 * d_model ** 2
    with open(os.path.join(workdir, run_dir.METRICS_FILE), 'a') as f:
      for step in (num_steps // 2, num_steps):
        d = step * 1000
        f.write(json.dumps({'step': step, 'tokens_seen': d, 'flops_kaplan': 6.0 * n * d,
                            'params_non_embedding': n, 'flops_full': 9.0 * n * d,
                            'params_total': n + 512 * d_model, 'train_loss': 2.0,
                            'eval_loss': 1.0 + 30 / n ** 0.3 + 40 / d ** 0.3}) + '\\n')
        print(f'I0 train.py:1] step {step}/{num_steps} | loss 2.0000 | eval 2.0 | 1 tok/s | '
              '1 ms/step | ETA 0m00s', flush=True)
''')

TINY_SWEEP = textwrap.dedent('''
    import launch
    from experiments.configs import base as base_config

    def get_sweep():
      config = base_config.get_config()
      config.model.update(d_model=16, num_layers=1, num_heads=2, max_seq_len=16)
      config.data.update(seq_len=16, batch_size=2, max_corpus_bytes=60_000)
      config.train.update(warmup_steps=1, log_every=2, eval_every=4, eval_batches=2,
                          checkpoint_every=4, async_checkpoints=False)
      members = [launch.Member(name, {'model.d_model': d, 'train.num_steps': steps})
                 for name, d, steps in MEMBERS]
      return config, members

    MEMBERS = %s
''')


def _write_sweep(tmp_path, members) -> str:
  path = tmp_path / 'tiny_sweep.py'
  path.write_text(TINY_SWEEP % repr(members))
  return str(path)


def _fake_records(workdir, name, steps, d_model, final=True):
  os.makedirs(os.path.join(workdir, name), exist_ok=True)
  last = steps if final else steps // 2
  with open(os.path.join(workdir, name, run_dir.METRICS_FILE), 'w') as f:
    f.write(json.dumps({'step': last, 'tokens_seen': last * 1000, 'eval_loss': 2.5,
                        'flops_kaplan': 1e9, 'params_non_embedding': 12 * d_model**2,
                        'flops_full': 2e9, 'params_total': 12 * d_model**2 + 512 * d_model})
            + '\n')


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
  """Replaces gptjax.main by the fake; returns the file listing the members it was started for."""
  script, calls = tmp_path / 'fake_trainer.py', tmp_path / 'calls.txt'
  script.write_text(FAKE_TRAINER)
  calls.write_text('')

  def command(sweep_path, member, member_dir):
    del sweep_path
    mode = next((m for m in ('fail', 'slow', 'drift', 'pause') if member.name.startswith(m)),
                'ok')
    return [sys.executable, str(script), member_dir, str(member.overrides['train.num_steps']),
            str(member.overrides['model.d_model']), mode, str(calls)]

  monkeypatch.setattr(local, 'member_command', command)
  monkeypatch.setattr(local, '_POLL_S', 0.05)
  monkeypatch.setattr(local, 'measure_peak', lambda env: None)  # a real one imports JAX: 5 s
  return calls


def test_a_member_stopped_to_resume_is_started_again_and_finishes(tmp_path, fake_trainer, capsys):
  """Exit status 75 (stopped by a signal after saving) is "resume me", not a failure."""
  sweep = _write_sweep(tmp_path, [('paused', 16, 8)])
  workdir = str(tmp_path / 'runs')
  assert runner.run_sweep(sweep, workdir, n_bootstrap=2) == 0
  out = capsys.readouterr().out
  assert fake_trainer.read_text().split() == ['paused', 'paused']
  assert 'paused was stopped after saving a checkpoint (status 75); resuming it' in out
  assert 'finished paused: eval_loss' in out and 'FAILED' not in out


def test_runner_skips_finished_resumes_unfinished_and_reports_failures(tmp_path, fake_trainer,
                                                                       capsys):
  sweep = _write_sweep(tmp_path, [('done', 16, 8), ('half', 16, 8), ('new', 32, 8),
                                  ('failing', 32, 8)])
  workdir = str(tmp_path / 'runs')
  _fake_records(workdir, 'done', 8, 16)
  _fake_records(workdir, 'half', 8, 16, final=False)

  assert runner.run_sweep(sweep, workdir, parallel=2, n_bootstrap=2) == 1
  out = capsys.readouterr().out
  assert sorted(fake_trainer.read_text().split()) == ['failing', 'half', 'new']
  assert '1 of 4 members already finished; training 3, 2 at a time.' in out
  assert 'half: step 8/8' in out and 'finished new: eval_loss' in out
  assert 'FAILED failing: exited with status 1' in out
  assert 'FloatingPointError: The training loss became nan' in out  # the log's tail
  assert 'failing: exited with status 1' in out.split('failed and are left out of the fits')[-1]
  assert 'No isoflop fit: IsoFLOP fit needs at least 2 compute budgets' in out  # no traceback
  assert 'FloatingPointError' in open(os.path.join(workdir, 'failing', 'log.txt')).read()

  fake_trainer.write_text('')
  assert runner.run_sweep(sweep, workdir, n_bootstrap=2) == 1
  assert fake_trainer.read_text().split() == ['failing']  # only the failed member runs again
  statuses = {name: status.member_status(os.path.join(workdir, name), config).state
              for name, config in _configs(sweep).items()}
  assert statuses == {'done': 'finished', 'half': 'finished', 'new': 'finished', 'failing': 'new'}


def test_a_member_whose_workdir_changed_under_it_is_reported_as_such(tmp_path, fake_trainer,
                                                                     capsys):
  sweep = _write_sweep(tmp_path, [('drift', 16, 8)])
  assert runner.run_sweep(sweep, str(tmp_path / 'runs'), n_bootstrap=2) == 1
  out = capsys.readouterr().out
  assert 'FAILED drift: exited without an error, but its workdir is now stale (data.' in out


def test_ctrl_c_stops_running_members_with_sigterm(tmp_path, fake_trainer, monkeypatch, capsys):
  """SIGTERM, not SIGINT: gptjax's train loop saves a checkpoint on SIGTERM before it exits."""
  sweep = _write_sweep(tmp_path, [('slow', 16, 8), ('never', 16, 8)])
  workdir = str(tmp_path / 'runs')
  progress = local._progress

  def interrupt_when_ready(job, board):
    progress(job, board)
    if os.path.exists(os.path.join(job.directory, 'ready')):
      raise KeyboardInterrupt

  monkeypatch.setattr(local, '_progress', interrupt_when_ready)
  assert runner.run_sweep(sweep, workdir) == 130
  with open(os.path.join(workdir, 'slow', 'stopped')) as f:
    assert f.read() == 'SIGTERM'
  assert fake_trainer.read_text().split() == ['slow']
  assert 'Interrupted: stopping 1 running member(s)' in capsys.readouterr().out


def _configs(sweep):
  base, members = launch.load_sweep_file(sweep)
  return {m.name: launch.resolve(base, m) for m in members}


def test_stale_member_is_neither_resumed_nor_fitted(tmp_path, fake_trainer, capsys):
  sweep = _write_sweep(tmp_path, [('a', 16, 8)])
  workdir = str(tmp_path / 'runs')
  config = _configs(sweep)['a']
  saved = json.loads(config.to_json_best_effort())
  saved['train']['learning_rate'] = 0.5
  saved['train']['log_every'] = 999  # reporting fields never make a member stale
  os.makedirs(os.path.join(workdir, 'a'))
  with open(os.path.join(workdir, 'a', run_dir.CONFIG_FILE), 'w') as f:
    json.dump(saved, f)
  stale = status.member_status(os.path.join(workdir, 'a'), config)
  assert stale.state == 'stale' and stale.detail == 'train.learning_rate: 0.5 -> 0.001'
  assert runner.run_sweep(sweep, workdir) == 1
  assert fake_trainer.read_text() == ''
  out = capsys.readouterr().out
  assert 'its workdir is stale (train.learning_rate: 0.5 -> 0.001); delete' in out


def test_a_member_another_process_trains_is_left_to_it(tmp_path, fake_trainer, capsys):
  sweep = _write_sweep(tmp_path, [('busy', 16, 8), ('free', 16, 8)])
  workdir = str(tmp_path / 'runs')
  holder = faults.hold_workdir(os.path.join(workdir, 'busy'))
  try:
    busy = status.member_status(os.path.join(workdir, 'busy'), _configs(sweep)['busy'])
    assert busy.state == 'running' and f'PID {holder.pid} on host ' in busy.detail
    assert runner.run_sweep(sweep, workdir, n_bootstrap=2) == 0
    assert fake_trainer.read_text().split() == ['free']  # no duplicate of the running member
    out = capsys.readouterr().out
    assert '1 member(s) are being trained by another process' in out
    assert f'busy: by PID {holder.pid} on host' in out
    assert 'not trained to the end yet, left out of the fits: busy' in out
  finally:
    holder.send_signal(signal.SIGKILL)  # a killed holder gives the workdir back
    holder.wait()
  assert status.member_status(os.path.join(workdir, 'busy'), _configs(sweep)['busy']).state == 'new'
  assert runner.run_sweep(sweep, workdir, n_bootstrap=2) == 0
  assert fake_trainer.read_text().split() == ['free', 'busy']


def test_a_member_with_unreadable_files_is_reported_and_the_others_run(tmp_path, fake_trainer,
                                                                       capsys):
  sweep = _write_sweep(tmp_path, [('binary', 16, 8), ('garbled', 16, 8), ('fine', 32, 8)])
  workdir = str(tmp_path / 'runs')
  configs = _configs(sweep)
  for name in ('binary', 'garbled'):
    os.makedirs(os.path.join(workdir, name))
    with open(os.path.join(workdir, name, run_dir.CONFIG_FILE), 'w') as f:
      f.write(configs[name].to_json_best_effort())
  with open(os.path.join(workdir, 'binary', run_dir.METRICS_FILE), 'wb') as f:
    f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  with open(os.path.join(workdir, 'garbled', run_dir.CONFIG_FILE), 'r+b') as f:
    f.write(b'\xff\xfe{{')
  assert runner.run_sweep(sweep, workdir, dry_run=True) == 0
  table = capsys.readouterr().out
  assert 'broken' in table and run_dir.METRICS_FILE in table and run_dir.CONFIG_FILE in table
  assert runner.run_sweep(sweep, workdir, n_bootstrap=2) == 1
  assert fake_trainer.read_text().split() == ['fine']
  failed = capsys.readouterr().out.split('failed and are left out of the fits')[-1]
  assert f'binary: {os.path.join(workdir, "binary", run_dir.METRICS_FILE)}:' in failed
  assert f'garbled: {os.path.join(workdir, "garbled", run_dir.CONFIG_FILE)} is not a readable' in failed


def test_dry_run_lists_members_and_runs_nothing(tmp_path, cpu_sweep, capsys):
  workdir = tmp_path / 'runs'
  assert runner.run_sweep(CPU_SWEEP, str(workdir), dry_run=True) == 0
  lines = capsys.readouterr().out.splitlines()
  base, members = cpu_sweep
  assert lines[0].split()[:4] == ['member', 'd_model', 'layers', 'heads']
  for member, line in zip(members, lines[1:]):
    plan = launch.plan(launch.resolve(base, member))
    fields = line.split()
    assert fields[0] == member.name and fields[-1] == 'new'
    assert fields[1:8] == [str(plan.d_model), str(plan.num_layers), str(plan.num_heads),
                           f'{plan.params:,}', f'{plan.tokens:,}', str(plan.steps),
                           f'{plan.learning_rate:.2g}']
  assert lines[len(members) + 1].startswith(f'{len(members)} members, ')
  assert not workdir.exists()


def _sweep_cli(*flags: str) -> subprocess.CompletedProcess:
  """`python -m launch.sweep` run from the repository root, as the README shows it."""
  return subprocess.run([sys.executable, '-m', 'launch.sweep', *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_commands_flag_prints_each_unfinished_members_command(tmp_path):
  """One `python -m gptjax.main` line per new or partial member, in sweep order, and nothing else:
  launchers split these lines by position, so the whole text is pinned."""
  sweep = _write_sweep(tmp_path, [('a', 16, 8), ('done', 32, 8), ('half', 32, 6)])
  workdir = tmp_path / 'runs'
  _fake_records(str(workdir), 'done', 8, 32)
  _fake_records(str(workdir), 'half', 6, 32, final=False)
  result = _sweep_cli(f'--sweep={sweep}', f'--workdir={workdir}', '--commands')
  assert result.returncode == 0, result.stderr
  assert result.stdout == (
      f'python -m gptjax.main --config=launch/__init__.py:{sweep} --workdir={workdir}/a '
      '--config.model.d_model=16 --config.train.num_steps=8\n'
      f'python -m gptjax.main --config=launch/__init__.py:{sweep} --workdir={workdir}/half '
      '--config.model.d_model=32 --config.train.num_steps=6\n')
  assert sorted(os.listdir(workdir)) == ['done', 'half']  # nothing started


def test_only_and_bad_flags_are_clear(tmp_path, fake_trainer, capsys):
  sweep = _write_sweep(tmp_path, [('a', 16, 8), ('b', 16, 8)])
  with pytest.raises(ValueError, match=r"--only names \['c'\].*its members: \['a', 'b'\]"):
    runner.run_sweep(sweep, str(tmp_path / 'runs'), only=['c'])
  assert runner.run_sweep(sweep, str(tmp_path / 'runs'), only=['b'], n_bootstrap=2) == 0
  assert fake_trainer.read_text().split() == ['b']
  assert 'not trained to the end yet, left out of the fits: a.' in capsys.readouterr().out
  with pytest.raises(FileNotFoundError, match='Sweep file'):
    runner.run_sweep(str(tmp_path / 'missing.py'), str(tmp_path))


# ---------------------------------------------------------------- fits and figures


def _synthetic_sweep(workdir, budgets=synthetic.BUDGETS, unfinished=()):
  """An IsoFLOP grid from a known L(N, D) whose compute is not 6ND (`synthetic`), noise-free, 4
  evals per run (2 for the `unfinished`); returns the member names."""
  finals = synthetic.isoflop_sweep(noise=0.0, budgets=budgets)
  for row in synthetic.training_curves(finals):
    if row['run'] in unfinished and row['step'] > 200:
      continue
    os.makedirs(os.path.join(workdir, row['run']), exist_ok=True)
    with open(os.path.join(workdir, row['run'], run_dir.METRICS_FILE), 'a') as f:
      f.write(json.dumps({k: v for k, v in row.items() if k not in ('run', 'budget')}) + '\n')
  return [row['run'] for row in finals]


def test_fit_and_report_recovers_a_known_law(tmp_path, capsys):
  """Exact data drawn from the law passes every printed check, and every derived number solves
  the sweep's own C(N, D) (16-50% away from C = 6ND here): D_opt, the allocation, the holdout."""
  workdir = str(tmp_path)
  names = _synthetic_sweep(workdir)
  summary = report.fit_and_report(workdir, names, n_bootstrap=3)
  out = capsys.readouterr().out
  budgets = synthetic.BUDGETS
  truth = np.array([synthetic.true_optimum(c) for c in budgets])
  a_true = np.polyfit(np.log(budgets), np.log(truth[:, 0]), 1)[0]
  assert summary['isoflop']['n_exponent'] == pytest.approx(a_true, abs=0.02)
  np.testing.assert_allclose(summary['isoflop']['d_opt'], truth[:, 1], rtol=0.1)
  assert summary['chinchilla']['alpha'] == pytest.approx(synthetic.TRUE.alpha, abs=0.01)
  assert summary['chinchilla']['beta'] == pytest.approx(synthetic.TRUE.beta, abs=0.01)
  assert abs(summary['holdout']['max_run_relative_error']) < 0.01
  assert summary['holdout']['check']['passed']
  assert summary['exponent_check']['agree']
  assert [row['compute'] for row in summary['allocation']] == pytest.approx(
      [1e20, 1e21, 1e22], rel=0.02)
  for row, rtol in zip(summary['allocation'], (0.01, 0.05, 0.05)):
    # Against the optimum of the generating law; past the largest size trained, the records'
    # C(N, D) is extended along its last segment, so 10x and 100x are approximate.
    n_true, d_true = synthetic.true_optimum(row['compute'])
    assert row['chinchilla_n_opt'] == pytest.approx(n_true, rel=rtol)
    assert row['chinchilla_d_opt'] == pytest.approx(d_true, rel=rtol)
    assert row['isoflop_n_opt'] == pytest.approx(n_true, rel=0.1)
    assert row['isoflop_d_opt'] == pytest.approx(d_true, rel=0.1)
  for text in ('L(C) on the frontier of finished runs', 'N_opt ∝ C^', 'L(N, D) (approach 3',
               'Holdout', '(100x)', 'Seed noise: not measured (one seed per size and',
               'No envelope fit: The envelope needs at least 2 model sizes each trained at 2+',
               'total parameters, FLOPs spent; D: tokens_seen',
               '  total parameters, FLOPs spent: approach 2 ',
               "  non-embedding parameters, Kaplan's C: approach 2 "):
    assert text in out  # no size is shared between budgets here, so approach 1 has nothing
  assert 'Exponent a of N_opt ∝ C^a: approach 2' in out
  assert 'outside the sizes trained' not in out
  for figure in ('loss_vs_compute', 'training_curves', 'isoflops', 'n_opt'):
    assert os.path.exists(os.path.join(workdir, 'plots', f'{figure}.png'))
  with open(os.path.join(workdir, 'fit', 'fit.json')) as f:
    saved = json.load(f)
  assert saved['isoflop']['n_exponent'] == pytest.approx(summary['isoflop']['n_exponent'])
  assert set(saved['accountings']) == {'full', 'kaplan'}
  assert saved['accountings']['full']['isoflop'][0] == pytest.approx(
      summary['isoflop']['n_exponent'])
  assert saved['accountings']['kaplan']['isoflop'][0] > summary['isoflop']['n_exponent']


def test_fit_leaves_out_unfinished_members_and_explains_missing_fits(tmp_path, capsys):
  workdir = str(tmp_path)
  half = synthetic.isoflop_sweep(budgets=(1e18,))[2]['run']
  names = _synthetic_sweep(workdir, budgets=(1e18,), unfinished={half})
  finished = [n for n in names if n != half]
  report.fit_and_report(workdir, finished, n_bootstrap=2)
  out = capsys.readouterr().out
  assert sorted(os.listdir(os.path.join(workdir, 'fit', 'records'))) == sorted(finished)
  assert 'No isoflop fit: IsoFLOP fit needs at least 2 compute budgets' in out
  assert 'No holdout fit: Holding out one budget needs at least 3 budgets' in out
  assert 'Figures: ' in out  # loss-vs-compute and training curves still drawn
  report.fit_and_report(workdir, [], n_bootstrap=2)
  assert 'No finished members: nothing to fit yet.' in capsys.readouterr().out


def test_fit_only_fits_the_records_on_disk_and_starts_no_member(tmp_path, fake_trainer, capsys):
  workdir = str(tmp_path / 'runs')
  names = _synthetic_sweep(workdir, budgets=(1e18,))
  _fake_records(workdir, 'half', 8, 16, final=False)
  sweep = _write_sweep(tmp_path, [(name, 16, 4) for name in names] + [('new', 16, 8),
                                                                       ('half', 16, 8)])
  assert runner.run_sweep(sweep, workdir, fit_only=True, n_bootstrap=2) == 0
  out = capsys.readouterr().out
  assert fake_trainer.read_text() == ''
  assert not os.path.exists(os.path.join(workdir, 'new'))
  assert not os.path.exists(os.path.join(workdir, 'half', local.LOG_FILE))
  assert '2 member(s) not trained to the end yet, left out of the fits: new, half.' in out
  with open(os.path.join(workdir, 'fit', 'fit.json')) as f:
    summary = json.load(f)
  assert summary['members'] == names and 'chinchilla' in summary
  assert 'No power_law fit: L(C) = E + A*C^-alpha has 3 parameters; got 1 points' in out
  assert (summary['compute_key'], summary['params_key']) == ('flops_full', 'params_total')
  assert len(summary['allocation']) == 3
  for figure in ('loss_vs_compute', 'training_curves'):  # one budget: no IsoFLOP figures
    assert os.path.exists(os.path.join(workdir, 'plots', f'{figure}.png'))


@pytest.mark.slow
def test_compute_key_flag_fits_the_named_compute_and_params_columns(tmp_path):
  """--compute_key=flops_kaplan fits Kaplan's C and non-embedding N of the same runs, grouped by
  their design budgets although Kaplan's C spreads one budget's members over more than 10%."""
  workdir = str(tmp_path / 'runs')
  names = _synthetic_sweep(workdir, budgets=synthetic.BUDGETS[:2])
  sweep = _write_sweep(tmp_path, [(name, 16, 4) for name in names])
  result = _sweep_cli(f'--sweep={sweep}', f'--workdir={workdir}', '--fit_only',
                      '--compute_key=flops_kaplan', '--n_bootstrap=1')
  assert result.returncode == 0, result.stderr
  assert "(C: flops_kaplan, N: params_non_embedding = non-embedding parameters, Kaplan's C;" in (
      result.stdout)
  with open(os.path.join(workdir, 'fit', 'fit.json')) as f:
    summary = json.load(f)
  assert (summary['compute_key'], summary['params_key']) == ('flops_kaplan', 'params_non_embedding')
  rows = records.final_records(records.load_sweep(os.path.join(workdir, 'fit', 'records')))
  for budget, fitted in zip(synthetic.BUDGETS[:2], summary['isoflop']['budgets']):
    kaplan_c = [row['flops_kaplan'] for row in rows if row['budget'] == budget]
    assert max(kaplan_c) / min(kaplan_c) > 1.1
    assert fitted == pytest.approx(np.exp(np.mean(np.log(kaplan_c))))
  for figure in ('loss_vs_compute', 'training_curves', 'isoflops', 'n_opt'):
    assert os.path.exists(os.path.join(workdir, 'plots', f'{figure}.png'))


def test_any_combination_of_compute_and_params_keys_fits(tmp_path, fake_trainer, capsys):
  """FLOPs spent against non-embedding N (a step of the reconciliation study) fits like any
  accounting; a mixed pair names no accounting, so no second view is printed."""
  workdir = str(tmp_path / 'runs')
  names = _synthetic_sweep(workdir, budgets=synthetic.BUDGETS[:3])
  sweep = _write_sweep(tmp_path, [(name, 16, 4) for name in names])
  assert runner.run_sweep(sweep, workdir, fit_only=True, compute_key='flops_full',
                          params_key='params_non_embedding', n_bootstrap=2) == 0
  out = capsys.readouterr().out
  assert '(C: flops_full, N: params_non_embedding; D: tokens_seen' in out
  assert 'The same runs in both accountings' not in out
  with open(os.path.join(workdir, 'fit', 'fit.json')) as f:
    summary = json.load(f)
  assert (summary['compute_key'], summary['params_key']) == ('flops_full', 'params_non_embedding')
  assert summary['accountings'] == {}
  with pytest.raises(ValueError, match='--params_key=params; use params_total or'):
    runner.run_sweep(sweep, workdir, fit_only=True, params_key='params')


# ---------------------------------------------------------------- one real member


@pytest.mark.slow
def test_one_real_member_trains_and_is_then_skipped(tmp_path, monkeypatch, capsys):
  monkeypatch.delenv('XLA_FLAGS', raising=False)  # one CPU device, as a user's shell has
  sweep = _write_sweep(tmp_path, [('real', 16, 4)])
  workdir = str(tmp_path / 'runs')
  assert runner.run_sweep(sweep, workdir, n_bootstrap=2) == 0
  out = capsys.readouterr().out
  assert 'real: step 4/4' in out and 'finished real: eval_loss' in out
  throughput = re.search(r'Throughput: (\S+) model FLOPs \(full count\) of 1 member\(s\) in .* '
                         r'([\d.]+)% of the ([\d,.]+) GFLOP/s matmul peak measured', out)
  assert throughput, out
  config = _configs(sweep)['real']
  per_token = flops.flops_per_token(GPTConfig.from_run_config(config), config.data.seq_len, 'full')
  tokens = config.train.num_steps * config.data.batch_size * config.data.seq_len
  assert float(throughput.group(1)) == pytest.approx(per_token * tokens, rel=1e-2)  # 3 digits
  assert 0 <= float(throughput.group(2)) < 100 and float(throughput.group(3).replace(',', '')) > 0
  # Every program the member compiled is in the sweep's compilation cache for the next member.
  assert os.listdir(os.path.join(workdir, local.COMPILE_CACHE_DIR))
  rows = run_dir.read_metrics(os.path.join(workdir, 'real'))
  assert rows[-1]['step'] == 4 and math.isfinite(rows[-1]['eval_loss'])
  with open(os.path.join(workdir, 'real', 'log.txt')) as f:
    assert '-m gptjax.main --config=' in f.readline()
  assert runner.run_sweep(sweep, workdir, n_bootstrap=2) == 0
  assert '1 of 1 members already finished; training 0' in capsys.readouterr().out
  np.testing.assert_equal(run_dir.read_metrics(os.path.join(workdir, 'real')), rows)  # untouched
  metrics = os.path.join(workdir, 'real', run_dir.METRICS_FILE)
  with open(metrics, 'rb') as f:
    text = f.read()
  with open(metrics, 'wb') as f:  # a crash cut the final record short
    f.write(text[:text.rstrip(b'\n').rfind(b'\n') + 20])
  assert runner.run_sweep(sweep, workdir, n_bootstrap=2) == 0
  assert 'finished real: eval_loss' in capsys.readouterr().out
  again = run_dir.read_metrics(os.path.join(workdir, 'real'))
  assert again[-1]['step'] == 4 and again[-1]['eval_loss'] == rows[-1]['eval_loss']
