"""Hugging Face GPT-2 in and out (`python -m gptjax.convert from-hf|to-hf`, docs/interop.md)."""

from gptjax import lazy_exports

SUBMODULES = ('commands', 'hf_gpt2')
# Public names -> the submodule that defines each.
NAMES = {'SAFETENSORS': 'commands', 'TORCH_BIN': 'commands', 'export_hf': 'commands',
         'import_hf': 'commands', 'read_hf_checkpoint': 'commands'}
__all__ = [*SUBMODULES, *NAMES]
__getattr__, __dir__ = lazy_exports(__name__, SUBMODULES, NAMES)
