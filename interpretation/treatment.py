"""The patient's treatment as recorded outside the lab feed, and how it sets a result's context.

Lab messages rarely say how a patient is treated. A treatment record (from the treatment-context
topic: our canonical JSON, or FHIR MedicationAdministration / MedicationRequest) says the phase
and induction start, route, goal, monitoring, dosing interval and the last dose. Precedence for
each field: the message's own context, then the patient's record, then the rule set's default;
`context_source` says which one was used.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

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


class TreatmentRecord(Frozen):
    """What the treatment-context topic says of one patient; every field optional."""

    phase: Phase | None = None
    induction_start: date | None = None
    route: Route | None = None
    goal: Goal | None = None
    monitoring: Monitoring | None = None
    indication: Annotated[str, StringConstraints(pattern=r"^[a-z_]{2,40}$")] | None = None
    dosing_interval_days: Annotated[int, Field(ge=1, le=365)] | None = None
    last_dose_at: datetime | None = None

    def merged_with(self, update: TreatmentRecord) -> TreatmentRecord:
        """This record with every field `update` sets replaced (a dose given, a route changed)."""
        return self.model_copy(update=update.model_dump(exclude_none=True))

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
