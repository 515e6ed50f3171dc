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

from interpretation.forecast import DRAWS, Antibodies, Level, Patient, estimate, forecast
from interpretation.pharmacokinetics import (
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


def virtual_patients(model: PopPkModel, count: int, levels: int, seed: int = 7) -> list[Virtual]:
    rng = random.Random(seed)
    out = []
    infusion = model.infusion_hours / 24
    for _ in range(count):
        cov = Covariates(
            weight_kg=rng.uniform(50, 110),
            albumin_g_per_dl=min(max(rng.gauss(3.9, 0.4), 2.5), 5.0),
            antibodies=rng.random() < 0.07,
            female=rng.random() < 0.4,
        )
        eta = (
            rng.gauss(0, math.sqrt(model.clearance_variance)),
            rng.gauss(0, math.sqrt(model.central_volume_variance)),
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
    ms_per_estimate: float


def check(model: PopPkModel, patients: list[Virtual]) -> Check:
    infusion = model.infusion_hours / 24
    ape, errors, typical_errors = [], [], []
    began = time.perf_counter()
    for v in patients:
        mode, _ = estimate(model, v.cov, v.doses, v.levels)
        fitted, truth = individual(model, v.cov, *mode), individual(model, v.cov, *v.true_eta)
        ape.append(abs(fitted.cl - truth.cl) / truth.cl)
        true_next = concentration(truth, v.doses, v.next_at, infusion)
        errors.append(concentration(fitted, v.doses, v.next_at, infusion) - true_next)
        typical_errors.append(
            concentration(individual(model, v.cov), v.doses, v.next_at, infusion) - true_next
        )
    took = (time.perf_counter() - began) / len(patients) * 1000
    return Check(
        clearance_mdape=statistics.median(ape) * 100,
        trough_bias=statistics.median(errors),
        trough_mae=statistics.median(abs(e) for e in errors),
        typical_mae=statistics.median(abs(e) for e in typical_errors),
        ms_per_estimate=took,
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
    for levels in (1, 2):
        c = check(model, virtual_patients(model, args.patients, levels))
        print(
            f"  {levels} trough(s): clearance MdAPE {c.clearance_mdape:.1f}%; next trough (week 38) "
            f"bias {c.trough_bias:+.2f} ug/mL, median absolute error {c.trough_mae:.2f} ug/mL "
            f"(typical-patient prediction without levels: {c.typical_mae:.2f}); "
            f"{c.ms_per_estimate:.1f} ms an estimate"
        )


if __name__ == "__main__":
    main()
