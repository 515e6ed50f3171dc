"""Simulate and re-estimate: virtual patients drawn from the forecast's own model, one or two
troughs each; how well their clearance and their next trough are recovered.

    python ops/bench/forecast_check.py [--patients 1000] [--levels 1]

Data drawn from the model itself show that the estimation works as the model says it should
(the fit, the censoring, the dose history); they do not show that the model fits a hospital's
patients (for that: an external evaluation on real levels, as the Pharmaceutics 2021 studies did).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from interpretation.pk.estimation import estimate, posterior_on_grid, predicted
from interpretation.pk.forecast import DRAWS, Antibodies, Level, Patient, forecast
from interpretation.pk.kinetics import (
    Covariates,
    Dose,
    PopPkModel,
    concentration,
    fasanmade_2009,
    individual,
)

START = datetime(2026, 1, 5, 9, 0)
INDUCTION_AND_MAINTENANCE_DAYS = (0, 14, 42, 98, 154, 210)  # weeks 0, 2, 6, then every 8 weeks
LIMIT_UG_PER_ML = 0.4  # a typical assay's lower limit: below it a level is censored


class Virtual(NamedTuple):
    cov: Covariates
    true_eta: tuple[float, float]
    doses: list[Dose]
    levels: list[Level]
    next_at: datetime


def virtual_patients(
    model: PopPkModel, count: int, levels: int, seed: int = 7, *, far: bool = False
) -> list[Virtual]:
    """Patients drawn from the model; `far`: the ones TDM is for, low albumin (2.5-3.2 g/dL),
    antibodies in a third, and deviations drawn twice as wide (levels up to 5x and more the
    typical prediction)."""
    rng = random.Random(seed)
    out = []
    infusion = model.infusion_hours / 24
    spread = 2.0 if far else 1.0
    for _ in range(count):
        cov = Covariates(
            weight_kg=rng.uniform(50, 110),
            albumin_g_per_dl=rng.uniform(2.5, 3.2) if far else min(max(rng.gauss(3.9, 0.4), 2.5), 5.0),
            antibodies=rng.random() < (0.33 if far else 0.07),
            female=rng.random() < 0.4,
        )
        eta = (
            rng.gauss(0, spread * math.sqrt(model.clearance_variance)),
            rng.gauss(0, spread * math.sqrt(model.central_volume_variance)),
        )
        mg = 5 * cov.weight_kg
        doses = [Dose(START + timedelta(days=d), mg) for d in INDUCTION_AND_MAINTENANCE_DAYS]
        truth = individual(model, cov, *eta)
        drawn = []
        for d in INDUCTION_AND_MAINTENANCE_DAYS[-levels:]:  # troughs just before the last infusions
            at = START + timedelta(days=d) - timedelta(hours=1)
            clean = concentration(truth, doses, at, infusion)
            noisy = clean * (
                1 + model.proportional_error * rng.gauss(0, 1)
            ) + model.additive_error_ug_per_ml * rng.gauss(0, 1)
            drawn.append(Level(at, LIMIT_UG_PER_ML, True) if noisy < LIMIT_UG_PER_ML else Level(at, noisy))
        next_at = START + timedelta(days=INDUCTION_AND_MAINTENANCE_DAYS[-1] + 56) - timedelta(hours=1)
        out.append(Virtual(cov, eta, doses, drawn, next_at))
    return out


class Check(NamedTuple):
    clearance_mdape: float  # median absolute percentage error of the estimated clearance
    trough_bias: float  # median of predicted minus true next trough, ug/mL
    trough_mae: float  # median absolute error of the next trough, ug/mL
    typical_mae: float  # the same for the typical patient's prediction (no levels used)
    coverage: float  # share of true next troughs inside the 90% interval
    brier: float  # of the probability that the next trough reaches 3 ug/mL
    failed: int  # fits that did not converge
    ms_per_estimate: float
    # The yardstick, computed in the same run: the exact posterior on a fine grid, no sampling.
    exact_mae: float
    exact_coverage: float
    exact_brier: float


TARGET = 3.0


def check(model: PopPkModel, patients: list[Virtual]) -> Check:
    infusion = model.infusion_hours / 24
    ape, errors, typical_errors, covered, brier = [], [], [], [], []
    exact_errors, exact_covered, exact_brier = [], [], []
    failed, took = 0, 0.0
    for v in patients:
        began = time.perf_counter()
        post = estimate(model, v.cov, v.doses, v.levels, DRAWS)
        took += time.perf_counter() - began
        failed += not post.converged
        fitted, truth = individual(model, v.cov, *post.mode), individual(model, v.cov, *v.true_eta)
        ape.append(abs(fitted.cl - truth.cl) / truth.cl)
        true_next = concentration(truth, v.doses, v.next_at, infusion)

        typical_errors.append(
            concentration(individual(model, v.cov), v.doses, v.next_at, infusion) - true_next
        )
        drawn = np.array(post.draws)
        nexts = np.sort(predicted(model, v.cov, (drawn[:, 0], drawn[:, 1]), v.doses, [v.next_at])[:, 0])
        low, high = nexts[int(0.05 * len(nexts))], nexts[min(len(nexts) - 1, int(0.95 * len(nexts)))]
        errors.append(float(nexts[len(nexts) // 2]) - true_next)  # the median, as the forecast states
        covered.append(bool(low <= true_next <= high))
        brier.append((float(np.mean(nexts >= TARGET)) - (true_next >= TARGET)) ** 2)
        grid = posterior_on_grid(model, v.cov, v.doses, v.levels, (201, 121))
        values = predicted(model, v.cov, (grid.points[:, 0], grid.points[:, 1]), v.doses, [v.next_at])[:, 0]
        order = np.argsort(values)
        cumulative = np.cumsum(grid.weights[order])
        quantile = {
            q: values[order][min(int(np.searchsorted(cumulative, q)), len(order) - 1)]
            for q in (0.05, 0.5, 0.95)
        }
        exact_errors.append(quantile[0.5] - true_next)
        exact_covered.append(bool(quantile[0.05] <= true_next <= quantile[0.95]))
        exact_brier.append((float(grid.weights[values >= TARGET].sum()) - (true_next >= TARGET)) ** 2)
    return Check(
        clearance_mdape=statistics.median(ape) * 100,
        trough_bias=statistics.median(errors),
        trough_mae=statistics.median(abs(e) for e in errors),
        typical_mae=statistics.median(abs(e) for e in typical_errors),
        coverage=statistics.mean(covered) * 100,
        brier=statistics.mean(brier),
        failed=failed,
        ms_per_estimate=took / len(patients) * 1000,
        exact_mae=statistics.median(abs(e) for e in exact_errors),
        exact_coverage=statistics.mean(exact_covered) * 100,
        exact_brier=statistics.mean(exact_brier),
    )


def _patient(v: Virtual) -> Patient:
    return Patient(
        levels=v.levels,
        doses=v.doses,
        weight_kg=v.cov.weight_kg,
        albumin_g_per_dl=v.cov.albumin_g_per_dl,
        female=v.cov.female,
        antibodies=Antibodies.POSITIVE if v.cov.antibodies else Antibodies.NEGATIVE,
        route="intravenous",
        age_years=None,
        indication=None,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=1000)
    args = parser.parse_args()
    model = fasanmade_2009()
    print(f"{args.patients} virtual patients from {model.id} (5 mg/kg at weeks 0, 2, 6, 14, 22, 30)")
    patients = virtual_patients(model, 200, 2)
    began = time.perf_counter()
    for v in patients:
        forecast(model, _patient(v), 3.0)
    each = (time.perf_counter() - began) / len(patients) * 1000
    print(f"  a whole forecast (fit, {DRAWS} posterior draws, 9 regimens): {each:.1f} ms")
    for far in (False, True):
        for levels in (1, 2):
            c = check(model, virtual_patients(model, args.patients, levels, far=far))
            print(
                f"  {'far from typical' if far else 'the model population'}, {levels} trough(s): "
                f"clearance MdAPE {c.clearance_mdape:.1f}%; next trough (week 38) bias "
                f"{c.trough_bias:+.2f} ug/mL, median absolute error {c.trough_mae:.2f} ug/mL (exact "
                f"posterior {c.exact_mae:.2f}: {c.trough_mae / c.exact_mae:.2f}x; typical patient "
                f"without levels {c.typical_mae:.2f}); 90% coverage {c.coverage:.0f}% (exact "
                f"{c.exact_coverage:.0f}%); Brier {c.brier:.3f} (exact {c.exact_brier:.3f}: "
                f"{c.brier / c.exact_brier:.2f}x); failed fits {c.failed}; "
                f"{c.ms_per_estimate:.1f} ms an estimate"
            )


if __name__ == "__main__":
    main()
