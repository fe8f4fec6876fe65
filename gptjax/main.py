"""Command line entry point for one training run.

  python -m gptjax.main --config=experiments/configs/tiny.py --workdir=runs/tiny \
      --config.model.num_layers=2

Rerunning the same command resumes from the run's latest checkpoint. A workdir holds one run: a
second process on it is refused while the first lives, and so is a config that differs from the
one the workdir was made with, unless `--allow_config_change` says to continue with it (e.g. a
longer schedule or a lower learning rate after a NaN stop). A config that cannot run (a field out
of range, shapes that do not fit, a mesh the devices cannot fill, an unknown field) is refused with
one line on stderr that names the field and the fix, exit status 2, before anything is written; a
run that stops (non-finite training, no readable checkpoint) says why in one line, exit status 1.
"""

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from gptjax import train
from gptjax.parallel import distributed, sharding
from gptjax.runs import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a get_config() file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the config.')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Continue a workdir made with another config, with this one '
    '(its old config.json is kept as config.until-step-<step>.json).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}; use --config.x.y=value for overrides.')
  cli.quiet_libraries()
  config = _CONFIG.value
  distributed.configure_cpu_devices(config.mesh.cpu_devices)
  distributed.initialize(config.distributed)
  train.check_run_config(config, sharding.make_mesh(config.mesh))
  workdir = os.path.expanduser(_WORKDIR.value)
  logging.info('JAX %s on %d process(es), %d device(s): %s', jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].device_kind)
  train.train_and_evaluate(config, workdir, allow_config_change=_ALLOW_CONFIG_CHANGE.value)


if __name__ == '__main__':
  cli.run(main, 'gptjax.main')
