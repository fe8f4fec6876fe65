"""The records of a run: each logged step's throughput, FLOPs, MFU and evaluation, written to
`metrics.jsonl` (and TensorBoard) on process 0, with a progress line in the log.

Shared by pre-training (`gptjax/train/loop.py`) and fine-tuning (`gptjax/finetune/run.py`), so both
write records the sweep's fits and plots read the same way.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import ml_collections
from absl import logging

from gptjax import data as data_lib
from gptjax.cost import flops
from gptjax.model.config import GPTConfig
from gptjax.runs import run_dir
from gptjax.runs.run_dir import EVAL_KEY
from gptjax.train import evaluate, metrics as metrics_lib, tracking
from gptjax.train.progress import Progress


class Recorder:
  """Builds each logged step's record (throughput, FLOPs, MFU, eval) and writes it on process 0."""

  def __init__(self, config: ml_collections.ConfigDict, model_cfg: GPTConfig, workdir: str,
               data: data_lib.Data, start_step: int, constants: dict[str, Any] | None = None):
    self.model_cfg, self.seq_len = model_cfg, config.data.seq_len
    self.tokens_per_step = config.data.seq_len * config.data.batch_size
    self.full_flops_per_token = flops.flops_per_token(model_cfg, self.seq_len, method='full')
    self.peak = flops.device_peak_flops(jax.devices()[0].device_kind, model_cfg.compute_dtype)
    # Bits per byte needs a loss over every token; a masked-token loss has no such reading.
    clm = config.train.objective == 'clm'
    self.tokens_per_byte = data.val_tokens / data.val_bytes if data.val_bytes and clm else 0.0
    self.is_main = jax.process_index() == 0
    self.writer = metrics_lib.MetricsWriter(
        workdir, enabled=self.is_main,
        tracker=tracking.make_tracker(config, workdir) if self.is_main else None)
    self.progress = Progress(config.train.num_steps, start_step, self.tokens_per_step)
    self.constants = dict(constants or {})  # fields every record repeats (a fine-tune's counts)

  def record(self, step: int, step_metrics: dict[str, Any],
             evaluate_now: Callable[[], dict[str, float]] | None) -> dict[str, Any]:
    record = {'step': step, **{k: float(v) for k, v in step_metrics.items()},
              **self.progress.interval(step),
              **self._scaling(step)}
    if self.peak:  # model FLOPs only: rematerialised recomputation is not useful work
      record['mfu'] = flops.mfu(record['tokens_per_s'] * self.full_flops_per_token,
                                self.peak * jax.device_count())
    if evaluate_now is not None:
      eval_start = time.perf_counter()
      record.update(evaluate_now())
      self.progress.interval(step)  # keep evaluation time out of the next interval's throughput
      record['eval_time'] = time.perf_counter() - eval_start
    self.writer.write(record)
    if self.is_main:
      logging.info(self.progress.line(record))
    return record

  def record_missing_final_eval(self, step: int, evaluate_now: Callable[[], dict[str, float]],
                                workdir: str, train_metrics: dict[str, float]) -> None:
    """A run resumed at its last step writes nothing more; if the final eval record was lost
    (cut off by a crash), it is measured again from the restored state and written, with the
    step's train metrics that its checkpoint saved (its timings cannot be measured again)."""
    result = evaluate_now()  # every process takes part in the evaluation
    if self.is_main and not any(row.get('step') == step and EVAL_KEY in row
                                for row in run_dir.read_metrics(workdir)):
      self.writer.write({'step': step, **train_metrics, **result, **self._scaling(step)})
      logging.info('Wrote the missing final eval record of step %d: eval %.4f.', step,
                   result[EVAL_KEY])

  def _scaling(self, step: int) -> dict[str, Any]:
    return {**evaluate.scaling_record(self.model_cfg, self.seq_len, step * self.tokens_per_step),
            **self.constants}

  def close(self) -> None:
    self.writer.close()
