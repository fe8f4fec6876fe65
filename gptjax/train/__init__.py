"""Training: the pure train and eval steps, the optimizer, the loop with its records, progress,
checkpoints and stop signals, and the one place a run's config is checked before it starts."""

from gptjax.train import (checkpointing, checks, evaluate, loop, masked_tokens, metrics, optim,
                          progress, recorder, steps, stopping)
from gptjax.train.checks import check_one_step_per_call, check_run_config
from gptjax.train.loop import (abstract_train_state, check_unchanged, close_run, create_train_state,
                               global_batch, jit_steps, load_params, restore_or_start, run_loop,
                               take_workdir, train_and_evaluate)
from gptjax.train.recorder import Recorder
from gptjax.train.steps import TrainState, eval_step, train_step
