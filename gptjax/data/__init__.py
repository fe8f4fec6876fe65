"""Documents to batches: corpus sources and split, tokenizers, the token cache, the grain pipeline,
the masked-LM corruption, and the checks of the `data` section (docs/data.md)."""

from gptjax import lazy_exports

SUBMODULES = ('checks', 'corpus', 'hf_source', 'masking', 'pipeline', 'prepare', 'split_hash',
              'tokenizer', 'tokens')
# Public names -> the submodule that defines each.
NAMES = {'check_config': 'checks', 'Data': 'pipeline', 'Windows': 'pipeline', 'build_data':
         'pipeline', 'local_batch_size': 'pipeline', 'row_shape': 'pipeline',
         'window_batches': 'pipeline', 'BPETokenizer': 'tokenizer', 'Tokenizer':
         'tokenizer', 'gpt2_bpe': 'tokenizer', 'load_or_train_tokenizer': 'tokenizer',
         'load_tokenizer': 'tokenizer'}
__all__ = [*SUBMODULES, *NAMES]
__getattr__, __dir__ = lazy_exports(__name__, SUBMODULES, NAMES)
