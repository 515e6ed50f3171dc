"""The patient's treatment as recorded outside the lab feed, and how it sets a result's context.

Lab messages rarely say how a patient is treated. A treatment record (from the treatment-context
topic: our canonical JSON, or FHIR MedicationAdministration / MedicationRequest) says the phase
and induction start, route, goal, monitoring, dosing interval and the last dose. Precedence for
each field: the message's own context, then the patient's record, then the rule set's default;
`context_source` says which one was used.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, ValidationInfo, field_validator

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
MAX_WITHDRAWN = 24  # ids of administrations withdrawn, kept so a late original stays withdrawn
# Administrations that start this close are one infusion: an infusion paused and restarted, or
# charted twice. An infliximab infusion runs at least 2 hours (1 hour after tolerated ones) and
# infusions are weeks apart (Remicade prescribing information, section 2), so 12 hours cannot
# separate two infusions and covers a long pause. A documented default of this service.
ONE_INFUSION_HOURS = 12


class DoseGiven(Frozen):
    """One infliximab infusion: when it began, how much (mg, or mg/kg of body weight; None when
    the record gave no amount: its time still counts for trough timing), and the administration's
    id where the source has one (a re-sent administration with the same id replaces it)."""

    at: datetime
    amount: Annotated[Decimal, Field(gt=0, le=5000)] | None = None
    unit: Literal["mg", "mg/kg"] = "mg"
    id: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None

    def mg(self, weight_kg: Decimal | None) -> Decimal | None:
        if self.amount is None:
            return None
        if self.unit == "mg":
            return self.amount
        return self.amount * weight_kg if weight_kg is not None else None


class TreatmentRecord(Frozen):
    """What the treatment-context topic says of one patient; every field optional.

    The doses, weight, albumin, sex and birth date feed the next-trough forecast
    (`interpretation.pk.forecast`); nothing else reads them.
    """

    phase: Phase | None = None
    induction_start: date | None = None
    route: Route | None = None
    goal: Goal | None = None
    monitoring: Monitoring | None = None
    indication: Annotated[str, StringConstraints(pattern=r"^[a-z_]{2,40}$")] | None = None
    dosing_interval_days: Annotated[int, Field(ge=1, le=365)] | None = None
    last_dose_at: datetime | None = None
    # Administrations withdrawn (FHIR entered-in-error, not-done): removed, whenever they arrive.
    withdrawn: tuple[str, ...] = ()
    doses: tuple[DoseGiven, ...] = ()  # oldest first, the last MAX_DOSES
    weight_kg: Annotated[Decimal, Field(gt=0, le=400)] | None = None
    weight_at: datetime | None = None  # when it was measured, if known
    albumin_g_per_dl: Annotated[Decimal, Field(gt=0, le=10)] | None = None
    albumin_at: datetime | None = None
    sex: Literal["female", "male"] | None = None
    birth_date: date | None = None

    @field_validator("doses")
    @classmethod
    def _one_history(cls, doses: tuple[DoseGiven, ...], info: ValidationInfo) -> tuple[DoseGiven, ...]:
        return _kept(doses, info.data.get("withdrawn", ()))

    def merged_with(self, update: TreatmentRecord) -> TreatmentRecord:
        """This record with every field `update` sets replaced (a route changed); a dose given
        joins the doses (one id is one administration, the later report wins; starts hours apart
        are one infusion), a withdrawn administration leaves them, and the last dose is the
        latest known, whatever order the reports arrived in."""
        fields = update.model_dump(exclude_none=True, exclude={"doses", "withdrawn"})
        # A measurement older than the one kept does not replace it: results arrive out of order.
        # A value comes with its own time, or none: never another measurement's.
        for value, at in _MEASURED:
            if _earlier(getattr(update, at), getattr(self, at)):
                fields.pop(value, None)
                fields.pop(at, None)
            elif value in fields:
                fields[at] = getattr(update, at)
        if _earlier(update.last_dose_at, self.last_dose_at):
            fields.pop("last_dose_at", None)  # a back-charted older infusion is not the last one
        if not update.doses and not update.withdrawn:
            # A measurement (an albumin from the lab feed, nearly half of it): the dose history
            # stands as it was, already one history.
            return self.model_copy(update=fields)
        withdrawn = (*self.withdrawn, *(i for i in update.withdrawn if i not in self.withdrawn))
        fields["withdrawn"] = withdrawn[-MAX_WITHDRAWN:]
        fields["doses"] = _kept((*self.doses, *update.doses), fields["withdrawn"])
        return self.model_copy(update=fields)

    def last_dose_before(self, drawn: datetime) -> datetime | None:
        """The start of the latest infusion begun at or before `drawn`: from the doses and the
        record's own last dose, whatever order they arrived in."""
        starts = [as_utc(d.at) for d in self.doses]
        if self.last_dose_at is not None:
            starts.append(as_utc(self.last_dose_at))
        return max((at for at in starts if at <= drawn), default=None)

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
            if (last := self.last_dose_before(drawn)) is not None:
                days_since = (drawn - last).days
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


def _kept(doses: tuple[DoseGiven, ...], withdrawn: tuple[str, ...] = ()) -> tuple[DoseGiven, ...]:
    """One dose history: the latest report of each administration id, none withdrawn, starts
    within ONE_INFUSION_HOURS merged into one infusion, oldest first, the last MAX_DOSES."""
    by_id: dict[str, DoseGiven] = {}
    anonymous: list[DoseGiven] = []
    for dose in doses:  # in arrival order: a later report of the same id replaces the earlier
        if dose.id is None:
            anonymous.append(dose)
        elif dose.id not in withdrawn:
            by_id.pop(dose.id, None)
            by_id[dose.id] = dose
    merged: list[DoseGiven] = []
    gap = timedelta(hours=ONE_INFUSION_HOURS)
    for dose in sorted([*by_id.values(), *anonymous], key=lambda d: as_utc(d.at)):
        if merged and as_utc(dose.at) - as_utc(merged[-1].at) <= gap:
            merged[-1] = _one_infusion(merged[-1], dose)
        else:
            merged.append(dose)
    return tuple(merged)[-MAX_DOSES:]


def _one_infusion(first: DoseGiven, second: DoseGiven) -> DoseGiven:
    """Two reports of one infusion: its first start; the larger amount of the same unit (a dose
    charted twice is likelier than a split one, and a split dose's larger part understates the
    drug given where a sum would double a duplicate), else the one that states an amount."""
    if first.amount is None or (second.amount is not None and second.unit != first.unit):
        amount, unit = second.amount, second.unit
    elif second.amount is None:
        amount, unit = first.amount, first.unit
    else:
        amount, unit = max(first.amount, second.amount), first.unit
    return first.model_copy(update={"amount": amount, "unit": unit, "id": first.id or second.id})


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
