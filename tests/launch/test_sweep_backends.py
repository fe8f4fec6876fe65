"""The sweep runner's cluster backends and bucket workdirs: SLURM job arrays, Cloud TPU VM slices,
and records on a `gs://` path.

No cluster or cloud is touched. `sbatch`, `squeue`, `sacct` and `gcloud` are small Python scripts
put first on PATH: they record every call and answer as the real tools do, from a state file the
test can change (a task that fails, a slice that is preempted). A `gs://` path is served from a
local directory through `etils.epath`'s own test hook, so the code under test goes through the
same filesystem layer it uses against a real bucket. No member trains: the fake `gcloud` writes
the records a finished (or preempted) run leaves.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shlex
import subprocess
import sys
import textwrap

import pytest
from etils.epath import testing as epath_testing

import launch
from gptjax.runs import run_dir
from gptjax.scaling import records
from launch import slurm, status, sweep as runner, tpu_vm

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
CPU_SWEEP = 'experiments/sweeps/cpu_scaling.py'  # in the repository, as the slices need


def _tool(bin_dir, name: str, body: str) -> None:
  """An executable `name` that appends its argv to `$FAKE_STATE/calls.jsonl`, then runs `body`."""
  path = os.path.join(bin_dir, name)
  with open(path, 'w') as f:
    f.write(f'#!{sys.executable}\n' + textwrap.dedent('''
        import json, os, shlex, shutil, sys
        STATE = os.environ['FAKE_STATE']
        args = sys.argv[1:]
        with open(os.path.join(STATE, 'calls.jsonl'), 'a') as f:
          f.write(json.dumps([os.path.basename(sys.argv[0]), *args]) + '\\n')
        def flag(name):
          return next((a.split('=', 1)[1] for a in args if a.startswith(f'--{name}=')), None)
        def load(name, default):
          path = os.path.join(STATE, name)
          return json.load(open(path)) if os.path.exists(path) else default
        def save(name, value):  # whole or not at all: tools on two slices run side by side
          path = os.path.join(STATE, name)
          with open(f'{path}.{os.getpid()}', 'w') as f:
            json.dump(value, f)
          os.replace(f'{path}.{os.getpid()}', path)
        ''') + textwrap.dedent(body))
  os.chmod(path, 0o755)


def _calls(state_dir) -> list[list[str]]:
  path = os.path.join(state_dir, 'calls.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
  """A directory of fake tools first on PATH; returns the state directory they share."""
  state, bin_dir = tmp_path / 'state', tmp_path / 'bin'
  state.mkdir()
  bin_dir.mkdir()
  monkeypatch.setenv('FAKE_STATE', str(state))
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  return state, bin_dir


# ---------------------------------------------------------------- SLURM

SBATCH = '''
    cluster = load('slurm.json', {'arrays': [], 'tasks': {}})
    spec = flag('array').split('%')[0]
    low, high = (int(x) for x in spec.split('-'))
    job = str(1000 + len(cluster['arrays']))
    with open(flag('commands')) as f:
      lines = f.read().splitlines()
    cluster['arrays'].append({'job': job, 'args': args, 'lines': lines})
    cluster['tasks'].update({f'{job}_{t}': 'PENDING' for t in range(low, high + 1)})
    save('slurm.json', cluster)
    print(job)
'''
SQUEUE = '''
    for task, state in load('slurm.json', {'tasks': {}})['tasks'].items():
      if state in ('PENDING', 'RUNNING', 'COMPLETING'):
        print(f'{task}|{state}')
'''
SACCT = '''
    arrays = flag('jobs').split(',')
    for task, state in load('slurm.json', {'tasks': {}})['tasks'].items():
      if task.split('_')[0] in arrays:
        print(f'{task}|{state}')
'''


@pytest.fixture
def fake_slurm(fake_tools):
  state, bin_dir = fake_tools
  for name, body in (('sbatch', SBATCH), ('squeue', SQUEUE), ('sacct', SACCT)):
    _tool(bin_dir, name, body)
  return state


def _cluster(state) -> dict:
  with open(state / 'slurm.json') as f:
    return json.load(f)


def _set_tasks(state, **tasks: str) -> None:
  cluster = _cluster(state)
  cluster['tasks'].update(tasks)
  (state / 'slurm.json').write_text(json.dumps(cluster))


TINY_SWEEP = textwrap.dedent('''
    import launch
    from experiments.configs import base as base_config

    def get_sweep():
      config = base_config.get_config()
      config.model.update(d_model=16, num_layers=1, num_heads=2, max_seq_len=16)
      config.data.update(seq_len=16, batch_size=2)
      config.train.update(warmup_steps=1, log_every=2, eval_every=4, checkpoint_every=4)
      return config, [launch.Member(name, {'train.num_steps': 8, 'train.learning_rate': lr})
                      for name, lr in (('done', 1e-3), ('half', 2e-3), ('a', 3e-3), ('b', 4e-3))]
''')


def _records(member_dir, steps, final=True) -> None:
  """The metrics a run of `steps` steps leaves: finished, or stopped half-way."""
  os.makedirs(member_dir, exist_ok=True)
  with open(os.path.join(member_dir, run_dir.METRICS_FILE), 'w') as f:
    for step in (steps // 2, steps) if final else (steps // 2,):
      f.write(json.dumps({'step': step, 'tokens_seen': step * 1000, 'eval_loss': 3.0 - step / 100,
                          'flops_kaplan': 1e9 * step, 'params_non_embedding': 3000}) + '\n')


@pytest.fixture
def tiny(tmp_path):
  """(sweep file, workdir) with `done` finished, `half` stopped half-way, `a` and `b` new."""
  sweep, workdir = tmp_path / 'tiny_sweep.py', tmp_path / 'runs'
  sweep.write_text(TINY_SWEEP)
  _records(workdir / 'done', 8)
  _records(workdir / 'half', 8, final=False)
  return str(sweep), str(workdir)


def _submit(sweep, workdir, **options) -> int:
  return runner.run_sweep(sweep, workdir, backend='slurm', options=slurm.Options(**options))


def test_slurm_submits_the_unfinished_members_once(tiny, fake_slurm, capsys):
  sweep, workdir = tiny
  assert _submit(sweep, workdir, max_concurrent=2) == 0
  [array] = _cluster(fake_slurm)['arrays']
  base, members = launch.load_sweep_file(sweep)
  expected = [shlex.join([f'launch/__init__.py:{os.path.abspath(sweep)}',
                          os.path.join(os.path.abspath(workdir), m.name),
                          *launch.member_flags(m)]) for m in members[1:]]
  assert array['lines'] == expected  # half, a, b: one array task each, in sweep order
  assert '--array=0-2%2' in array['args'] and array['args'][-2] == 'launch/slurm.sbatch'
  assert '--dependency' not in ' '.join(array['args'])
  assert 'Submitted 3 member(s) as job array 1000, at most 2 at once' in capsys.readouterr().out

  assert _submit(sweep, workdir, max_concurrent=2) == 0  # all three still pending
  assert len(_cluster(fake_slurm)['arrays']) == 1
  out = capsys.readouterr().out
  assert 'a: already in the queue (1000_1 PENDING); not submitted again.' in out
  assert 'Nothing to submit' in out
  assert [call[0] for call in _calls(fake_slurm)] == ['sbatch', 'squeue']


def test_slurm_resubmits_a_failed_member_and_shows_job_states(tiny, fake_slurm, fake_tools,
                                                              capsys):
  sweep, workdir = tiny
  bin_dir = fake_tools[1]
  assert _submit(sweep, workdir) == 0
  _records(os.path.join(workdir, 'half'), 8)  # task 0 finished its member
  _set_tasks(fake_slurm, **{'1000_0': 'COMPLETED', '1000_1': 'FAILED', '1000_2': 'RUNNING'})
  capsys.readouterr()
  assert runner.run_sweep(sweep, workdir, backend='slurm', status=True) == 0
  lines = capsys.readouterr().out.splitlines()
  job_lines = {line.split()[0]: line.split()[1:] for line in lines[lines.index('') + 2:]}
  assert job_lines['half'][:2] == ['1000_0', 'COMPLETED']  # from sacct: no longer queued
  assert job_lines['a'][:2] == ['1000_1', 'FAILED']
  assert job_lines['b'][:2] == ['1000_2', 'RUNNING']  # from squeue
  assert job_lines['a'][2] == os.path.join(workdir, 'slurm', '1000_1.out')
  assert len(_cluster(fake_slurm)['arrays']) == 1  # --status submits nothing
  _tool(bin_dir, 'sacct', 'print("Slurm accounting storage is disabled", file=sys.stderr)\n'
                          'sys.exit(1)\n')
  assert runner.run_sweep(sweep, workdir, backend='slurm', status=True) == 0
  lines = capsys.readouterr().out.splitlines()
  states = {line.split()[0]: line.split()[2] for line in lines[lines.index('') + 2:]}
  assert states == {'half': 'ENDED', 'a': 'ENDED', 'b': 'RUNNING'}  # squeue alone

  assert _submit(sweep, workdir) == 0
  arrays = _cluster(fake_slurm)['arrays']
  assert len(arrays) == 2 and '--array=0-0' in arrays[1]['args']
  assert [line.split()[1] for line in arrays[1]['lines']] == [os.path.join(
      os.path.abspath(workdir), 'a')]
  with open(os.path.join(workdir, 'slurm', 'jobs.json')) as f:
    assert slurm.member_jobs(json.load(f)['submissions'])['a'] == ['1000_1', '1001_0']


def test_slurm_segments_chain_and_dry_run_submits_nothing(tiny, fake_slurm, capsys):
  sweep, workdir = tiny
  assert runner.run_sweep(sweep, workdir, backend='slurm', options=slurm.Options(segments=3),
                          dry_run=True) == 0
  out = capsys.readouterr().out
  assert _calls(fake_slurm) == [] and not os.path.exists(os.path.join(workdir, 'slurm'))
  printed = [shlex.split(line[2:]) for line in out.splitlines() if line.startswith('+ sbatch')]
  assert len(printed) == 3 and '--dependency=afterany:<job id of segment 2>' in printed[2]
  assert f'  2: launch/__init__.py:{os.path.abspath(sweep)}' in out

  assert _submit(sweep, workdir, segments=3) == 0
  arrays = _cluster(fake_slurm)['arrays']
  assert [a['job'] for a in arrays] == ['1000', '1001', '1002']
  assert [['sbatch', *a['args']] for a in arrays] == [
      p[:5] + ([f'--dependency=afterany:{arrays[i - 1]["job"]}'] if i else []) + p[-2:]
      for i, p in enumerate(printed)]
  assert printed[0][:5] == ['sbatch', '--parsable', '--array=0-2', '--job-name=gptjax-tiny_sweep',
                            f'--output={os.path.abspath(workdir)}/slurm/%A_%a.out']
  _set_tasks(fake_slurm, **{'1000_1': 'TIMEOUT'})  # the later segments still wait for it
  assert _submit(sweep, workdir, segments=3) == 0
  assert len(_cluster(fake_slurm)['arrays']) == 3


@pytest.mark.slow
def test_slurm_array_task_runs_its_line_unless_the_member_finished(tmp_path, fake_tools, tiny):
  """The sbatch script picks line SLURM_ARRAY_TASK_ID + 1 of the commands file and asks
  `python -m launch.status` whether its member still needs training."""
  state, bin_dir = fake_tools
  _tool(bin_dir, 'srun', '')
  sweep, workdir = tiny
  base, members = launch.load_sweep_file(sweep)
  lines = [f'cfg.py:x {workdir}/half --config.train.learning_rate=0.002',
           f"'cfg.py:a b' {workdir}/done '--config.data.path=with space'"]
  commands = tmp_path / 'array-0.txt'
  commands.write_text('\n'.join(lines) + '\n')
  done = os.path.join(workdir, 'done')
  run_dir.write_config(done, launch.resolve(base, members[0]))
  env = {**os.environ, 'PYTHON': sys.executable, 'SLURM_SUBMIT_DIR': ROOT}

  def task(index: int) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', os.path.join(ROOT, 'launch', 'slurm.sbatch'),
                           f'--commands={commands}'], env={**env, 'SLURM_ARRAY_TASK_ID': index},
                          capture_output=True, text=True, timeout=120)

  result = task('0')
  assert result.returncode == 0, result.stderr
  [srun] = _calls(state)
  assert srun[:4] == ['srun', '--kill-on-bad-exit=1', sys.executable, '-m']
  assert srun[4:] == ['gptjax.main', '--config=cfg.py:x', f'--workdir={workdir}/half',
                      '--config.distributed.enabled=True', '--config.train.learning_rate=0.002']
  result = task('1')  # `done` has its config and final eval: nothing to train
  assert result.returncode == 0 and f'{done} has finished' in result.stdout, result.stderr
  assert len(_calls(state)) == 1
  result = task('2')
  assert result.returncode == 2 and 'has no line 3' in result.stderr


def test_bad_backend_flags_end_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'launch.sweep', f'--sweep={CPU_SWEEP}', f'--workdir={tmp_path}',
       '--max_concurrent=2'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr == ('Error: --max_concurrent is for --backend=slurm, not '
                           '--backend=local.\n')
  with pytest.raises(ValueError, match='every node mounts'):
    runner.run_sweep(CPU_SWEEP, 'gs://b/runs', backend='slurm')
  with pytest.raises(ValueError, match='bucket workdir is for --backend=tpu_vm'):
    runner.run_sweep(CPU_SWEEP, 'gs://b/runs')
  with pytest.raises(ValueError, match='--max_concurrent=-1'):
    runner.run_sweep(CPU_SWEEP, str(tmp_path), backend='slurm',
                     options=slurm.Options(max_concurrent=-1))
  with pytest.raises(ValueError, match='outside the repository'):
    tpu_vm.repo_path(str(tmp_path / 'sweep.py'))

  def no_gcsfs(original, path):
    raise ImportError('Please install gcsfs to access Google Storage')

  with epath_testing.mock_epath(exists=no_gcsfs), pytest.raises(OSError, match='pip install gcsfs'):
    runner.run_sweep(CPU_SWEEP, 'gs://b/runs', backend='tpu_vm',
                     options=tpu_vm.Options(('s1',), 'us-central2-b'))


# ---------------------------------------------------------------- a bucket, through etils.epath


@contextlib.contextmanager
def fake_bucket(root):
  """gs://BUCKET/PATH served from root/BUCKET/PATH, through epath's backend hook."""
  def local(path):
    path = os.fspath(path)
    return os.path.join(root, path[len('gs://'):]) if path.startswith('gs://') else path

  def one(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def two(original, path, destination, *args, **kwargs):
    return original(local(path), local(destination), *args, **kwargs)

  names = ('open', 'exists', 'isdir', 'listdir', 'glob', 'makedirs', 'mkdir', 'remove', 'rmtree',
           'stat', 'walk')
  with epath_testing.mock_epath(**dict.fromkeys(names, one), copy=two, rename=two, replace=two):
    yield


def test_records_are_written_and_read_through_the_filesystem_layer(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a path mistaken for a local one would appear here as gs:/...
  base, members = launch.load_sweep_file(os.path.join(ROOT, CPU_SWEEP))
  config = launch.resolve(base, members[0])
  steps = config.train.num_steps
  with fake_bucket(str(tmp_path / 'bucket')):
    member = f'gs://b/runs/{members[0].name}'
    assert status.member_status(member, config).state == 'new'
    run_dir.write_config(member, config)
    assert status.member_status(member, config).state == 'partial'
    rows = [{'step': s, 'eval_loss': 2.0, 'train_loss': 'nan'} for s in (steps // 2, steps)]
    run_dir.write_atomic(f'{member}/{run_dir.METRICS_FILE}',
                         ''.join(json.dumps(r) + '\n' for r in rows))
    assert run_dir.read_config_dict(member) == json.loads(config.to_json_best_effort())
    assert [r['step'] for r in run_dir.read_metrics(member)] == [steps // 2, steps]
    assert status.member_status(member, config).state == 'finished'
    assert records.run_dirs('gs://b/runs') == [member]
    assert [r['run'] for r in records.load_sweep('gs://b/runs')] == [members[0].name] * 2
  assert sorted(os.listdir(tmp_path)) == ['bucket']
  stored = tmp_path / 'bucket' / 'b' / 'runs' / members[0].name
  assert sorted(os.listdir(stored)) == [run_dir.CONFIG_FILE, run_dir.METRICS_FILE]


# ---------------------------------------------------------------- Cloud TPU VM slices

GCLOUD = '''
    slices = load('slices.json', {})
    home = os.path.join(STATE, 'home')  # the workers' home: ~/gcs/BUCKET mounts gs://BUCKET
    verb, name = args[3], (args[4].split(':')[0] if len(args) > 4 else '')
    if verb == 'describe':
      if slices.get(name, 'READY') == 'NOT_FOUND':
        sys.exit(1)
      print(slices.get(name, 'READY'))
    elif verb in ('create', 'delete'):
      slices[name] = 'READY' if verb == 'create' else 'NOT_FOUND'
      save('slices.json', slices)
    elif verb == 'ssh':
      if slices.get(name, 'READY') != 'READY':
        sys.exit(255)
      command = flag('command')
      if 'gptjax.main' in command:
        words = shlex.split(command.split('&&', 1)[1])
        value = lambda key: next(w.split('=', 1)[1] for w in words if w.startswith(key + '='))
        workdir = os.path.join(home, value('--workdir')[2:])
        steps, d = int(value('--config.train.num_steps')), int(value('--config.model.d_model'))
        plan = load('failures.json', {})
        planned = plan.get(os.path.basename(workdir), [])
        failure = planned.pop(0) if planned else None
        save('failures.json', plan)
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
          for step in (steps // 2, steps)[:1 if failure else 2]:
            n, tokens = 12 * d * d, step * 512
            f.write(json.dumps({'step': step, 'tokens_seen': tokens, 'params_non_embedding': n,
                                'flops_kaplan': 6.0 * n * tokens,
                                'eval_loss': 1 + 30 / n ** 0.3 + 40 / tokens ** 0.3}) + '\\n')
        if failure == 'preempt':
          slices[name] = 'PREEMPTED'
          save('slices.json', slices)
          sys.exit(255)
        sys.exit(75 if failure == 'stopped' else 1 if failure else 0)
    elif verb == 'scp':
      *sources, destination = [a for a in args[4:] if not a.startswith('--')]
      for source in sources:
        path = os.path.join(home, source.split(':', 1)[1])
        if os.path.isfile(path):
          shutil.copy(path, destination)
'''


@pytest.fixture
def fake_gcloud(fake_tools):
  state, bin_dir = fake_tools
  _tool(bin_dir, 'gcloud', GCLOUD)
  with fake_bucket(str(state / 'home' / 'gcs')):
    yield state


@pytest.fixture
def fits(monkeypatch):
  """The fits (tested in test_sweep.py) only record the directory and members they were given."""
  calls = []
  monkeypatch.setattr(runner.report, 'fit_and_report',
                      lambda directory, finished, **_: calls.append((directory, list(finished))))
  return calls


def _members(count=3):
  _, members = launch.load_sweep_file(os.path.join(ROOT, CPU_SWEEP))
  return [m.name for m in members[:count]]


def _tpu(tmp_path, **options) -> tpu_vm.Options:
  return tpu_vm.Options(**{'names': ('s1',), 'zone': 'us-central2-b',
                           'fetch_to': str(tmp_path / 'fetched'), **options})


def _trainings(calls) -> list[tuple[str, str]]:
  """(slice, member) of each worker-wide training command, in order."""
  found = []
  for call in calls:
    command = next((a for a in call if a.startswith('--command=')), '')
    if 'gptjax.main' in command:
      assert '--worker=all' in call, call
      workdir = next(w for w in shlex.split(command) if w.startswith('--workdir='))
      found.append((call[5], os.path.basename(workdir)))
  return found


def test_tpu_vm_issues_what_the_hand_written_loop_did(tmp_path, fake_gcloud, fits, capsys,
                                                      monkeypatch):
  """A hand-written loop (`--commands` piped into tpu_vm.sh per member) and the backend make the
  same gcloud calls, member by member in sweep order."""
  monkeypatch.chdir(ROOT)  # --commands names the sweep file as given, relative to here
  only = _members()
  fetch = tmp_path / 'fetched'
  assert runner.run_sweep(CPU_SWEEP, str(tmp_path / 'local'), commands=True, only=only) == 0
  listing = capsys.readouterr().out
  loop = textwrap.dedent(f'''
      while read -r _ _ _ config workdir overrides; do
        member=$(basename "${{workdir#--workdir=}}")
        launch/tpu_vm.sh --name=s1 --zone=us-central2-b --steps=run,fetch "$config" \\
            --workdir="gs://b/sweep/$member" --fetch-to="{fetch}/$member" \\
            --extra="$overrides" < /dev/null
      done''')
  result = subprocess.run(['bash', '-c', loop], input=listing, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  by_hand = _calls(fake_gcloud)
  assert [m for _, m in _trainings(by_hand)] == only and len(by_hand) == 3 * len(only)

  for path in ('calls.jsonl',):
    os.remove(fake_gcloud / path)
  for directory in (fake_gcloud / 'home', fetch):
    subprocess.run(['rm', '-r', str(directory)], check=True)
  assert runner.run_sweep(os.path.join(ROOT, CPU_SWEEP), 'gs://b/sweep', backend='tpu_vm',
                          options=_tpu(tmp_path), only=only) == 0
  assert _calls(fake_gcloud) == by_hand
  assert f'finished {only[0]} on slice s1' in capsys.readouterr().out
  assert fits == [(str(fetch), only)]  # on the metrics fetched back
  assert sorted(os.listdir(fetch)) == sorted(only)
  for member in only:
    assert sorted(os.listdir(fetch / member)) == [run_dir.METRICS_FILE, tpu_vm.LOG_FILE]

  assert runner.run_sweep(os.path.join(ROOT, CPU_SWEEP), 'gs://b/sweep', backend='tpu_vm',
                          options=_tpu(tmp_path), only=only) == 0
  assert len(_calls(fake_gcloud)) == len(by_hand)  # every member finished: nothing runs


def test_tpu_vm_recreates_a_preempted_slice_and_resumes_that_member(tmp_path, fake_gcloud, fits,
                                                                    capsys):
  only = _members()
  (fake_gcloud / 'failures.json').write_text(json.dumps({only[1]: ['preempt']}))
  options = _tpu(tmp_path, accelerator_type='v4-32', spot=True,
                 setup_args=('--repo=https://example.com/gptjax.git',))
  assert runner.run_sweep(os.path.join(ROOT, CPU_SWEEP), 'gs://b/sweep', backend='tpu_vm',
                          options=options, only=only) == 0
  calls = _calls(fake_gcloud)
  assert [m for _, m in _trainings(calls)] == [only[0], only[1], only[1], only[2]]
  verbs = [call[4] for call in calls if call[4] in ('describe', 'delete', 'create')]
  assert verbs == ['describe', 'delete', 'create']
  create = next(call for call in calls if call[4] == 'create')
  assert '--accelerator-type=v4-32' in create and '--spot' in create
  mount = next(i for i, call in enumerate(calls) if 'gcsfuse' in call[-1] and ' b ' in call[-1])
  resumed = [i for i, call in enumerate(calls) if 'gptjax.main' in call[-1]][2]
  assert calls.index(create) < mount < resumed  # the bucket is mounted on the new slice
  assert 'slice s1 is PREEMPTED: recreating it, then resuming' in capsys.readouterr().out


def test_tpu_vm_resumes_a_member_stopped_to_resume_on_its_slice(tmp_path, fake_gcloud, fits,
                                                                capsys):
  only = _members()
  (fake_gcloud / 'failures.json').write_text(json.dumps({only[1]: ['stopped']}))
  assert runner.run_sweep(os.path.join(ROOT, CPU_SWEEP), 'gs://b/sweep', backend='tpu_vm',
                          options=_tpu(tmp_path), only=only) == 0
  assert [m for _, m in _trainings(_calls(fake_gcloud))] == [only[0], only[1], only[1], only[2]]
  assert (f'{only[1]} was stopped after saving a checkpoint (status 75) on slice s1: resuming it'
          in capsys.readouterr().out)


def test_tpu_vm_rerun_after_a_failure_runs_only_that_member(tmp_path, fake_gcloud, fits, capsys):
  only = _members()
  (fake_gcloud / 'failures.json').write_text(json.dumps({only[1]: ['crash']}))
  sweep = os.path.join(ROOT, CPU_SWEEP)
  assert runner.run_sweep(sweep, 'gs://b/sweep', backend='tpu_vm', options=_tpu(tmp_path),
                          only=only) == 1
  out = capsys.readouterr().out
  assert f'FAILED {only[1]}: exited with status 1 on slice s1, which is READY' in out
  assert [m for _, m in _trainings(_calls(fake_gcloud))] == only
  assert fits == [(str(tmp_path / 'fetched'), [only[0], only[2]])]
  os.remove(fake_gcloud / 'calls.jsonl')
  assert runner.run_sweep(sweep, 'gs://b/sweep', backend='tpu_vm', options=_tpu(tmp_path),
                          only=only) == 0
  assert [m for _, m in _trainings(_calls(fake_gcloud))] == [only[1]]


def test_tpu_vm_spreads_members_over_slices_and_dry_run_calls_nothing(tmp_path, fake_gcloud, fits,
                                                                      capsys):
  only = _members(4)
  options = _tpu(tmp_path, names=('s1', 's2'), accelerator_type='v5litepod-16', queued=True)
  sweep = os.path.join(ROOT, CPU_SWEEP)
  assert runner.run_sweep(sweep, 'gs://b/sweep', backend='tpu_vm', options=options, only=only,
                          dry_run=True) == 0
  assert _calls(fake_gcloud) == []
  printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith('+ ')]
  assert [shlex.split(line)[2] for line in printed[:4]] == ['--name=s1', '--name=s2'] * 2
  assert printed[4].endswith('--queued --steps= --delete')
  assert runner.run_sweep(sweep, 'gs://b/sweep', backend='tpu_vm', options=options,
                          only=only) == 0
  trainings = _trainings(_calls(fake_gcloud))
  assert sorted(m for _, m in trainings) == sorted(only)
  assert {s for s, _ in trainings} == {'s1', 's2'}
