"""Approach 3's objective and a BFGS that minimises many copies of it at once (numpy only).

The objective (Hoffmann et al. 2022, appendix D.2) is the Huber loss of the log-sum-exp law
against the measured log losses,

  sum_p w_p · Huber_delta(LSE(a - alpha·log N_p, b - beta·log D_p, e) - log L_p) / delta,

over theta = (a, b, e, alpha, beta) with a = log A, b = log B, e = log E. Dividing by delta keeps
the objective near 1 so the optimiser's tolerances mean something; the minimiser is unchanged.
The weights w_p count how often point p is in the sample: 1 for the data as measured, a bootstrap
resample's multiplicities otherwise, so every resample is a weighted copy of the same arrays.

A bootstrap is a thousand small fits of 5 parameters. One at a time, each costs far more in the
optimiser's Python overhead than in arithmetic; `minimise` runs all of them as one array program.

Shape letters: K parameter vectors (fits run side by side), P data points, G grid points.
"""

from __future__ import annotations

import itertools

import numpy as np

# The paper's initialisation grid (appendix D.2), as (a, b, e, alpha, beta): 4500 points.
GRID_Gx5 = np.array(list(itertools.product(
    np.arange(0, 30, 5), np.arange(0, 30, 5), np.arange(-1, 1.5, 0.5),
    np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5))), dtype=np.float64)

# Fits evaluated together hold [K, P] arrays; past this many elements they go in slices, which
# bounds memory and keeps each slice in cache.
_CHUNK_ELEMENTS = 1 << 16


class Points:
  """The data in log space: log N, log D, log L, each [P]."""

  def __init__(self, params: np.ndarray, tokens: np.ndarray, loss: np.ndarray):
    self.log_n, self.log_d, self.log_l = np.log(params), np.log(tokens), np.log(loss)

  def __len__(self) -> int:
    return len(self.log_l)


def _softmax_terms(theta_Kx5: np.ndarray, points: Points):
  """Residuals log L̂ - log L [K, P] and the shares of L̂ of its three terms, each [K, P], at K
  parameter vectors. log L̂ is the log-sum-exp of a - alpha·log N, b - beta·log D and e, shifted
  by the largest so that no exponential overflows at any parameters a line search may try."""
  a, b, e, alpha, beta = (theta_Kx5[:, i:i + 1] for i in range(5))
  t_n_KxP, t_d_KxP = a - alpha * points.log_n, b - beta * points.log_d
  top_KxP = np.maximum(np.maximum(t_n_KxP, t_d_KxP), e)
  p_n_KxP, p_d_KxP = np.exp(t_n_KxP - top_KxP), np.exp(t_d_KxP - top_KxP)
  p_e_KxP = np.exp(e - top_KxP)
  total_KxP = p_n_KxP + p_d_KxP + p_e_KxP
  residual_KxP = top_KxP + np.log(total_KxP) - points.log_l
  return residual_KxP, p_n_KxP / total_KxP, p_d_KxP / total_KxP, p_e_KxP / total_KxP


def _huber_over_delta(r: np.ndarray, delta: float) -> np.ndarray:
  size = np.abs(r)
  return np.where(size <= delta, 0.5 * r * r / delta, size - 0.5 * delta)


def huber_per_point(theta_Kx5: np.ndarray, points: Points, delta: float) -> np.ndarray:
  """[K, P] each point's term of the objective at each parameter vector, so that the objective
  under any weights w_P is `huber_per_point(...) @ w_P` (how the grid is ranked for a resample)."""
  out_KxP = np.empty((len(theta_Kx5), len(points)))
  step = max(1, _CHUNK_ELEMENTS // len(points))
  for lo in range(0, len(theta_Kx5), step):
    residual_KxP = _softmax_terms(theta_Kx5[lo:lo + step], points)[0]
    out_KxP[lo:lo + step] = _huber_over_delta(residual_KxP, delta)
  return out_KxP


def objective(theta_Kx5: np.ndarray, weights_KxP: np.ndarray, points: Points,
              delta: float) -> tuple[np.ndarray, np.ndarray]:
  """The weighted objective [K] at K parameter vectors, each under its own weights, and its
  gradient [K, 5]. The derivative of Huber/delta is clip(r, ±delta)/delta; that of LSE with
  respect to each term is the term's softmax share."""
  value_K, grad_Kx5 = np.empty(len(theta_Kx5)), np.empty((len(theta_Kx5), 5))
  step = max(1, _CHUNK_ELEMENTS // len(points))
  for lo in range(0, len(theta_Kx5), step):
    part = slice(lo, lo + step)
    residual_KxP, s_n_KxP, s_d_KxP, s_e_KxP = _softmax_terms(theta_Kx5[part], points)
    w_KxP = weights_KxP[part]
    value_K[part] = np.sum(w_KxP * _huber_over_delta(residual_KxP, delta), axis=1)
    psi_KxP = w_KxP * np.clip(residual_KxP, -delta, delta) / delta
    g_n_KxP, g_d_KxP = psi_KxP * s_n_KxP, psi_KxP * s_d_KxP
    grad_Kx5[part] = np.stack([g_n_KxP.sum(1), g_d_KxP.sum(1), np.sum(psi_KxP * s_e_KxP, axis=1),
                               -(g_n_KxP @ points.log_n), -(g_d_KxP @ points.log_d)], axis=1)
  return value_K, grad_Kx5


def minimise(start_Kx5: np.ndarray, weights_KxP: np.ndarray, points: Points, delta: float, *,
             max_iter: int = 2000, gtol: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
  """BFGS from K starts at once, each fit on its own weights: (objective [K], theta [K, 5]).

  Each fit follows the textbook iteration by itself, as scipy's BFGS does: H starts as the
  identity, the direction is -H·g, a line search finds a step meeting the weak Wolfe conditions,
  and H gets the BFGS update where the step shows positive curvature. Only the fits still running
  are evaluated. A fit stops when its gradient's largest entry is below `gtol` (scipy's test),
  when its line search finds no lower point (rounding, at the optimum), or after `max_iter`
  iterations. From the same start it reaches the optimum scipy's BFGS reaches; a test checks.
  """
  x_Kx5 = np.array(start_Kx5, dtype=np.float64)
  f_K, g_Kx5 = objective(x_Kx5, weights_KxP, points, delta)
  f_before_K = f_K + np.linalg.norm(g_Kx5, axis=1) / 2  # makes the first step 1/|g| long
  h_Kx5x5 = np.tile(np.eye(5), (len(x_Kx5), 1, 1))
  running = np.flatnonzero(np.isfinite(f_K) & (np.max(np.abs(g_Kx5), axis=1) > gtol))
  for _ in range(max_iter):
    if not len(running):
      break
    g_Rx5 = g_Kx5[running]
    p_Rx5 = -np.einsum('rij,rj->ri', h_Kx5x5[running], g_Rx5)
    slope_R = np.sum(p_Rx5 * g_Rx5, axis=1)
    uphill = slope_R >= 0  # H lost positive definiteness to rounding: restart from -g
    if uphill.any():
      h_Kx5x5[running[uphill]] = np.eye(5)
      p_Rx5[uphill], slope_R[uphill] = -g_Rx5[uphill], -np.sum(g_Rx5[uphill]**2, axis=1)
    # The first trial step expects the last iteration's decrease again (Nocedal and Wright,
    # eq. 3.60, as scipy's BFGS): after a large fall a long step -H·g is not tried at full length.
    t_R = np.minimum(1.0, 2.02 * (f_K[running] - f_before_K[running]) / slope_R)
    t_R[~(t_R > 0)] = 1.0
    f_new_R, x_new_Rx5, g_new_Rx5 = _line_search(running, x_Kx5, f_K, p_Rx5, slope_R, t_R,
                                                 weights_KxP, points, delta)
    moved = f_new_R < f_K[running]  # False where the search failed (NaN)
    k = running[moved]
    s_Mx5, y_Mx5 = x_new_Rx5[moved] - x_Kx5[k], g_new_Rx5[moved] - g_Kx5[k]
    f_before_K[k] = f_K[k]
    x_Kx5[k], f_K[k], g_Kx5[k] = x_new_Rx5[moved], f_new_R[moved], g_new_Rx5[moved]
    sy_M = np.sum(s_Mx5 * y_Mx5, axis=1)
    curved = sy_M > 1e-12 * np.sqrt(np.sum(s_Mx5**2, 1) * np.sum(y_Mx5**2, 1))
    _update_inverse_hessian(h_Kx5x5, k[curved], s_Mx5[curved], y_Mx5[curved], sy_M[curved])
    running = k[np.max(np.abs(g_Kx5[k]), axis=1) > gtol]
  return f_K, x_Kx5


_ARMIJO, _CURVATURE, _MAX_TRIALS = 1e-4, 0.9, 40


def _line_search(running, x_Kx5, f_K, p_Rx5, slope_R, t_R, weights_KxP, points, delta):
  """For each running fit, a step t·p meeting the weak Wolfe conditions: (f, x, g) there.

  Starting from t in `t_R`, a step that does not lower f enough (Armijo) is cut, by the vertex of
  the parabola through f(0), f'(0) and f(t) while no acceptable step is known, else by bisection;
  a step after which f still falls steeply (curvature) is doubled, so a badly scaled H costs a few
  trials instead of many short iterations. After `_MAX_TRIALS` a fit keeps its longest step that
  met Armijo's condition; f is NaN for a fit that found none.
  """
  f_new_R = np.full(len(running), np.nan)
  x_new_Rx5, g_new_Rx5 = np.empty_like(p_Rx5), np.empty_like(p_Rx5)
  lo_R, hi_R = np.zeros(len(running)), np.full(len(running), np.inf)
  searching = np.arange(len(running))
  for _ in range(_MAX_TRIALS):
    k, t_S, slope_S = running[searching], t_R[searching], slope_R[searching]
    trial_Sx5 = x_Kx5[k] + t_S[:, None] * p_Rx5[searching]
    with np.errstate(all='ignore'):
      f_S, g_Sx5 = objective(trial_Sx5, weights_KxP[k], points, delta)
      armijo = f_S <= f_K[k] + _ARMIJO * t_S * slope_S  # False for NaN
      vertex_S = -slope_S * t_S**2 / (2 * (f_S - f_K[k] - slope_S * t_S))
    steep = armijo & (np.sum(g_Sx5 * p_Rx5[searching], axis=1) < _CURVATURE * slope_S)
    # Kept: a step meeting Armijo's condition, always longer than any met before it.
    f_new_R[searching[armijo]] = f_S[armijo]
    x_new_Rx5[searching[armijo]], g_new_Rx5[searching[armijo]] = trial_Sx5[armijo], g_Sx5[armijo]
    lo_R[searching[steep]] = t_S[steep]
    hi_R[searching[~armijo]] = t_S[~armijo]
    lo, hi = lo_R[searching], hi_R[searching]
    cut = np.where(lo > 0, 0.5 * (lo + hi),
                   np.clip(np.nan_to_num(vertex_S, nan=0.0), 0.1 * t_S, 0.5 * t_S))
    t_R[searching] = np.where(armijo, np.where(np.isfinite(hi), 0.5 * (lo + hi), 2 * t_S), cut)
    searching = searching[~armijo | steep]
    if not len(searching):
      break
  return f_new_R, x_new_Rx5, g_new_Rx5


def _update_inverse_hessian(h_Kx5x5, k, s_Mx5, y_Mx5, sy_M) -> None:
  """BFGS: H <- (I - rho s yᵀ) H (I - rho y sᵀ) + rho s sᵀ with rho = 1 / sᵀy, in place."""
  rho_M = 1 / sy_M
  left_Mx5x5 = np.eye(5) - rho_M[:, None, None] * s_Mx5[:, :, None] * y_Mx5[:, None, :]
  h_Mx5x5 = left_Mx5x5 @ h_Kx5x5[k] @ left_Mx5x5.transpose(0, 2, 1)
  h_Kx5x5[k] = h_Mx5x5 + rho_M[:, None, None] * s_Mx5[:, :, None] * s_Mx5[:, None, :]
