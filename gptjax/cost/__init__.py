"""What a model costs: parameter counts, FLOPs per token (the one formula), MFU, the Chinchilla
law's compute-optimal split, and the training and serving cost estimator."""

from gptjax.cost import chinchilla, estimator, flops
from gptjax.cost.chinchilla import CHINCHILLA_PARAMS, ChinchillaFit
from gptjax.cost.estimator import (HOFFMANN_2022_FIT, chinchilla_tokens, kv_cache_bytes, serving_estimate,
                                    training_estimate, training_time_s)
