"""Weights & Biases as a second home for a run's records, beside `metrics.jsonl` and TensorBoard.

Set `log.wandb_project` and every record `Recorder` writes is also sent to W&B, at its step. The
W&B run's id is kept in the run directory (`wandb_run_id`), so a resumed run, even on another
host, continues the same W&B run rather than starting a second one. A sweep's members share a
group named after the sweep (`launch.get_config` fills `log.wandb_group`). W&B's own files go to
`<workdir>/wandb/`; `WANDB_MODE=offline` keeps everything there for a later `wandb sync`.
Nothing imports wandb unless a project is set.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from typing import Any

import ml_collections

ID_FILE = 'wandb_run_id'


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses a W&B project when wandb is not installed, before the run writes anything."""
  if 'log' in config and config.log.wandb_project and importlib.util.find_spec('wandb') is None:
    raise ValueError(f'log.wandb_project={config.log.wandb_project!r} is set but wandb is not '
                     "installed; pip install -e '.[wandb]', or leave log.wandb_project empty.")


def run_id(workdir: str) -> str:
  """The run directory's W&B id: read back, or made and kept on first use."""
  path = os.path.join(workdir, ID_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return f.read().strip()
  new = uuid.uuid4().hex[:16]
  os.makedirs(workdir, exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    f.write(new + '\n')
  os.replace(path + '.tmp', path)
  return new


class WandbTracker:
  """One W&B run per run directory; `log` sends a record's numbers at its step."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    import wandb  # only with a project set: the import costs seconds
    log = config.log
    self._run = wandb.init(
        project=log.wandb_project, entity=log.wandb_entity or None,
        name=log.wandb_name or os.path.basename(os.path.normpath(workdir)),
        group=log.wandb_group or None,
        tags=[t.strip() for t in log.wandb_tags.split(',') if t.strip()] or None,
        id=run_id(workdir), resume='allow', dir=workdir, config=config.to_dict())

  def log(self, record: dict[str, Any]) -> None:
    numbers = {k: v for k, v in record.items()
               if k != 'step' and isinstance(v, (int, float)) and not isinstance(v, bool)}
    self._run.log(numbers, step=int(record['step']))

  def close(self) -> None:
    self._run.finish()


def make_tracker(config: ml_collections.ConfigDict, workdir: str) -> WandbTracker | None:
  if 'log' not in config or not config.log.wandb_project:
    return None
  return WandbTracker(config, workdir)
