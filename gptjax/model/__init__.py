"""The GPT: its config and checks, the flax modules with logical axis names, the attention
backends, the SP/muP parametrization and the fine-tuning methods' parameters and layers.

It imports nothing of data, training, sharding or launching, and queries no devices."""

from gptjax import lazy_exports

SUBMODULES = ('attention', 'config', 'gpt', 'parametrization', 'peft', 'peft_config', 'peft_layers')
# Public names -> the submodule that defines each.
NAMES = {'GPTConfig': 'config', 'check_config': 'config', 'GPT': 'gpt', 'MLP': 'gpt',
         'Block': 'gpt', 'CausalSelfAttention': 'gpt', 'PeftConfig': 'peft_config'}
__all__ = [*SUBMODULES, *NAMES]
__getattr__, __dir__ = lazy_exports(__name__, SUBMODULES, NAMES)
