"""This patient's next trough: clearance estimated from every level, and the regimens that reach
the target, from a published population model (`interpretation.pharmacokinetics`).

The individual estimate is the maximum a posteriori fit of the patient's deviations from the
typical patient (log clearance and log central volume) to all their levels given the doses,
levels below the assay's limit counted as censored. Its uncertainty is the Laplace
approximation (the posterior's curvature at the fit), sampled with a fixed seed so the same
history always gives the same forecast. Two parameters need no optimisation library: damped
Newton steps on numerical derivatives converge in a few iterations.

Pure: times come from the messages; no clock is read. Decision support, not an order: a
forecast the model cannot make is refused with its reason.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Literal, NamedTuple, cast

from interpretation.lab_result import Frozen
from interpretation.pharmacokinetics import (
    DAY_S,
    Covariates,
    Dose,
    Parameters,
    PopPkModel,
    concentration,
    disposition,
    individual,
    steady_trough,
)
from interpretation.ruleset import Citation

# The regimens tabulated: the label's maintenance dose, and the intensifications guidelines list.
REGIMEN_MG_PER_KG = (5.0, 7.5, 10.0)
REGIMEN_EVERY_WEEKS = (8, 6, 4)
DRAWS = 200  # posterior samples for the intervals and probabilities
MIN_REGIMEN_DAYS = 7.0  # the shortest interval read as the current regimen
SEED = 20_090_916  # fixed: the same history gives the same forecast
INTERVAL = (0.05, 0.95)  # a 90% interval


Point = tuple[float, float]


class Antibodies(StrEnum):
    NEGATIVE = "negative"
    POSITIVE = "positive"
    HIGH_TITRE = "high_titre"  # the assay calls it high: the failure is immunogenic


class Level(NamedTuple):
    at: datetime
    ug_per_ml: float
    censored: bool = False  # below the assay's limit, which `ug_per_ml` then holds


class Patient(NamedTuple):
    """What the forecast uses; None where the feed did not say."""

    levels: Sequence[Level]
    doses: Sequence[Dose]
    weight_kg: float | None
    albumin_g_per_dl: float | None
    female: bool | None
    antibodies: Antibodies | None  # None: no antibody result known (the model's reference: none)
    route: str | None  # "intravenous", "subcutaneous"
    age_years: int | None
    indication: str | None


class CovariateUsed(Frozen):
    name: str
    value: float | str
    assumed: bool  # the model's reference value, since the feed did not give it


class Regimen(Frozen):
    mg_per_kg: float
    every_weeks: float
    trough_ug_per_ml: float
    interval_ug_per_ml: tuple[float, float]
    probability_at_target: float
    least_change: bool = False


class Forecast(Frozen):
    status: Literal["forecast"] = "forecast"
    model: str
    citation: Citation
    target_ug_per_ml: float
    clearance_l_per_day: float
    clearance_interval: tuple[float, float]
    current: Regimen | None
    regimens: tuple[Regimen, ...]
    covariates: tuple[CovariateUsed, ...]
    levels_used: int
    sentence: str


class RefusalCode(StrEnum):
    """Why there is no forecast, as a code to count by (the reason says it in words)."""

    NOT_COVERED = "not_covered"  # the model, or what is known of the patient, does not cover it
    WITHHELD = "withheld"  # a forecast would mislead here
    INTERNAL_ERROR = "internal_error"  # the forecast failed; the page went out without it


class Refused(Frozen):
    status: Literal["refused"] = "refused"
    model: str
    reason: str
    code: RefusalCode = RefusalCode.NOT_COVERED


def forecast(model: PopPkModel, patient: Patient, target: float) -> Forecast | Refused:
    if (why := _refusal(model, patient)) is not None:
        return Refused(model=model.id, reason=why)
    weight = cast(float, patient.weight_kg)  # _refusal refused a missing one
    cov, used = _covariates(model, patient)
    infusion = model.infusion_hours / 24
    doses = sorted(patient.doses)
    levels = sorted(lv for lv in patient.levels if lv.at > doses[0].at)
    mode, draws = estimate(model, cov, doses, levels)
    fitted = individual(model, cov, *mode)
    drawn = [individual(model, cov, *d) for d in draws]
    cl_draws = sorted(p.cl for p in drawn)
    dispositions = [disposition(p) for p in drawn]  # once per draw, for every regimen

    def regimen(mg_per_kg: float, every_days: float) -> Regimen:
        mg = mg_per_kg * weight
        troughs = sorted(steady_trough(e, mg, every_days, infusion) for e in dispositions)
        return Regimen(
            mg_per_kg=mg_per_kg,
            every_weeks=round(every_days / 7, 1),
            trough_ug_per_ml=round(steady_trough(fitted, mg, every_days, infusion), 2),
            interval_ug_per_ml=(
                round(_quantile(troughs, INTERVAL[0]), 2),
                round(_quantile(troughs, INTERVAL[1]), 2),
            ),
            probability_at_target=round(sum(t >= target for t in troughs) / len(troughs), 2),
        )

    current = None
    every = (doses[-1].at - doses[-2].at).total_seconds() / DAY_S if len(doses) >= 2 else 0.0
    if every >= MIN_REGIMEN_DAYS:  # closer infusions are no maintenance regimen to project
        current = regimen(round(doses[-1].mg / weight, 1), every)
    table = [regimen(d, w * 7) for d in REGIMEN_MG_PER_KG for w in REGIMEN_EVERY_WEEKS]
    table = _mark_least_change(table, current, target)
    return Forecast(
        model=model.id,
        citation=model.citation,
        target_ug_per_ml=target,
        clearance_l_per_day=round(fitted.cl, 3),
        clearance_interval=(
            round(_quantile(cl_draws, INTERVAL[0]), 3),
            round(_quantile(cl_draws, INTERVAL[1]), 3),
        ),
        current=current,
        regimens=tuple(table),
        covariates=used,
        levels_used=len(levels),
        sentence=_sentence(current, table, target),
    )


def estimate(
    model: PopPkModel, cov: Covariates, doses: Sequence[Dose], levels: Sequence[Level]
) -> tuple[Point, list[Point]]:
    """The patient's deviations from the typical patient (log CL, log V1): the posterior's mode
    and samples around it."""
    # Deviations beyond 5 standard deviations are not this model's patients.
    bounds = (5 * math.sqrt(model.clearance_variance), 5 * math.sqrt(model.central_volume_variance))
    mode, curvature = _fit(_objective(model, cov, doses, levels, model.infusion_hours / 24), bounds)
    prior = (2 / model.clearance_variance, 2 / model.central_volume_variance)
    return mode, _draws(mode, _at_least_prior(curvature, prior), bounds)


def _at_least_prior(curvature: tuple[Point, Point], prior: Point) -> tuple[Point, Point]:
    """The curvature with the levels' part kept positive semi-definite, so levels never widen the
    prior: censored levels make the likelihood flat or bent the wrong way in places, where the
    Laplace approximation would otherwise claim more uncertainty than knowing nothing."""
    (a, b), (_, d) = curvature
    a, d = a - prior[0], d - prior[1]  # the levels' own curvature
    half_trace, root = (a + d) / 2, math.sqrt(((a - d) / 2) ** 2 + b * b)
    high, low = max(half_trace + root, 0.0), max(half_trace - root, 0.0)
    if root < 1e-12:
        return ((prior[0] + high, 0.0), (0.0, prior[1] + high))
    # The unit eigenvector of the larger eigenvalue, (cos, sin).
    angle = 0.5 * math.atan2(2 * b, a - d)
    c, s = math.cos(angle), math.sin(angle)
    a2 = high * c * c + low * s * s
    d2 = high * s * s + low * c * c
    b2 = (high - low) * c * s
    return ((prior[0] + a2, b2), (b2, prior[1] + d2))


def _refusal(model: PopPkModel, p: Patient) -> str | None:
    low_age, high_age = model.population.age_years
    low_wt, high_wt = model.population.weight_kg
    if p.route is not None and p.route != model.population.route:
        return f"{p.route} infliximab: the model ({model.id}) is for intravenous infusions"
    if p.antibodies is Antibodies.HIGH_TITRE:
        return "antibodies at a high titre: the failure is immunogenic, more drug is unlikely to help"
    if p.indication is not None and p.indication not in model.indications:
        covered = ", ".join(model.indications)
        return f"no model for {p.indication.replace('_', ' ')} yet ({model.id} is for {covered})"
    if p.age_years is not None and not low_age <= p.age_years <= high_age:
        return f"age {p.age_years} is outside the model's population ({low_age}-{high_age} years)"
    if p.weight_kg is None:
        return "no body weight: the dose per kg and the central volume need it"
    if not low_wt <= p.weight_kg <= high_wt:
        return f"weight {p.weight_kg:g} kg is outside the model's population ({low_wt:g}-{high_wt:g} kg)"
    if not p.doses:
        return "no dose history: the infusions' times and amounts are needed"
    first = min(d.at for d in p.doses)
    if not any(lv.at > first for lv in p.levels):
        return "no level drawn after a known infusion"
    return None


def _covariates(model: PopPkModel, p: Patient) -> tuple[Covariates, tuple[CovariateUsed, ...]]:
    albumin = p.albumin_g_per_dl if p.albumin_g_per_dl is not None else model.albumin_reference_g_per_dl
    female = bool(p.female)
    used = (
        CovariateUsed(name="weight_kg", value=p.weight_kg or 0.0, assumed=False),
        CovariateUsed(name="albumin_g_per_dl", value=albumin, assumed=p.albumin_g_per_dl is None),
        CovariateUsed(name="sex", value="female" if female else "male", assumed=p.female is None),
        CovariateUsed(
            name="indication",
            value=p.indication or model.indications[0],
            assumed=p.indication is None,
        ),
        CovariateUsed(
            name="antibodies",
            value=(p.antibodies or Antibodies.NEGATIVE).value,
            assumed=p.antibodies is None,
        ),
    )
    return Covariates(p.weight_kg or 0.0, albumin, p.antibodies is Antibodies.POSITIVE, female), used


def _objective(
    model: PopPkModel, cov: Covariates, doses: Sequence[Dose], levels: Sequence[Level], infusion: float
) -> Callable[[Point], float]:
    """-2 log posterior of the patient's deviations (up to a constant)."""
    omega = (model.clearance_variance, model.central_volume_variance)

    def value(eta: Point) -> float:
        p: Parameters = individual(model, cov, *eta)
        total = eta[0] ** 2 / omega[0] + eta[1] ** 2 / omega[1]
        for lv in levels:
            predicted = concentration(p, doses, lv.at, infusion)
            sd = math.hypot(model.additive_error_ug_per_ml, model.proportional_error * predicted)
            z = (lv.ug_per_ml - predicted) / sd
            if lv.censored:  # the level is somewhere below the limit
                total -= 2 * math.log(max(0.5 * (1 + math.erf(z / math.sqrt(2))), 1e-300))
            else:
                total += z * z + 2 * math.log(sd)
        return total

    return value


def _derivatives(f: Callable[[Point], float], x: Point, h: float = 1e-3) -> tuple[Point, tuple[Point, Point]]:
    f0 = f(x)
    fp = [f((x[0] + h, x[1])), f((x[0], x[1] + h))]
    fm = [f((x[0] - h, x[1])), f((x[0], x[1] - h))]
    g = ((fp[0] - fm[0]) / (2 * h), (fp[1] - fm[1]) / (2 * h))
    h00 = (fp[0] - 2 * f0 + fm[0]) / h**2
    h11 = (fp[1] - 2 * f0 + fm[1]) / h**2
    cross = (
        f((x[0] + h, x[1] + h)) - f((x[0] + h, x[1] - h)) - f((x[0] - h, x[1] + h)) + f((x[0] - h, x[1] - h))
    ) / (4 * h * h)
    return g, ((h00, cross), (cross, h11))


def _fit(f: Callable[[Point], float], bounds: Point) -> tuple[Point, tuple[Point, Point]]:
    """The posterior's mode and its curvature there (damped Newton from the typical patient)."""
    x: Point = (0.0, 0.0)
    fx = f(x)
    for _ in range(60):
        g, hess = _derivatives(f, x)
        (a, b), (_, d) = hess
        shift = max(0.0, 1e-6 - min(a, d), -(a * d - b * b))  # keep the step a descent direction
        a, d = a + shift, d + shift
        det = a * d - b * b
        step = (-(d * g[0] - b * g[1]) / det, -(a * g[1] - b * g[0]) / det)
        t = 1.0
        while t > 1e-6:
            trial = (
                min(max(x[0] + t * step[0], -bounds[0]), bounds[0]),
                min(max(x[1] + t * step[1], -bounds[1]), bounds[1]),
            )
            if (ft := f(trial)) <= fx:
                break
            t /= 2
        else:
            break
        moved = abs(trial[0] - x[0]) + abs(trial[1] - x[1])
        x, fx = trial, ft
        if moved < 1e-7:
            break
    return x, _derivatives(f, x)[1]


def _draws(mode: Point, curvature: tuple[Point, Point], bounds: Point) -> list[Point]:
    """Samples of the deviations from the Laplace approximation: normal, covariance (H/2)^-1."""
    (a, b), (_, d) = curvature  # positive definite (_at_least_prior)
    det = a * d - b * b
    # The covariance of -2 log posterior's curvature H is 2 H^-1.
    s00, s01, s11 = 2 * d / det, -2 * b / det, 2 * a / det
    l00 = math.sqrt(s00)
    l10 = s01 / l00
    l11 = math.sqrt(max(s11 - l10 * l10, 1e-12))
    rng = random.Random(SEED)  # noqa: S311 (reproducible sampling, not secrecy)
    out = []
    for _ in range(DRAWS):
        z0, z1 = rng.gauss(0, 1), rng.gauss(0, 1)
        eta = (mode[0] + l00 * z0, mode[1] + l10 * z0 + l11 * z1)
        out.append((min(max(eta[0], -bounds[0]), bounds[0]), min(max(eta[1], -bounds[1]), bounds[1])))
    return out


def _quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _mark_least_change(table: list[Regimen], current: Regimen | None, target: float) -> list[Regimen]:
    """The regimen with the least dose intensity (mg/kg a week) above the current one whose
    projected trough reaches the target."""
    now = current.mg_per_kg / current.every_weeks if current is not None else 0.0
    reaching = [r for r in table if r.trough_ug_per_ml >= target and r.mg_per_kg / r.every_weeks > now + 1e-9]
    if not reaching:
        return table
    least = min(reaching, key=lambda r: (r.mg_per_kg / r.every_weeks, -r.every_weeks))
    return [r.model_copy(update={"least_change": True}) if r is least else r for r in table]


def _describe(r: Regimen) -> str:
    return f"{r.mg_per_kg:g} mg/kg every {r.every_weeks:g} weeks"


def _sentence(current: Regimen | None, table: Sequence[Regimen], target: float) -> str:
    parts = []
    if current is not None:
        low, high = current.interval_ug_per_ml
        parts.append(
            f"projected trough {current.trough_ug_per_ml:.1f} ug/mL (90% {low:.1f}-{high:.1f}) "
            f"at {_describe(current)}"
        )
    least = next((r for r in table if r.least_change), None)
    if least is not None:
        parts.append(
            f"{_describe(least)} projects {least.trough_ug_per_ml:.1f} ug/mL "
            f"({least.probability_at_target:.0%} chance of >= {target:g})"
        )
    elif current is not None and current.trough_ug_per_ml < target:
        parts.append(f"no tabulated regimen projects >= {target:g} ug/mL")
    return "; ".join(parts) + "." if parts else "no forecast sentence: no regimen could be projected."
