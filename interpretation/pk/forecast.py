"""This patient's next trough: clearance estimated from every level, and the regimens that reach
the target, from a published population model (`interpretation.pk.kinetics`).

The individual estimate is the posterior of the patient's deviations from the typical patient
(log clearance and log central volume) given all their levels and doses
(`interpretation.pk.estimation`: exact on a grid, its mode refined by scipy). Each regimen's
projected trough comes with the 90% interval of the true trough and, named as such, of a
measured one (with the model's residual error), and the probability of reaching the target, all
from the same posterior draws. A fit that does not converge, or does not explain the patient's
levels, is refused, never shown.

Pure: times come from the messages; no clock is read. Decision support, not an order: a
forecast the model cannot make is refused with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

from interpretation.lab_result import Frozen
from interpretation.pk.kinetics import (
    DAY_S,
    Covariates,
    Dose,
    Level,
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
INTERVAL = (0.05, 0.95)  # a 90% interval


__all__ = ["Antibodies", "Forecast", "Level", "Patient", "RefusalCode", "Refused", "Regimen", "forecast"]


class Antibodies(StrEnum):
    NEGATIVE = "negative"
    POSITIVE = "positive"
    HIGH_TITRE = "high_titre"  # the assay calls it high: the failure is immunogenic


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
    interval_ug_per_ml: tuple[float, float]  # 90%: the true trough
    probability_at_target: float  # that the true trough reaches the target
    least_change: bool = False
    # 90%: what a lab would measure at that trough (the residual error added): compare the next
    # level with this one.
    measured_interval_ug_per_ml: tuple[float, float] | None = None


class FitPoint(Frozen):
    """One of the patient's levels beside what the fitted patient predicts for it."""

    at: datetime
    observed_ug_per_ml: float
    censored: bool
    predicted_ug_per_ml: float


class Order(Frozen):
    """The least change as an order a prescriber can sign: whole vials, the interval, when."""

    mg: int  # the dose for this patient's weight, in whole vials
    every_weeks: float
    next_infusion_on: date  # the last infusion plus the new interval
    recheck_trough_before: date  # the infusion after that: the trough drawn just before it


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
    fit: tuple[FitPoint, ...] = ()  # each level used against the individual prediction
    order: Order | None = None  # the least change that reaches the target, as an order


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


if TYPE_CHECKING:
    from numpy.typing import NDArray


def forecast(model: PopPkModel, patient: Patient, target: float) -> Forecast | Refused:
    if (why := _refusal(model, patient)) is not None:
        return Refused(model=model.id, reason=why)
    weight = cast(float, patient.weight_kg)  # _refusal refused a missing one
    cov, used = _covariates(model, patient)
    infusion = model.infusion_hours / 24
    doses = sorted(patient.doses)
    levels = sorted(lv for lv in patient.levels if lv.at > doses[0].at)
    # numpy and scipy are imported on the first forecast, not with the alert contract: the
    # notifier reads alerts and never forecasts (its RSS budget is 80 MB).
    import numpy as np  # noqa: PLC0415

    from interpretation.pk.estimation import estimate, measured  # noqa: PLC0415

    posterior = estimate(model, cov, doses, levels, DRAWS)
    if not posterior.converged:
        return Refused(
            model=model.id,
            code=RefusalCode.WITHHELD,
            reason="the fit to the patient's levels did not converge: no projection is shown",
        )
    fitted = individual(model, cov, *posterior.mode)
    fit = tuple(
        FitPoint(
            at=lv.at,
            observed_ug_per_ml=round(lv.ug_per_ml, 3),
            censored=lv.censored,
            predicted_ug_per_ml=round(concentration(fitted, doses, lv.at, infusion), 3),
        )
        for lv in levels
    )
    if (misfit := _unexplained(model, fit)) is not None:
        return Refused(model=model.id, code=RefusalCode.WITHHELD, reason=misfit)
    drawn = [individual(model, cov, *d) for d in posterior.draws]
    cl_draws = sorted(p.cl for p in drawn)
    dispositions = [disposition(p) for p in drawn]  # once per draw, for every regimen

    def regimen(mg_per_kg: float, every_days: float) -> Regimen:
        mg = mg_per_kg * weight
        true = np.array([steady_trough(e, mg, every_days, infusion) for e in dispositions])
        lab = np.sort(measured(model, true))
        troughs = np.sort(true)
        return Regimen(
            mg_per_kg=mg_per_kg,
            every_weeks=round(every_days / 7, 1),
            # The posterior's median: the long tail toward low clearance moves it (the mode's
            # projection understated the median error by up to 1.5x for patients far from typical).
            trough_ug_per_ml=round(_quantile(troughs, 0.5), 2),
            interval_ug_per_ml=(
                round(_quantile(troughs, INTERVAL[0]), 2),
                round(_quantile(troughs, INTERVAL[1]), 2),
            ),
            probability_at_target=round(float(np.mean(troughs >= target)), 2),
            measured_interval_ug_per_ml=(
                round(max(_quantile(lab, INTERVAL[0]), 0.0), 2),
                round(_quantile(lab, INTERVAL[1]), 2),
            ),
        )

    current = None
    every = (doses[-1].at - doses[-2].at).total_seconds() / DAY_S if len(doses) >= 2 else 0.0
    if every >= MIN_REGIMEN_DAYS:  # closer infusions are no maintenance regimen to project
        current = regimen(round(doses[-1].mg / weight, 1), every)
    table = [regimen(d, w * 7) for d in REGIMEN_MG_PER_KG for w in REGIMEN_EVERY_WEEKS]
    table = _mark_least_change(table, current, target)
    order = _order(table, weight, doses[-1].at)
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
        sentence=_sentence(current, table, target, order),
        fit=fit,
        order=order,
    )


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


MISFIT_Z = 3.0  # a level this many residual standard deviations from the fit is not explained


def _unexplained(model: PopPkModel, fit: Sequence[FitPoint]) -> str | None:
    """Why the fitted patient does not explain a measured level, if it does not: beyond MISFIT_Z
    residual standard deviations of the model's own error (the level, the dose history or the
    model is wrong for this patient, and a projection from it would mislead)."""
    for point in fit:
        predicted = point.predicted_ug_per_ml
        sd = math.hypot(model.additive_error_ug_per_ml, model.proportional_error * predicted)
        z = (point.observed_ug_per_ml - predicted) / sd
        if (point.censored and z < -MISFIT_Z) or (not point.censored and abs(z) > MISFIT_Z):
            return (
                f"the model does not explain the level of {point.at.date()} ({point.observed_ug_per_ml:g} "
                f"ug/mL measured, {predicted:.2g} fitted): check the dose history and the sample's timing"
            )
    return None


def _quantile(ordered: Sequence[float] | NDArray[Any], q: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def _mark_least_change(table: list[Regimen], current: Regimen | None, target: float) -> list[Regimen]:
    """The regimen with the least dose intensity (mg/kg a week) above the current one whose
    projected trough reaches the target."""
    now = current.mg_per_kg / current.every_weeks if current is not None else 0.0
    reaching = [r for r in table if r.trough_ug_per_ml >= target and r.mg_per_kg / r.every_weeks > now + 1e-9]
    if not reaching:
        return table
    least = min(reaching, key=lambda r: (r.mg_per_kg / r.every_weeks, -r.every_weeks))
    return [r.model_copy(update={"least_change": True}) if r is least else r for r in table]


# Infliximab is supplied as 100 mg of powder in a single-dose vial (Remicade prescribing
# information, section 3, Dosage forms and strengths): a dose is given in whole vials.
VIAL_MG = 100


def _order(table: Sequence[Regimen], weight_kg: float, last_infusion: datetime) -> Order | None:
    """The least change as an order: mg rounded to whole vials; the next infusion one new
    interval after the last; the trough rechecked just before the infusion after that, once the
    new regimen has had an interval to act."""
    least = next((r for r in table if r.least_change), None)
    if least is None:
        return None
    vials = max(1, round(least.mg_per_kg * weight_kg / VIAL_MG))
    every = timedelta(weeks=least.every_weeks)
    return Order(
        mg=vials * VIAL_MG,
        every_weeks=least.every_weeks,
        next_infusion_on=(last_infusion + every).date(),
        recheck_trough_before=(last_infusion + 2 * every).date(),
    )


def _describe(r: Regimen) -> str:
    return f"{r.mg_per_kg:g} mg/kg every {r.every_weeks:g} weeks"


def _sentence(current: Regimen | None, table: Sequence[Regimen], target: float, order: Order | None) -> str:
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
    if order is not None:
        parts.append(
            f"as an order: {order.mg} mg every {order.every_weeks:g} weeks, the next infusion on "
            f"{order.next_infusion_on}, the trough rechecked just before the one on "
            f"{order.recheck_trough_before}"
        )
    return "; ".join(parts) + "." if parts else "no forecast sentence: no regimen could be projected."
