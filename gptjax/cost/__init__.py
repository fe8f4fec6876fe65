"""What a model costs: parameter counts, FLOPs per token (the one formula), MFU, the Chinchilla
law's compute-optimal split, and the training and serving cost estimator."""

from gptjax import lazy_exports

SUBMODULES = ('chinchilla', 'estimator', 'flops')
# Public names -> the submodule that defines each.
NAMES = {'CHINCHILLA_PARAMS': 'chinchilla', 'ChinchillaFit': 'chinchilla', 'HOFFMANN_2022_FIT':
         'estimator', 'chinchilla_tokens': 'estimator', 'kv_cache_bytes': 'estimator',
         'serving_estimate': 'estimator', 'training_estimate': 'estimator',
         'training_time_s': 'estimator'}
__all__ = [*SUBMODULES, *NAMES]
__getattr__, __dir__ = lazy_exports(__name__, SUBMODULES, NAMES)
