"""Training: the pure train and eval steps, the optimizer, the loop with its records, progress,
checkpoints and stop signals, and the one place a run's config is checked before it starts."""

from gptjax import lazy_exports

SUBMODULES = ('checkpointing', 'checks', 'evaluate', 'loop', 'masked_tokens', 'metrics', 'optim',
              'progress', 'recorder', 'steps', 'stopping')
# Public names -> the submodule that defines each.
NAMES = {'check_one_step_per_call': 'checks', 'check_run_config': 'checks',
         'abstract_train_state': 'loop', 'check_unchanged': 'loop', 'close_run': 'loop',
         'create_train_state': 'loop', 'global_batch': 'loop', 'jit_steps': 'loop',
         'load_checkpoint': 'loop', 'load_params': 'loop', 'restore_or_start': 'loop',
         'run_loop': 'loop',
         'state_initializer': 'loop',
         'take_workdir': 'loop', 'train_and_evaluate': 'loop', 'Recorder': 'recorder',
         'TrainState': 'steps', 'eval_step': 'steps', 'train_step': 'steps'}
__all__ = [*SUBMODULES, *NAMES]
__getattr__, __dir__ = lazy_exports(__name__, SUBMODULES, NAMES)
