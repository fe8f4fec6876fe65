"""The run directory's JSONL files read back as they were written, and a damaged one is named."""

import json
import pathlib
import warnings

import pytest

from gptjax.runs import run_dir


def _metrics(tmp_path, payload: bytes) -> str:
  (tmp_path / run_dir.METRICS_FILE).write_bytes(payload)
  return str(tmp_path)


def _lines(*records) -> bytes:
  return b''.join(json.dumps(record).encode() + b'\n' for record in records)


def test_resuming_drops_the_records_past_the_restored_step_and_a_cut_last_line(tmp_path):
  workdir = _metrics(tmp_path, _lines({'step': 10}, {'step': 20}, {'step': 30}) + b'{"step": 4\xc3')
  assert run_dir.truncate_metrics_after(workdir, 20) == 2  # step 30 and the crash-cut line
  assert [r['step'] for r in run_dir.read_metrics(workdir)] == [10, 20]


def test_text_with_line_separators_inside_records_reads_back_whole(tmp_path):
  note = 'a\u2028b\x85c'
  workdir = _metrics(tmp_path, _lines({'step': 1, 'note': note}, {'step': 2}))
  assert run_dir.truncate_metrics_after(workdir, 2) == 0
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # no line is taken for a malformed record
    assert run_dir.read_metrics(workdir)[0]['note'] == note


@pytest.mark.parametrize('read', [lambda w: run_dir.truncate_metrics_after(w, 5),
                                  run_dir.read_metrics])
def test_binary_bytes_before_the_last_line_name_the_file_and_the_fix(tmp_path, read):
  workdir = _metrics(tmp_path, _lines({'step': 1}) + b'\xb0\xb1\n' + _lines({'step': 2}))
  path = tmp_path / run_dir.METRICS_FILE
  with pytest.raises(ValueError, match=rf'{path}:2 is not text: the file is damaged\. Restore it'):
    read(workdir)
  assert path.read_bytes().startswith(b'{"step": 1}\n\xb0')  # nothing rewritten


def test_a_fresh_start_sets_the_earlier_records_aside(tmp_path):
  workdir = _metrics(tmp_path, _lines({'step': 10}, {'step': 20}))
  (tmp_path / run_dir.TENSORBOARD_DIR).mkdir()
  (tmp_path / run_dir.TENSORBOARD_DIR / 'events').write_bytes(b'tb')
  (tmp_path / run_dir.CONFIG_FILE).write_text('{}')
  (tmp_path / 'tokenizer.json').write_text('{}')  # what the fresh run reuses stays
  aside = pathlib.Path(run_dir.set_aside_records(workdir))
  assert aside.parent == tmp_path and aside.name.startswith('set-aside-')
  assert (aside / run_dir.METRICS_FILE).read_bytes() == _lines({'step': 10}, {'step': 20})
  assert (aside / run_dir.TENSORBOARD_DIR / 'events').read_bytes() == b'tb'
  assert (aside / run_dir.CONFIG_FILE).read_text() == '{}'
  assert sorted(p.name for p in tmp_path.iterdir()) == [aside.name, 'tokenizer.json']
  assert run_dir.set_aside_records(workdir) is None  # nothing left to set aside
