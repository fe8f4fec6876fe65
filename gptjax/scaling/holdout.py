"""The honest test of a scaling law: fitted without the largest budget, asked to predict it.

`holdout_extrapolation` holds out every run of the largest budget and fits both laws on the others:
L(C) on the frontier of their final evaluations (each budget's best), L(N, D) (approach 3) on their
seed means.
`holdout_check` then compares what approach 3 calls that budget's optimum (its N_opt and loss,
solving the sweep's own C(N, D)) with what the budget measured.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from gptjax.cost.chinchilla import ChinchillaFit
from gptjax.scaling import accounting, laws, replicas
from gptjax.scaling.isoflop import IsoFLOPResult
from gptjax.scaling.records import column, design_budgets, final_records

HOLDOUT_TARGET = 0.02  # the largest error the held-out budget's predicted optimal loss may have
INTERVAL_RTOL = 1e-6  # how far apart two N_opt intervals' ends may be and still touch (relative)


@dataclasses.dataclass(frozen=True)
class HoldoutResult:
  """Laws fitted without the largest budget, against what that budget measured."""

  budget: float
  measured_best_loss: float
  power_law_prediction: float  # L(C) fitted on the smaller budgets' frontier; NaN without one
  power_law_missing: str  # why there is no L(C) prediction ('' when there is one)
  run_params: np.ndarray
  run_loss: np.ndarray
  run_prediction: np.ndarray  # L(N, D) fitted on the smaller budgets' seed means
  law: ChinchillaFit  # that L(N, D), with its bootstrap refits if asked for
  relation: accounting.ComputeRelation  # the sweep's C(N, D), for the law's optimum

  @property
  def power_law_relative_error(self) -> float:
    return (self.power_law_prediction - self.measured_best_loss) / self.measured_best_loss

  @property
  def max_run_relative_error(self) -> float:
    return float(np.max(np.abs(self.run_prediction - self.run_loss) / self.run_loss))


def holdout_extrapolation(rows: Sequence[Mapping[str, Any]], *, compute_key: str = 'flops_full',
                          params_key: str = 'params_total', tokens_key: str = 'tokens_seen',
                          loss_key: str = 'eval_loss', budget_rtol: float = 0.1,
                          n_bootstrap: int = 0) -> HoldoutResult:
  """Holds out every run of the largest compute budget, fits both laws on the others, predicts it.

  `rows` are a sweep's eval records, each naming its 'run' (as `records.load_sweep` gives them); a
  run's last record is its final one. Runs are grouped into budgets by design where their names
  carry one, else by final compute. Only final evaluations are fitted: a mid-schedule evaluation
  is not what a run of that length reaches.
  """
  unnamed = sum('run' not in row for row in rows)
  if unnamed:
    raise ValueError(f"{unnamed} of {len(rows)} records name no 'run'; pass every eval record of "
                     'the sweep as records.load_sweep returns them.')
  final = final_records(rows)
  compute, params, tokens = laws.positive_columns(final, compute_key, params_key, tokens_key)
  groups = replicas.group_budgets(compute, budget_rtol, design_budgets(final))
  if len(groups) < 3:
    raise ValueError(f'Holding out one budget needs at least 3 budgets, found {len(groups)}; '
                     'add compute budgets to the sweep.')
  held = [final[i] for i in groups[-1]]
  held_runs = {row['run'] for row in held}
  rest = [row for row in final if row['run'] not in held_runs]
  budget = float(np.exp(np.mean(np.log(compute[groups[-1]]))))
  try:  # 3 or 4 budgets leave too few frontier points for L(C); approach 3 is still tested
    power_law = laws.fit_power_law_with_floor(
        *replicas.best_per_budget(rest, compute_key, loss_key, budget_rtol))
    prediction, missing = float(power_law.predict(budget)), ''
  except ValueError as e:
    prediction, missing = float('nan'), str(e)
  law, _ = replicas.fit_seed_means(rest, compute_key=compute_key, params_key=params_key,
                                   tokens_key=tokens_key, loss_key=loss_key,
                                   budget_rtol=budget_rtol, n_bootstrap=n_bootstrap)
  n, d, loss = (column(held, key) for key in (params_key, tokens_key, loss_key))
  relation = accounting.ComputeRelation.from_columns(compute, params, tokens,
                                                     f'{compute_key} / {tokens_key} per size')
  return HoldoutResult(
      budget=budget, measured_best_loss=float(loss.min()),
      power_law_prediction=prediction, power_law_missing=missing, run_params=n, run_loss=loss,
      run_prediction=law.predict(n, d), law=law, relation=relation)


def _measured_optimum(holdout: HoldoutResult, isoflop: IsoFLOPResult | None
                      ) -> tuple[float, float, str, tuple[float, float]]:
  """(N_opt, loss there, how it was measured, N_opt's interval) of the held-out budget: approach 2's
  parabola minimum where it found one for that budget (from that budget's runs alone) with its
  measured interval (`IsoFLOPResult.n_opt_interval`), else the best run, exactly."""
  if isoflop is not None:
    # The same runs' geometric mean over cells and over runs differ by about 1% with replicas;
    # distinct budgets differ by far more than 10%.
    same = np.flatnonzero(np.isclose(isoflop.budgets, holdout.budget, rtol=0.1))
    if len(same):
      n_opt = float(isoflop.n_opt[same[0]])
      interval = isoflop.n_opt_interval(same[0])
      interval = interval if np.isfinite(interval).all() else (n_opt, n_opt)
      return n_opt, float(isoflop.loss_min[same[0]]), 'IsoFLOP minimum', interval
  best = int(np.argmin(holdout.run_loss))
  n_best = float(holdout.run_params[best])
  return n_best, float(holdout.run_loss[best]), 'best run', (n_best, n_best)


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
  """Whether two intervals share a point, either widened by INTERVAL_RTOL of its ends."""
  (lo_a, hi_a), (lo_b, hi_b) = a, b
  return bool(lo_a * (1 - INTERVAL_RTOL) <= hi_b * (1 + INTERVAL_RTOL)
              and lo_b * (1 - INTERVAL_RTOL) <= hi_a * (1 + INTERVAL_RTOL))


def holdout_check(holdout: HoldoutResult, isoflop: IsoFLOPResult | None = None,
                  level: float = 0.95, target: float = HOLDOUT_TARGET) -> dict[str, Any]:
  """Approach 3 fitted without the largest budget, asked for that budget's optimum under the
  sweep's C(N, D): it passes when its compute-optimal loss is within `target` of the measured one
  and the `level` interval of its N_opt over the bootstrap refits overlaps the measured N_opt's own
  interval (without refits, the loss alone decides).

  The measured optimum carries its own error (a parabola's minimum, from noisy losses, on a curve
  that is not a parabola), so a point compared with an interval would fail data drawn from the law
  itself; two intervals are compared instead.
  """
  law = holdout.law
  n_opt, d_opt = (float(x) for x in accounting.compute_optimal(law, holdout.budget,
                                                               holdout.relation))
  loss = float(law.predict(n_opt, d_opt))
  measured_n, measured_loss, measured_by, measured_interval = _measured_optimum(holdout, isoflop)
  error = (loss - measured_loss) / measured_loss
  lo = hi = float('nan')
  if len(law.bootstrap):
    with np.errstate(all='ignore'):  # a refit whose exponents leave no optimum is left out
      n_opt_S = accounting.compute_optimal(law.refits(), holdout.budget, holdout.relation)[0]
    finite_Sx1 = n_opt_S[np.isfinite(n_opt_S), None]
    lo, hi = (float(x) for x in laws.central_interval(finite_Sx1, level)[0])
  overlap = _overlap((lo, hi), measured_interval) if len(law.bootstrap) else None
  return dict(budget=holdout.budget, predicted_loss=loss, measured_loss=measured_loss,
              loss_error=error, target=target, predicted_n_opt=n_opt, predicted_d_opt=d_opt,
              n_opt_interval=[lo, hi], level=level, measured_n_opt=measured_n,
              measured_by=measured_by, measured_n_opt_interval=list(measured_interval),
              n_opt_overlap=overlap, passed=abs(error) <= target and overlap is not False)
