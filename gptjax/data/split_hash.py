"""Stable hashes that decide which documents validate: the same on every machine, run and Python
(sha256 and SplitMix64, not Python's salted `hash`), so a document keeps its split when files are
added or the corpus is read again."""

from __future__ import annotations

import hashlib

import numpy as np


def hash_u64(name: str) -> int:
  return int.from_bytes(hashlib.sha256(name.encode('utf-8')).digest()[:8], 'big')


def hash_unit(name: str) -> float:
  """A stable pseudo-random number in [0, 1) for `name`, the same on every machine and run."""
  return hash_u64(name) / 2.0**64


def splitmix64(x: np.ndarray) -> np.ndarray:
  """A fast, well-mixed integer hash (SplitMix64 finaliser), vectorised; uint64 arithmetic wraps."""
  x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def row_units(name: str, rows: np.ndarray) -> np.ndarray:
  """Stable numbers in [0, 1) for the rows (or records) `rows` of the file or table `name`."""
  return splitmix64(np.asarray(rows, np.uint64) ^ np.uint64(hash_u64(name))) / 2.0**64


def validation_mask(units: np.ndarray, val_fraction: float) -> np.ndarray:
  """units < val_fraction, but never an empty split: the extreme units move over if needed."""
  is_val = units < val_fraction
  if not is_val.any():
    is_val[np.argmin(units)] = True
  if is_val.all():
    is_val[np.argmax(units)] = False
  return is_val
