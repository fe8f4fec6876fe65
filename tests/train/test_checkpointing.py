"""The per-array checkpoint checksum: its definition against a NumPy reference, its independence of
how an array is sharded, and that it notices one changed element and a swap of two."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gptjax.train import checkpointing


def _reference(x: np.ndarray) -> int:
  """sum_i (2i + 1) * bits(x_i) mod 2^32 over the C-order flat index, in Python integers."""
  bits = x.reshape(-1).view({4: np.uint32, 2: np.uint16, 1: np.uint8}[x.dtype.itemsize])
  return sum((2 * i + 1) * int(b) for i, b in enumerate(bits)) % (1 << 32)


@pytest.mark.parametrize('dtype', [np.float32, np.int32, jnp.bfloat16, np.bool_])
def test_checksum_matches_its_definition(dtype):
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(3, 5, 7)) * 100).astype(dtype)
  got = checkpointing.state_checksums({'x': jnp.asarray(x)})
  assert got == {'x': _reference(np.asarray(x))}


def test_checksum_does_not_depend_on_the_sharding():
  x = np.random.default_rng(1).normal(size=(8, 16)).astype(np.float32)
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ('a', 'b'))
  sharded = jax.device_put(x, NamedSharding(mesh, P('b', 'a')))
  assert checkpointing.state_checksums({'x': sharded}) == {'x': _reference(x)}


def test_one_changed_element_or_a_swap_changes_the_checksum():
  x = np.random.default_rng(2).normal(size=(64, 32)).astype(np.float32)
  base = checkpointing.state_checksums({'x': x})
  flipped = x.copy()
  flipped.view(np.uint32)[17, 3] ^= 1 << 9  # one bit of one element
  swapped = x.copy()
  swapped[[5, 40]] = swapped[[40, 5]]
  assert checkpointing.state_checksums({'x': flipped}) != base
  assert checkpointing.state_checksums({'x': swapped}) != base
