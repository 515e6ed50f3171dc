"""A published population pharmacokinetic model of intravenous infliximab, and its kinetics.

The model is data with its citation (`interpretation/pk/models/*.json`), like the rule set: code
holds no parameter. Kinetics are linear with two compartments, so a concentration is a sum over
the infusions given (superposition) of the closed-form response to one constant-rate infusion
(Gibaldi and Perrier, Pharmacokinetics, two-compartment infusion). Times are in days, doses in
mg, volumes in L, concentrations in mg/L = ug/mL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Annotated, NamedTuple

from pydantic import Field

from interpretation.lab_result import Frozen
from interpretation.ruleset import Citation

Positive = Annotated[float, Field(gt=0)]
DAY_S = 86_400.0


class Population(Frozen):
    age_years: tuple[int, int]
    weight_kg: tuple[float, float]
    route: str


class PopPkModel(Frozen):
    """Typical values for the reference patient, covariate effects, variability and error."""

    id: str
    description: str
    indications: tuple[str, ...]
    citation: Citation
    clearance_l_per_day: Positive
    central_volume_l: Positive
    peripheral_volume_l: Positive
    intercompartmental_clearance_l_per_day: Positive
    albumin_reference_g_per_dl: Positive
    albumin_exponent_on_clearance: float
    antibodies_on_clearance: float
    female_on_clearance: float
    weight_reference_kg: Positive
    weight_exponent_on_central_volume: float
    female_on_central_volume: float
    clearance_variance: Positive  # interindividual, log scale
    central_volume_variance: Positive
    proportional_error: Positive
    additive_error_ug_per_ml: Positive
    infusion_hours: Positive
    half_life_days: Positive
    population: Population


@cache
def fasanmade_2009() -> PopPkModel:
    text = resources.files("interpretation.pk").joinpath("models/fasanmade-2009-uc.json").read_text()
    return PopPkModel.model_validate_json(text)


class Covariates(NamedTuple):
    weight_kg: float
    albumin_g_per_dl: float
    antibodies: bool
    female: bool


class Parameters(NamedTuple):
    """One patient's parameters: clearances in L/day, volumes in L."""

    cl: float
    v1: float
    q: float
    v2: float


def individual(model: PopPkModel, cov: Covariates, eta_cl: float = 0.0, eta_v1: float = 0.0) -> Parameters:
    """The model's parameters for these covariates, moved by the patient's own deviations (etas)."""
    cl = (
        model.clearance_l_per_day
        * (cov.albumin_g_per_dl / model.albumin_reference_g_per_dl) ** model.albumin_exponent_on_clearance
        * (1 + model.antibodies_on_clearance * cov.antibodies)
        * (1 + model.female_on_clearance * cov.female)
        * math.exp(eta_cl)
    )
    v1 = (
        model.central_volume_l
        * (cov.weight_kg / model.weight_reference_kg) ** model.weight_exponent_on_central_volume
        * (1 + model.female_on_central_volume * cov.female)
        * math.exp(eta_v1)
    )
    return Parameters(cl, v1, model.intercompartmental_clearance_l_per_day, model.peripheral_volume_l)


class Dose(NamedTuple):
    at: datetime
    mg: float


class Level(NamedTuple):
    at: datetime
    ug_per_ml: float
    censored: bool = False  # below the assay's limit, which `ug_per_ml` then holds


class Disposition(NamedTuple):
    """The central concentration after a unit bolus: a e^(-alpha t) + b e^(-beta t)."""

    alpha: float
    beta: float
    a: float  # 1/L
    b: float


def disposition(p: Parameters) -> Disposition:
    k10, k12, k21 = p.cl / p.v1, p.q / p.v1, p.q / p.v2
    total, product = k10 + k12 + k21, k10 * k21
    root = math.sqrt(total * total - 4 * product)
    alpha, beta = (total + root) / 2, (total - root) / 2
    return Disposition(
        alpha, beta, (alpha - k21) / (p.v1 * (alpha - beta)), (k21 - beta) / (p.v1 * (alpha - beta))
    )


def _infusion(e: Disposition, mg: float, duration: float, t: float) -> float:
    """Concentration `t` days after one infusion of `mg` over `duration` days began."""
    if t <= 0:
        return 0.0
    rate = mg / duration
    total = 0.0
    for k, c in ((e.alpha, e.a), (e.beta, e.b)):
        if t <= duration:
            total += c / k * (1 - math.exp(-k * t))
        else:
            total += c / k * (1 - math.exp(-k * duration)) * math.exp(-k * (t - duration))
    return rate * total


def concentration(p: Parameters, doses: Sequence[Dose], at: datetime, infusion_days: float) -> float:
    e = disposition(p)
    return sum(_infusion(e, d.mg, infusion_days, (at - d.at).total_seconds() / DAY_S) for d in doses)


def steady_trough(p: Parameters | Disposition, mg: float, every_days: float, infusion_days: float) -> float:
    """The trough (just before the next infusion) once `mg` every `every_days` has settled."""
    e = p if isinstance(p, Disposition) else disposition(p)
    rate = mg / infusion_days
    total = 0.0
    for k, c in ((e.alpha, e.a), (e.beta, e.b)):
        total += (
            c / k * (1 - math.exp(-k * infusion_days)) * math.exp(-k * (every_days - infusion_days))
        ) / (1 - math.exp(-k * every_days))
    return rate * total


def terminal_half_life_days(p: Parameters) -> float:
    return math.log(2) / disposition(p).beta
