"""Serum albumin and body weight: covariates of the next-trough forecast, never alerts.

They reach a patient's treatment record from the lab feed (when the service is told to read
them there) and from the context topic. Each carries the time it was measured, and a record
keeps the latest measurement, so results arriving in any order leave the same record.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple

from pydantic import ValidationError

from interpretation.lab_result import LabResult
from interpretation.quantities import UnreadableValue, parse_quantity, unit_key
from interpretation.ruleset import Recognition
from interpretation.treatment import TreatmentRecord


class Covariate(StrEnum):
    ALBUMIN = "albumin"
    BODY_WEIGHT = "body_weight"


# To the units the model takes (g/dL, kg), by the unit folded as `unit_key` folds it (UCUM codes
# and the spellings labs print). Exact definitions: 1 g/L = 0.1 g/dL, 1 lb = 0.45359237 kg.
_FACTORS: dict[Covariate, dict[str, Decimal]] = {
    Covariate.ALBUMIN: {"g/dl": Decimal(1), "g/l": Decimal("0.1")},
    Covariate.BODY_WEIGHT: {
        "kg": Decimal(1),
        "g": Decimal("0.001"),
        "[lb_av]": Decimal("0.45359237"),
        "lb": Decimal("0.45359237"),
        "lbs": Decimal("0.45359237"),
    },
}
_FIELDS = {
    Covariate.ALBUMIN: ("albumin_g_per_dl", "albumin_at"),
    Covariate.BODY_WEIGHT: ("weight_kg", "weight_at"),
}


class Unusable(ValueError):
    """A covariate result that cannot be used; the message says why, without its value."""


class CovariateReading(NamedTuple):
    """What one albumin or weight result gives the patient's record; `record` is None when the
    result cannot be used, and `unusable` says why."""

    covariate: Covariate
    record: TreatmentRecord | None
    unusable: str | None = None


def covariate_of(codes: set[str] | frozenset[str], recognition: Recognition) -> Covariate | None:
    """The covariate any of `codes` names, or None."""
    if recognition.covariates is None:
        return None
    if not codes.isdisjoint(recognition.covariates.albumin):
        return Covariate.ALBUMIN
    if not codes.isdisjoint(recognition.covariates.body_weight):
        return Covariate.BODY_WEIGHT
    return None


def measured(covariate: Covariate, value: Decimal, unit: str | None, at: datetime | None) -> TreatmentRecord:
    """The record update for one measurement; `Unusable` for a unit not converted or a value
    outside what a patient can have."""
    factor = _FACTORS[covariate].get(unit_key(unit or ""))
    if factor is None:
        raise Unusable(f"{covariate.value}: the unit is not one this service converts")
    value_field, time_field = _FIELDS[covariate]
    try:
        return TreatmentRecord.model_validate({value_field: value * factor, time_field: at})
    except ValidationError as err:
        raise Unusable(f"{covariate.value}: the value is outside what a patient can have") from err


def read_covariate(result: LabResult, recognition: Recognition) -> CovariateReading | None:
    """An albumin or weight result read for the patient's record; None for any other result."""
    covariate = covariate_of({result.code}, recognition)
    if covariate is None:
        return None
    if not result.status.may_page:
        return CovariateReading(covariate, None, "not a final or corrected result")
    try:
        quantity = parse_quantity(result.value or "")
        if quantity.comparator is not None:
            raise Unusable(f"{covariate.value}: a censored value is no measurement")
        record = measured(covariate, quantity.value, result.unit, result.collected_at)
    except UnreadableValue:
        return CovariateReading(covariate, None, "the value is not a number")
    except Unusable as err:
        return CovariateReading(covariate, None, str(err))
    return CovariateReading(covariate, record)
