"""The fine-tuning method of a model and its sizes: the `finetune` section's model-shaping fields.

`GPTConfig.peft` holds one; what each method adds and trains is in `gptjax/model/peft.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

METHODS = ('full', 'lora', 'adapter', 'prefix', 'prompt')
LORA_TARGETS = ('query', 'key', 'value', 'out', 'up', 'down', 'gate')


@dataclasses.dataclass(frozen=True)
class PeftConfig:
  """The method and its sizes; `GPTConfig.from_run_config` builds it from `config.finetune`."""

  method: str = 'full'
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ('query', 'value')
  adapter_dim: int = 16
  prefix_len: int = 8
  prompt_len: int = 8

  def __post_init__(self):
    def check(ok: bool, message: str):
      if not ok:
        raise ValueError(f'Invalid finetune config: {message}')

    check(self.method in METHODS, f'method={self.method!r}; choose one of {METHODS}.')
    for name in ('lora_rank', 'adapter_dim', 'prefix_len', 'prompt_len'):
      value = getattr(self, name)
      check(isinstance(value, int) and value >= 1,
            f'{name}={value!r} must be a whole number of at least 1.')
    check(self.lora_alpha > 0, f'lora_alpha={self.lora_alpha} must be positive: the update is '
          'scaled by lora_alpha / lora_rank.')
    targets = self.lora_targets
    check(isinstance(targets, tuple) and len(targets) > 0,
          f'lora_targets={targets!r} must be a non-empty tuple of names from {LORA_TARGETS}.')
    unknown = [name for name in targets if name not in LORA_TARGETS]
    check(not unknown, f'lora_targets names {unknown}, which are not projections; choose from '
          f'{LORA_TARGETS}.')
    check(len(set(targets)) == len(targets), f'lora_targets={targets} names a projection twice.')

  @classmethod
  def from_config(cls, finetune_config: Any) -> PeftConfig:
    """Reads this class's fields from a `finetune` section (a ConfigDict or dict) and leaves the
    section's other fields to the pipeline; `lora_targets` is a comma-separated string there."""
    values = {field.name: finetune_config[field.name] for field in dataclasses.fields(cls)
              if field.name in finetune_config}
    if isinstance(values.get('lora_targets'), str):
      values['lora_targets'] = tuple(name.strip() for name in values['lora_targets'].split(',')
                                     if name.strip())
    return cls(**values)

  def model_problem(self, mlp: str) -> str | None:
    """What stops this config from adapting a model with this MLP, with the fix; None if nothing."""
    if self.method == 'lora' and 'gate' in self.lora_targets and mlp != 'swiglu':
      return (f"finetune.lora_targets names 'gate', which only a SwiGLU MLP has (model.mlp="
              f"{mlp!r}); drop 'gate' from lora_targets.")
    return None

  @property
  def position_offset(self) -> int:
    """Slots in front of the tokens: the prefix or the prompt takes positions 0..P-1, so the model
    adds P to every position of the tokens it is given."""
    return {'prefix': self.prefix_len, 'prompt': self.prompt_len}.get(self.method, 0)
