"""Approach 3's batched objective and BFGS against independent references: scipy's logsumexp and
Huber, finite differences, and scipy's BFGS run one fit at a time on the same resamples."""

import numpy as np
import pytest
import scipy.optimize
import scipy.special

from gptjax.cost import chinchilla
from gptjax.scaling import huber as scaling_huber, laws

TRUE = chinchilla.ChinchillaFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
DELTA = 1e-3


def grid_points(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """7 sizes x 7 token counts, as in test_scaling."""
  n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e10, 7), np.geomspace(1e9, 1e12, 7)))
  loss = TRUE.predict(n, d) * np.exp(np.random.default_rng(seed).normal(0, noise, n.shape))
  return n, d, loss


def scipy_fit(start: np.ndarray, weights_P: np.ndarray, points: scaling_huber.Points):
  def objective(theta):
    value, grad = scaling_huber.objective(theta[None], weights_P[None], points, DELTA)
    return float(value[0]), grad[0]
  with np.errstate(all='ignore'):
    return scipy.optimize.minimize(objective, start, jac=True, method='BFGS',
                                   options=dict(maxiter=2000))


def test_objective_and_gradient_match_logsumexp_huber_and_finite_differences():
  n, d, loss = grid_points(noise=0.01)
  points = scaling_huber.Points(n, d, loss)
  rng = np.random.default_rng(0)
  theta_Kx5 = np.array([[6.0, 6.0, 0.5, 0.34, 0.28], [5.0, 7.0, 0.0, 0.5, 0.2],
                        [20.0, 25.0, -1.0, 2.0, 2.0]])
  weights_KxP = rng.integers(0, 3, (3, len(loss))).astype(float)
  value_K, grad_Kx5 = scaling_huber.objective(theta_Kx5, weights_KxP, points, DELTA)
  for theta, weights, value, grad in zip(theta_Kx5, weights_KxP, value_K, grad_Kx5):
    a, b, e, alpha, beta = theta
    lse = scipy.special.logsumexp([a - alpha * np.log(n), b - beta * np.log(d),
                                   np.full(len(n), e)], axis=0)
    reference = np.sum(weights * scipy.special.huber(DELTA, lse - np.log(loss))) / DELTA
    assert value == pytest.approx(reference, rel=1e-12)
    at = lambda x: scaling_huber.objective(x[None], weights[None], points, DELTA)[0][0]
    step = 1e-7
    numeric = [(at(theta + step * unit) - at(theta - step * unit)) / (2 * step)
               for unit in np.eye(5)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-4 * np.abs(grad).max())
  per_point_KxP = scaling_huber.huber_per_point(theta_Kx5, points, DELTA)
  np.testing.assert_allclose(np.sum(per_point_KxP * weights_KxP, axis=1), value_K, rtol=1e-12)


def test_batched_bfgs_reaches_scipy_bfgs_optimum_from_each_start():
  """Warm starts and far grid starts, each on its own weights: the same objective to 1e-9."""
  n, d, loss = grid_points(noise=0.01)
  points = scaling_huber.Points(n, d, loss)
  rng = np.random.default_rng(1)
  starts_Kx5 = np.concatenate([np.tile([6.0, 6.0, 0.5, 0.34, 0.28], (4, 1)),
                               scaling_huber.GRID_Gx5[rng.choice(4500, 4, replace=False)]])
  weights_KxP = np.stack([np.bincount(rng.integers(0, len(loss), len(loss)), minlength=len(loss))
                          for _ in starts_Kx5]).astype(float)
  values_K, thetas_Kx5 = scaling_huber.minimise(starts_Kx5, weights_KxP, points, DELTA)
  for start, weights, value, theta in zip(starts_Kx5, weights_KxP, values_K, thetas_Kx5):
    reference = scipy_fit(start, weights, points)
    assert value <= reference.fun * (1 + 1e-9), (start, value, reference.fun)
    if value == pytest.approx(reference.fun, rel=1e-9):  # one optimum, not another basin's
      np.testing.assert_allclose(theta, reference.x, rtol=1e-4, atol=1e-5)


def test_bootstrap_equals_one_scipy_fit_per_start_and_resample():
  """fit_chinchilla's batched bootstrap against the plain loop on the same resamples (drawn as it
  draws them) from the same 3 starts: every refit equal to 1e-4."""
  n, d, loss = grid_points(noise=0.01, seed=2)
  fit = laws.fit_chinchilla(n, d, loss, n_bootstrap=15, seed=3)
  points = scaling_huber.Points(n, d, loss)
  theta = np.array([np.log(fit.A), np.log(fit.B), np.log(fit.E), fit.alpha, fit.beta])
  per_point_GxP = scaling_huber.huber_per_point(scaling_huber.GRID_Gx5, points, DELTA)
  drawn_SxP = np.random.default_rng(3).integers(0, len(loss), (15, len(loss)))
  for drawn_P, refit in zip(drawn_SxP, fit.bootstrap):
    weights_P = np.bincount(drawn_P, minlength=len(loss)).astype(float)
    best_2 = np.argsort(per_point_GxP @ weights_P, kind='stable')[:2]
    results = [scipy_fit(start, weights_P, points)
               for start in np.concatenate([[theta], scaling_huber.GRID_Gx5[best_2]])]
    a, b, e, alpha, beta = min(results, key=lambda r: r.fun).x
    np.testing.assert_allclose(refit, [np.exp(e), np.exp(a), np.exp(b), alpha, beta], rtol=1e-4)


def test_refits_derive_a_sample_per_refit():
  n, d, loss = grid_points(noise=0.01)
  fit = laws.fit_chinchilla(n, d, loss, n_bootstrap=8)
  assert fit.bootstrap.shape == (8, 5)
  n_opt_S, d_opt_S = fit.refits().compute_optimal(1e21)
  for row, n_opt, d_opt in zip(fit.bootstrap, n_opt_S, d_opt_S):
    one = chinchilla.ChinchillaFit(*row)
    assert (n_opt, d_opt) == pytest.approx(one.compute_optimal(1e21), rel=1e-12)
  lo, hi = fit.intervals['alpha']
  assert lo == pytest.approx(np.percentile(fit.bootstrap[:, 3], 2.5))
  assert hi == pytest.approx(np.percentile(fit.bootstrap[:, 3], 97.5))
