"""Text from a trained model: KV-cache decoding, sampling rules and beam search
(`python -m gptjax.generate`, docs/generation-and-cost.md)."""

from gptjax import lazy_exports

SUBMODULES = ('beam_search', 'decoding', 'sampling')
# Public names -> the submodule that defines each.
NAMES = {'generate': 'decoding', 'SamplingConfig': 'sampling'}
__all__ = [*SUBMODULES, *NAMES]
__getattr__, __dir__ = lazy_exports(__name__, SUBMODULES, NAMES)
