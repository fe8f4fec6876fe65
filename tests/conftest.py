"""Test setup: the repository on sys.path, 8 simulated CPU devices, strict rank promotion.

XLA_FLAGS must be set before JAX initialises its backend, so it is set here, at collection time.
"""

import os
import pathlib
import sys

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

import jax  # noqa: E402  (after XLA_FLAGS)

jax.config.update('jax_numpy_rank_promotion', 'raise')
