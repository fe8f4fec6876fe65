"""Hugging Face GPT-2 in and out (`python -m gptjax.convert from-hf|to-hf`, docs/interop.md)."""

from gptjax.convert import commands, hf_gpt2
from gptjax.convert.commands import SAFETENSORS, TORCH_BIN, export_hf, import_hf, read_hf_checkpoint
