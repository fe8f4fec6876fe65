"""How fast approach 3's bootstrap refits a table: `laws.fit_chinchilla(..., n_bootstrap=S)`.

  python -m experiments.bench_bootstrap [--points=250 --refits=1000 --loop]

The points are a synthetic sweep drawn from Chinchilla's published law (Hoffmann et al. 2022:
E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28): model sizes from 1e7 to 1e10 parameters, each
trained on 10 token counts from 1 to 1000 tokens per parameter, with 1% multiplicative noise.

The bootstrap refits every resample from 3 starts (the full fit's optimum and the resample's 2
best grid points) side by side in one batched BFGS. `--loop` also runs the same refits one
scipy BFGS at a time, on the same resamples from the same starts, and prints how far apart the two
sets of intervals and refits are: the batched optimiser must change the speed, not the answer.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.optimize
from absl import app, flags

from gptjax.cost import chinchilla
from gptjax.scaling import huber, laws

_POINTS = flags.DEFINE_integer('points', 250, 'Points in the table (a multiple of 10).')
_REFITS = flags.DEFINE_integer('refits', 1000, 'Bootstrap resamples.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the noise and of the resamples.')
_LOOP = flags.DEFINE_bool('loop', False, 'Also time one scipy BFGS per start and resample '
                          '(minutes) and compare its intervals.')

TRUE = chinchilla.ChinchillaFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
NAMES = chinchilla.CHINCHILLA_PARAMS + ('n_exponent', 'd_exponent')
DELTA = 1e-3


def sweep_points(n_points: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  sizes = np.geomspace(1e7, 1e10, n_points // 10)
  n = np.repeat(sizes, 10)
  d = n * np.tile(np.geomspace(1, 1000, 10), len(sizes))
  noise = np.exp(np.random.default_rng(seed).normal(0, 0.01, len(n)))
  return n, d, TRUE.predict(n, d) * noise


def scipy_bfgs(start: np.ndarray, weights_P: np.ndarray, points: huber.Points):
  def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
    value_1, grad_1x5 = huber.objective(theta[None], weights_P[None], points, DELTA)
    return float(value_1[0]), grad_1x5[0]
  return scipy.optimize.minimize(objective, start, jac=True, method='BFGS',
                                 options=dict(maxiter=2000))


def loop_refits(fit: chinchilla.ChinchillaFit, n, d, l, n_refits: int, seed: int) -> np.ndarray:
  """[S, 5] the bootstrap of `fit_chinchilla`, one scipy BFGS per start: the same resamples
  (drawn as it draws them) and the same 3 starts each."""
  theta = np.log([fit.A, fit.B, fit.E]).tolist() + [fit.alpha, fit.beta]
  points = huber.Points(n, d, l)
  per_point_GxP = huber.huber_per_point(huber.GRID_Gx5, points, DELTA)
  drawn_SxP = np.random.default_rng(seed).integers(0, len(l), (n_refits, len(l)))
  samples = []
  for drawn_P in drawn_SxP:
    weights_P = np.bincount(drawn_P, minlength=len(l)).astype(np.float64)
    best_2 = np.argsort(per_point_GxP @ weights_P, kind='stable')[:2]
    starts_3x5 = np.concatenate([[theta], huber.GRID_Gx5[best_2]])
    a, b, e, alpha, beta = min((scipy_bfgs(start, weights_P, points) for start in starts_3x5),
                               key=lambda result: result.fun).x
    samples.append([np.exp(e), np.exp(a), np.exp(b), alpha, beta])
  return np.array(samples)


def with_exponents(samples_Sx5: np.ndarray) -> np.ndarray:
  alpha, beta = samples_Sx5[:, 3], samples_Sx5[:, 4]
  return np.column_stack([samples_Sx5, beta / (alpha + beta), alpha / (alpha + beta)])


def main(argv) -> None:
  del argv
  n, d, l = sweep_points(_POINTS.value, _SEED.value)
  start = time.perf_counter()
  fit = laws.fit_chinchilla(n, d, l)
  fit_s = time.perf_counter() - start
  start = time.perf_counter()
  boot = laws.fit_chinchilla(n, d, l, n_bootstrap=_REFITS.value, seed=_SEED.value)
  boot_s = time.perf_counter() - start - fit_s
  print(f'points {len(l)}, refits {_REFITS.value}')
  print(f'full fit (16 grid starts, scipy BFGS): {fit_s:.2f} s')
  print(f'bootstrap, batched BFGS: {boot_s:.2f} s, {_REFITS.value / boot_s:.0f} refits/s')
  if not _LOOP.value:
    return
  start = time.perf_counter()
  loop_Sx5 = loop_refits(fit, n, d, l, _REFITS.value, _SEED.value)
  loop_s = time.perf_counter() - start
  print(f'bootstrap, one scipy BFGS per start: {loop_s:.2f} s, {_REFITS.value / loop_s:.1f} '
        f'refits/s ({loop_s / boot_s:.1f}x the batched time)')
  batched_SxK, loop_SxK = with_exponents(boot.bootstrap), with_exponents(loop_Sx5)
  same = np.all(np.isclose(batched_SxK, loop_SxK, rtol=1e-4, atol=0), axis=1)
  print(f'refits equal to 1e-4 in every parameter: {same.sum()} of {len(same)}')
  print('95% intervals, batched | loop:')
  for name, (lo, hi), (loop_lo, loop_hi) in zip(
      NAMES, laws.central_interval(batched_SxK, 0.95), laws.central_interval(loop_SxK, 0.95)):
    print(f'  {name:10s} [{lo:.5g}, {hi:.5g}] | [{loop_lo:.5g}, {loop_hi:.5g}]')


if __name__ == '__main__':
  app.run(main)
