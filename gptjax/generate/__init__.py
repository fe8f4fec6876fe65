"""Text from a trained model: KV-cache decoding, sampling rules and beam search
(`python -m gptjax.generate`, docs/generation-and-cost.md)."""

from gptjax.generate import beam_search, decoding, sampling
from gptjax.generate.decoding import generate
from gptjax.generate.sampling import SamplingConfig
