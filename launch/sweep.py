r"""Runs a sweep on this machine, a SLURM cluster or Cloud TPU VM slices, then fits and plots its
scaling laws.

  python -m launch.sweep --sweep=experiments/sweeps/cpu_scaling.py --workdir=runs/cpu_scaling \
      [--backend=local|slurm|tpu_vm] [--parallel=N] [--dry_run] [--status] [--commands] \
      [--only=name1,name2] [--fit_only] [--nofit]

One plan for every backend: `launch.status` reads where each member stands in `workdir/<member>`
(new, partial, finished, stale, running, broken), and only new and partial members are started.
Finished members are skipped and unfinished ones resume from their checkpoints; a member another
process is still training (its workdir is locked, e.g. after this runner was killed) is left to it;
a member whose files cannot be read is reported and skipped. `--dry_run` prints the commands the
backend would run. The backends (`launch.slurm`, `launch.tpu_vm` say more):
  local    each member is its own `python -m gptjax.main --config=launch/__init__.py:<sweep file>
           --config.x=y ...` process (`launch.get_config` hands it the sweep's base config;
           `launch.local` runs them): its output goes to `workdir/<member>/log.txt`; Ctrl-C stops
           the running members after they save a checkpoint.
  slurm    submits the unfinished members as one job array and returns; `--status` follows it.
  tpu_vm   runs them on existing slices, every host of a slice on the same member.
Then the fits run on the finished members (`gptjax.scaling.report`), in FLOPs spent and total N
unless --compute_key/--params_key say otherwise: the L(C) frontier power law, Chinchilla's three
approaches with bootstrap intervals, the holdout check of the largest budget, both accountings'
exponents, and the compute-optimal N and D at the largest budget and 10x and 100x it. Figures go to
`workdir/plots`, the numbers to `workdir/fit/fit.json`.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Sequence

from absl import app, flags

import launch
from gptjax.runs import run_dir
from gptjax.scaling import accounting, report
from launch import local, slurm, status as status_lib, tpu_vm
from launch.status import format_table, member_status

# ---------------------------------------------------------------- the command


FLAGS = flags.FLAGS
BACKENDS = ('local', 'slurm', 'tpu_vm')
# Flags that only one backend reads; giving one to another backend is a mistake worth naming.
_BACKEND_FLAGS = {'local': ('parallel',), 'slurm': ('max_concurrent', 'segments', 'sbatch_args'),
                  'tpu_vm': ('tpu_names', 'zone', 'project', 'accelerator_type', 'tpu_version',
                             'queued', 'spot', 'recreate', 'fetch_to', 'setup_args')}


def define_flags() -> None:
  """Only when run as a script, so importing this module (tests, notebooks) defines no flags."""
  flags.DEFINE_string('sweep', None, 'Sweep file defining get_sweep().', required=True)
  flags.DEFINE_string('workdir', None, 'Sweep directory: one sub-directory per member '
                      '(gs://BUCKET/PATH with --backend=tpu_vm).', required=True)
  flags.DEFINE_enum('backend', 'local', BACKENDS, 'Where the members train: this machine, a '
                    'SLURM job array, or Cloud TPU VM slices.')
  flags.DEFINE_bool('dry_run', False, 'List the members and their status, and print the commands '
                    'the backend would run; run nothing.')
  flags.DEFINE_bool('status', False, "List the members and their status (with --backend=slurm "
                    "also their jobs' states); run nothing.")
  flags.DEFINE_bool('commands', False, 'Print the gptjax.main command of every unfinished member, '
                    'one per line, for a launcher that runs them itself; run nothing.')
  flags.DEFINE_list('only', [], 'Run only these members (comma-separated names).')
  flags.DEFINE_bool('fit_only', False, 'Run nothing; fit and plot the finished members.')
  flags.DEFINE_bool('fit', True, 'Fit and plot the scaling laws after training; --nofit for '
                    'sweeps that are not IsoFLOP designs (a tuning grid, say).')
  flags.DEFINE_string('compute_key', 'flops_full', "The sweep's accounting: 'flops_full' (FLOPs "
                      "spent, total N) or 'flops_kaplan' (Kaplan's C, non-embedding N).")
  flags.DEFINE_string('params_key', None, "N for the fits: 'params_total' or "
                      "'params_non_embedding' (default: the --compute_key accounting's N).")
  flags.DEFINE_integer('n_bootstrap', 100, 'Bootstrap refits for the confidence intervals.')
  flags.DEFINE_integer('parallel', 1, 'local: members trained at once (each is its own process).')
  flags.DEFINE_integer('max_concurrent', 0, "slurm: array tasks running at once (the array's %N); "
                       '0 leaves it to SLURM.')
  flags.DEFINE_integer('segments', 1, 'slurm: back-to-back job arrays, each resuming the members '
                       'the one before left unfinished (time limits, preemption).')
  flags.DEFINE_string('sbatch_args', '', 'slurm: more sbatch options, e.g. '
                      '"--nodes=2 --time=24:00:00 --partition=gpu".')
  flags.DEFINE_list('tpu_names', [], 'tpu_vm: the slices; each trains one member at a time.')
  flags.DEFINE_string('zone', '', 'tpu_vm: the slices\' zone, e.g. us-central2-b.')
  flags.DEFINE_string('project', '', "tpu_vm: Google Cloud project (default: gcloud's).")
  flags.DEFINE_string('accelerator_type', '', 'tpu_vm: e.g. v4-32; lets a lost slice be recreated.')
  flags.DEFINE_string('tpu_version', '', 'tpu_vm: TPU runtime of a recreated slice.')
  flags.DEFINE_bool('queued', False, 'tpu_vm: the slices are queued resources.')
  flags.DEFINE_bool('spot', False, 'tpu_vm: recreate lost slices on spot capacity.')
  flags.DEFINE_integer('recreate', 2, 'tpu_vm: times one member may recreate its lost slice.')
  flags.DEFINE_string('fetch_to', '', 'tpu_vm: where the members\' metrics come back for the fits '
                      '(default: the workdir if mounted here, else runs/<its last component>).')
  flags.DEFINE_string('setup_args', '', 'tpu_vm: more launch/tpu_vm.sh options for setting up a '
                      'recreated slice, e.g. "--repo=GIT_URL --ref=main".')


def _options(backend: str) -> slurm.Options | tpu_vm.Options | None:
  for other, names in _BACKEND_FLAGS.items():
    given = [name for name in names if other != backend and FLAGS[name].present]
    if given:
      raise ValueError(f'--{given[0]} is for --backend={other}, not --backend={backend}.')
  if backend == 'slurm':
    return slurm.Options(FLAGS.max_concurrent, FLAGS.segments,
                         tuple(shlex.split(FLAGS.sbatch_args)))
  if backend == 'tpu_vm':
    return tpu_vm.Options(
        tuple(FLAGS.tpu_names), FLAGS.zone, FLAGS.project, FLAGS.accelerator_type,
        FLAGS.tpu_version, FLAGS.queued, FLAGS.spot, FLAGS.recreate, FLAGS.fetch_to,
        tuple(shlex.split(FLAGS.setup_args)))
  return None


def _report(failures: dict[str, str]) -> None:
  print(f'\n{len(failures)} member(s) failed and are left out of the fits:')
  for name, why in failures.items():
    print(f'  {name}: {why}')
  print('Rerun the same command to retry them (finished members are skipped).')


def run_sweep(sweep_path: str, workdir: str, *, backend: str = 'local',
              options: slurm.Options | tpu_vm.Options | None = None, parallel: int = 1,
              dry_run: bool = False, status: bool = False, commands: bool = False,
              only: Sequence[str] = (), fit_only: bool = False, fit: bool = True,
              compute_key: str = 'flops_full', params_key: str | None = None,
              n_bootstrap: int = 100) -> int:
  """The whole command; returns the exit status (1 if a member failed, after fitting the rest).

  One plan for every backend: the members' statuses in `workdir` decide what runs. The local and
  tpu_vm backends train and then fit; slurm submits and returns (fit with `fit_only` later)."""
  if backend not in BACKENDS:
    raise ValueError(f'--backend={backend}; choose one of {", ".join(BACKENDS)}.')
  if parallel < 1:
    raise ValueError(f'--parallel={parallel} must be at least 1.')
  method = compute_key.removeprefix('flops_')
  if method not in accounting.ACCOUNTINGS:
    raise ValueError(f'--compute_key={compute_key}; use flops_full or flops_kaplan.')
  params_key = params_key or accounting.ACCOUNTINGS[method].params_key
  if params_key not in [a.params_key for a in accounting.ACCOUNTINGS.values()]:
    raise ValueError(f'--params_key={params_key}; use params_total or params_non_embedding.')
  if backend == 'slurm':
    options = options or slurm.Options()
    slurm.check_workdir(workdir)
  elif backend == 'tpu_vm':
    if options is None:
      raise ValueError('--backend=tpu_vm needs --tpu_names and --zone.')
  elif not run_dir.is_local(workdir):
    raise ValueError(f'--workdir={workdir}: this machine trains in a local directory; a bucket '
                     'workdir is for --backend=tpu_vm, whose workers mount it.')
  if options is not None:
    options.check()
  if not run_dir.is_local(workdir):
    run_dir.exists(workdir)  # an unreachable bucket is one error here, not one per member
  base, members = launch.load_sweep_file(sweep_path)
  names = [m.name for m in members]
  unknown = sorted(set(only) - set(names))
  if unknown:
    raise ValueError(f'--only names {unknown}, which are not in the sweep; its members: {names}.')
  entries = status_lib.survey(base, members, workdir, method)
  selected = [entry for entry in entries if entry.unfinished and (not only or entry.name in only)]
  if commands:  # one per line, for launchers that start members themselves
    for entry in selected:
      print(shlex.join(['python'] + local.member_command(sweep_path, entry.member, entry.directory)[1:]))
    return 0
  print(format_table([(e.member, e.plan, e.status) for e in entries]), flush=True)
  if backend == 'slurm' and status:
    print('\n' + '\n'.join(slurm.status_lines(entries, workdir)))
  if dry_run:
    if backend == 'local':
      for entry in selected:
        print('+ ' + shlex.join(local.member_command(sweep_path, entry.member, entry.directory)))
    elif backend == 'slurm':
      slurm.submit(selected, sweep_path, workdir, options, dry_run=True)
    else:
      tpu_vm.run(selected, sweep_path, workdir, options, dry_run=True)
  if dry_run or status:
    return 0

  failures = {e.name: f'its workdir is stale ({e.status.detail}); delete {e.directory} to rerun '
                      'it, or rename the member' for e in entries if e.status.state == 'stale'}
  failures.update({e.name: e.status.detail for e in entries if e.status.state == 'broken'})
  busy = [f'  {e.name}: {e.status.detail}' for e in entries if e.status.state == 'running']
  if busy:
    print(f'{len(busy)} member(s) are being trained by another process; this run leaves them '
          'alone:\n' + '\n'.join(busy), flush=True)
  if backend == 'slurm' and not fit_only:
    submitted = slurm.submit(selected, sweep_path, workdir, options)
    if failures:
      _report(failures)
    return 1 if failures or submitted else 0
  if not fit_only:
    finished = sum(e.status.state == 'finished' for e in entries)
    print(f'{finished} of {len(entries)} members already finished; training {len(selected)}'
          + (f', {parallel} at a time.' if backend == 'local' else '.'), flush=True)
    try:
      if backend == 'local':
        jobs = [local.Job(e.member, e.config, e.plan, e.directory, e.status.step) for e in selected]
        failures.update(local.run_jobs(jobs, sweep_path, parallel=parallel, total=len(entries),
                                       finished_before=finished,
                                       compile_cache=os.path.join(workdir, local.COMPILE_CACHE_DIR)))
      else:
        failures.update(tpu_vm.run(selected, sweep_path, workdir, options))
    except KeyboardInterrupt:
      return 130
  if not fit and not fit_only:
    if failures:
      _report(failures)
    return 1 if failures else 0
  records_dir = tpu_vm.fetch_dir(workdir, options) if backend == 'tpu_vm' else workdir
  states = {e.name: member_status(os.path.join(records_dir, e.name), e.config).state
            for e in entries}
  finished = [name for name, state in states.items() if state == 'finished']
  unfinished = [name for name in names if name not in finished and name not in failures]
  report.fit_and_report(records_dir, finished, compute_key=compute_key,
                        params_key=params_key, n_bootstrap=n_bootstrap)
  if unfinished:
    print(f'\n{len(unfinished)} member(s) not trained to the end yet, left out of the fits: '
          f'{", ".join(unfinished)}.')
  if failures:
    _report(failures)
  return 1 if failures else 0


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  try:
    return run_sweep(FLAGS.sweep, os.path.expanduser(FLAGS.workdir), backend=FLAGS.backend,
                     options=_options(FLAGS.backend), parallel=FLAGS.parallel,
                     dry_run=FLAGS.dry_run, status=FLAGS.status, commands=FLAGS.commands,
                     only=FLAGS.only, fit_only=FLAGS.fit_only, fit=FLAGS.fit,
                     compute_key=FLAGS.compute_key, params_key=FLAGS.params_key,
                     n_bootstrap=FLAGS.n_bootstrap)
  except (ValueError, OSError) as e:  # a bad sweep file or flag, an unreachable tool or bucket
    print(f'Error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  define_flags()
  app.run(main)
