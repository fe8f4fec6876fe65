"""Synthetic IsoFLOP sweeps drawn from a known law, in an accounting that is not C = 6ND.

Ground truth is the Chinchilla paper's own fit (Hoffmann et al. 2022, eq. 10): E=1.69, A=406.4,
B=410.7, alpha=0.34, beta=0.28, in total parameters N and tokens D. Compute is what a GPT spends:
6N per token plus a term growing as sqrt(N) (attention over the context and the readout, whose
share falls with size: 50% of 6N at N=1e8, 16% at 1e9), so every derived number (D_opt, the
allocation, the holdout's optimum) is wrong if it is computed as C/(6N). The records also carry
Kaplan's view: non-embedding N (total minus an embedding whose share falls with N) and
C = 6·N_ne·D.

The true compute-optimal N of a budget is found here by scipy's scalar minimiser on the exact
C(N, D): an independent reference for the fits' own solver.
"""

import numpy as np
import scipy.optimize

from gptjax.cost import chinchilla
from gptjax.scaling import records as records_lib

TRUE = chinchilla.ChinchillaFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20)
SQRT_TERM = 3e4  # FLOPs per token per sqrt(N) beyond 6N
HALF_EMBEDDING = 1e8  # the N at which half of the parameters are embeddings


def flops_per_token(n):
  n = np.asarray(n, np.float64)
  return 6 * n + SQRT_TERM * np.sqrt(n)


def non_embedding(n):
  """Kaplan's N: the embedding share falls from 91% at N=1e7 to 50% at 1e8 and 9% at 1e9."""
  n = np.asarray(n, np.float64)
  return n * n / (n + HALF_EMBEDDING)


def true_optimum(budget: float) -> tuple[float, float]:
  """(N_opt, D_opt) of TRUE under C = flops_per_token(N)·D, by a bounded scalar search."""
  along_budget = lambda log_n: float(TRUE.predict(np.exp(log_n),
                                                  budget / flops_per_token(np.exp(log_n))))
  found = scipy.optimize.minimize_scalar(along_budget, bounds=(np.log(1e5), np.log(1e13)),
                                         method='bounded', options=dict(xatol=1e-9))
  n_opt = float(np.exp(found.x))
  return n_opt, budget / float(flops_per_token(n_opt))


def record(name: str, n: float, compute: float, loss_factor: float = 1.0, **extra) -> dict:
  """One final record of a run of N total parameters spending `compute` FLOPs."""
  d = compute / float(flops_per_token(n))
  n_ne = float(non_embedding(n))
  return dict(run=name, budget=records_lib.design_budget(name), flops_full=compute,
              params_total=n, tokens_seen=d, flops_kaplan=6 * n_ne * d,
              params_non_embedding=n_ne, eval_loss=float(TRUE.predict(n, d)) * loss_factor,
              **extra)


def isoflop_sweep(noise: float = 0.002, seed: int = 0, budgets=BUDGETS) -> list[dict]:
  """Final records: 7 sizes per budget from N_opt/4 to 4 N_opt (true optimum); each run's
  compute misses its budget by <= 2% (whole steps); multiplicative noise `noise` on the loss."""
  rng = np.random.default_rng(seed)
  rows = []
  for budget in budgets:
    n_opt, _ = true_optimum(budget)
    for factor in np.geomspace(0.25, 4, 7):
      n = n_opt * factor
      name = f'c{records_lib.budget_tag(budget)}_n{n:.0f}'
      rows.append(record(name, n, budget * rng.uniform(0.98, 1.02),
                         float(np.exp(rng.normal(0, noise)))))
  return rows


def training_curves(finals: list[dict]) -> list[dict]:
  """Every eval of each run: at 1/4, 1/2, 3/4 and all of its final record's compute, noise-free;
  `step` numbers them."""
  rows = []
  for final in finals:
    for step, fraction in enumerate((0.25, 0.5, 0.75, 1.0), start=1):
      rows.append(record(final['run'], final['params_total'], final['flops_full'] * fraction,
                         step=step, train_loss=0.0))
  return rows
