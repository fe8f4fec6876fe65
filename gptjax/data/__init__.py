"""Documents to batches: corpus sources and split, tokenizers, the token cache, the grain pipeline,
the masked-LM corruption, and the checks of the `data` section (docs/data.md)."""

from gptjax.data import checks, corpus, masking, pipeline, tokenizer, tokens
from gptjax.data.checks import check_config
from gptjax.data.pipeline import Data, Windows, build_data, local_batch_size, row_shape, window_batches
from gptjax.data.tokenizer import BPETokenizer, Tokenizer, gpt2_bpe, load_or_train_tokenizer, load_tokenizer
