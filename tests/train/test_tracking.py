"""Weights & Biases beside metrics.jsonl, in W&B's offline mode: the same records at the same steps,
one W&B run continued across a resume, the sweep's group, and a clear refusal without wandb."""

import glob
import json
import os

import pytest

from experiments.configs import base
from gptjax.train import loop, tracking

wandb_proto = pytest.importorskip('wandb.proto.wandb_internal_pb2')

TINY = {
    'model.d_model': 16, 'model.num_layers': 1, 'model.num_heads': 2, 'model.max_seq_len': 32,
    'data.seq_len': 32, 'data.batch_size': 8, 'data.max_corpus_bytes': 100_000,
    'train.num_steps': 4, 'train.warmup_steps': 1, 'train.log_every': 2, 'train.eval_every': 2,
    'train.eval_batches': 1, 'train.checkpoint_every': 2, 'train.async_checkpoints': False,
    'log.wandb_project': 'gptjax-tests', 'log.wandb_group': 'tiny', 'log.wandb_tags': 'a,b',
}


def _config(**extra):
  config = base.get_config()
  for key, value in {**TINY, **extra}.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def _wandb_records(path: str) -> list[bytes]:
  """The protobuf records of a `.wandb` file: a 7-byte header, then LevelDB-log chunks (CRC 4,
  length 2, type 1: full, first, middle, last) in 32 KiB blocks."""
  data = open(path, 'rb').read()
  assert data[:4] == b':W&B'
  records, partial, pos, block = [], b'', 7, 32768
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # a block's tail too short for a header is padding
      pos += block - pos % block
      continue
    length, kind = int.from_bytes(data[pos + 4:pos + 6], 'little'), data[pos + 6]
    chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
    if kind == 0:
      break
    partial = chunk if kind in (1, 2) else partial + chunk
    if kind in (1, 4):
      records.append(partial)
  return records


def _history(run_dir: str) -> dict[int, dict[str, float]]:
  """{step: {key: value}} of every history record W&B wrote in an offline run directory."""
  (path,) = glob.glob(os.path.join(run_dir, '*.wandb'))
  out = {}
  for raw in _wandb_records(path):
    record = wandb_proto.Record()
    record.ParseFromString(raw)
    if record.WhichOneof('record_type') == 'history':
      items = {item.key or '/'.join(item.nested_key): json.loads(item.value_json)
               for item in record.history.item}
      out[int(items.pop('_step'))] = {k: v for k, v in items.items() if not k.startswith('_')}
  return out


def test_wandb_gets_the_jsonl_records_and_a_resume_continues_its_run(tmp_path, monkeypatch):
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(_config(), workdir)
  loop.train_and_evaluate(_config(**{'train.num_steps': 6}), workdir, allow_config_change=True)
  run_id = open(os.path.join(workdir, tracking.ID_FILE)).read().strip()
  runs = sorted(glob.glob(os.path.join(workdir, 'wandb', 'offline-run-*')))
  assert len(runs) == 2 and all(r.endswith('-' + run_id) for r in runs)  # one W&B run, resumed
  logged = {**_history(runs[0]), **_history(runs[1])}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert sorted(logged) == [r['step'] for r in records] == [2, 4, 6]
  for record in records:
    numbers = {k: v for k, v in record.items() if k != 'step' and isinstance(v, (int, float))}
    assert logged[record['step']] == pytest.approx(numbers, rel=1e-12)


def test_a_sweeps_members_share_a_group_named_after_the_sweep(tmp_path):
  import launch
  sweep = tmp_path / 'my_sweep.py'
  sweep.write_text(
      'import launch\nfrom experiments.configs import base\n\ndef get_sweep():\n'
      '  config = base.get_config()\n  config.log.wandb_project = "p"\n'
      '  return config, [launch.Member("a", {"model.d_model": 32})]\n')
  assert launch.get_config(str(sweep)).log.wandb_group == 'my_sweep'
  # The status check rebuilds members from the same place, so it sees the same config.
  assert launch.load_sweep_file(str(sweep))[0].log.wandb_group == 'my_sweep'


def test_a_project_without_wandb_installed_is_refused_before_anything_is_written(
    tmp_path, monkeypatch):
  real = tracking.importlib.util.find_spec
  monkeypatch.setattr(tracking.importlib.util, 'find_spec',
                      lambda name: None if name == 'wandb' else real(name))
  with pytest.raises(ValueError, match=r"wandb is not installed; pip install -e '\.\[wandb\]'"):
    loop.train_and_evaluate(_config(), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()
