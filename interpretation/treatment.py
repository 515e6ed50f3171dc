"""The patient's treatment as recorded outside the lab feed, and how it sets a result's context.

Lab messages rarely say how a patient is treated. A treatment record (from the treatment-context
topic: our canonical JSON, or FHIR MedicationAdministration / MedicationRequest) says the phase
and induction start, route, goal, monitoring, dosing interval and the last dose. Precedence for
each field: the message's own context, then the patient's record, then the rule set's default;
`context_source` says which one was used.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

from interpretation.lab_result import (
    Frozen,
    Goal,
    Indication,
    Monitoring,
    Phase,
    Route,
    TreatmentContext,
    as_utc,
)


class ContextSource(StrEnum):
    MESSAGE = "message"
    PATIENT_RECORD = "patient_record"
    DEFAULT = "default"  # assumed from the rule set
    OVERRIDE = "override"  # an operator's explicit choice (interpret --phase ...)


MAX_DOSES = 12  # the infusions kept: a year and more of maintenance, all a forecast needs


class DoseGiven(Frozen):
    """One infliximab infusion: when it began and how much (mg, or mg/kg of body weight)."""

    at: datetime
    amount: Annotated[Decimal, Field(gt=0, le=5000)]
    unit: Literal["mg", "mg/kg"] = "mg"

    def mg(self, weight_kg: Decimal | None) -> Decimal | None:
        if self.unit == "mg":
            return self.amount
        return self.amount * weight_kg if weight_kg is not None else None


class TreatmentRecord(Frozen):
    """What the treatment-context topic says of one patient; every field optional.

    The doses, weight, albumin, sex and birth date feed the next-trough forecast
    (`interpretation.forecast`); nothing else reads them.
    """

    phase: Phase | None = None
    induction_start: date | None = None
    route: Route | None = None
    goal: Goal | None = None
    monitoring: Monitoring | None = None
    indication: Annotated[str, StringConstraints(pattern=r"^[a-z_]{2,40}$")] | None = None
    dosing_interval_days: Annotated[int, Field(ge=1, le=365)] | None = None
    last_dose_at: datetime | None = None
    doses: tuple[DoseGiven, ...] = ()  # oldest first, the last MAX_DOSES
    weight_kg: Annotated[Decimal, Field(gt=0, le=400)] | None = None
    weight_at: datetime | None = None  # when it was measured, if known
    albumin_g_per_dl: Annotated[Decimal, Field(gt=0, le=10)] | None = None
    albumin_at: datetime | None = None
    sex: Literal["female", "male"] | None = None
    birth_date: date | None = None

    @field_validator("doses")
    @classmethod
    def _in_order(cls, doses: tuple[DoseGiven, ...]) -> tuple[DoseGiven, ...]:
        return _kept(doses)

    def merged_with(self, update: TreatmentRecord) -> TreatmentRecord:
        """This record with every field `update` sets replaced (a route changed); a dose given
        joins the doses (the same start time twice is one infusion, the later report wins)."""
        fields = update.model_dump(exclude_none=True, exclude={"doses"})
        # A measurement older than the one kept does not replace it: results arrive out of order.
        # A value comes with its own time, or none: never another measurement's.
        for value, at in _MEASURED:
            if _earlier(getattr(update, at), getattr(self, at)):
                fields.pop(value, None)
                fields.pop(at, None)
            elif value in fields:
                fields[at] = getattr(update, at)
        if update.doses:
            fields["doses"] = _kept((*self.doses, *update.doses))
        return self.model_copy(update=fields)

    def context_at(self, collected_at: datetime | None) -> TreatmentContext:
        """The context this record implies for a sample drawn at `collected_at`."""
        week = days_since = None
        if collected_at is not None:
            drawn = as_utc(collected_at)
            if self.induction_start is not None and self.phase is not Phase.MAINTENANCE:
                days = (drawn.date() - self.induction_start).days
                # Induction troughs are drawn at the infusion of that week (day 14, 42, 98),
                # a day or two either side: the nearest whole week.
                week = round(days / 7) if days >= 0 else None
            if self.last_dose_at is not None:
                elapsed = (drawn - as_utc(self.last_dose_at)).days
                days_since = elapsed if elapsed >= 0 else None
        return TreatmentContext(
            phase=self.phase,
            week=week,
            route=self.route,
            goal=self.goal,
            monitoring=self.monitoring,
            indication=_INDICATIONS.get(self.indication or ""),
            days_since_last_dose=days_since,
            dosing_interval_days=self.dosing_interval_days,
        )


_MEASURED = (("weight_kg", "weight_at"), ("albumin_g_per_dl", "albumin_at"))


def _earlier(update: datetime | None, kept: datetime | None) -> bool:
    return update is not None and kept is not None and as_utc(update) < as_utc(kept)


def _kept(doses: tuple[DoseGiven, ...]) -> tuple[DoseGiven, ...]:
    by_start = {as_utc(d.at): d for d in doses}
    return tuple(by_start[at] for at in sorted(by_start))[-MAX_DOSES:]


_INDICATIONS = {i.value: i for i in Indication}  # a record's other indications choose nothing
_UNSET = TreatmentContext()  # built once: this runs for every result
_CONTEXT_FIELDS = tuple(TreatmentContext.model_fields)


def resolve_context(
    defaults: TreatmentContext,
    record: TreatmentContext | None,
    message: TreatmentContext,
    override: TreatmentContext | None = None,
) -> tuple[TreatmentContext, dict[str, ContextSource]]:
    """Each field from the first layer that sets it: override, message, record, default."""
    layers = [
        (ContextSource.OVERRIDE, override or _UNSET),
        (ContextSource.MESSAGE, message),
        (ContextSource.PATIENT_RECORD, record or _UNSET),
        (ContextSource.DEFAULT, defaults),
    ]
    values: dict[str, object] = {}
    sources: dict[str, ContextSource] = {}
    for name in _CONTEXT_FIELDS:
        for source, layer in layers:
            value = getattr(layer, name)
            if value is not None:
                values[name], sources[name] = value, source
                break
    return TreatmentContext.model_validate(values), sources
