"""The GPT: its config and checks, the flax modules with logical axis names, the attention
backends, the SP/muP parametrization and the fine-tuning methods' parameters and layers.

It imports nothing of data, training, sharding or launching, and queries no devices."""

from gptjax.model import attention, config, gpt, parametrization, peft, peft_layers
from gptjax.model.config import GPTConfig, check_config
from gptjax.model.gpt import GPT, MLP, Block, CausalSelfAttention
