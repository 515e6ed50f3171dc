"""The decoded lab result: one observation with the identifiers and context needed to judge it.

Every feed format (canonical JSON, HL7 v2, FHIR) decodes into these models; nothing past
the decoders sees raw bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError


def as_utc(moment: datetime) -> datetime:
    """A time without an offset read as UTC, so that any two reported times can be compared."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def validation_problems(err: ValidationError, whole: str) -> list[str]:
    """Each problem of a validation error as `field: what is wrong` (`whole` where it is the
    whole document); never the value given, which may name a patient."""
    return [
        f"{'.'.join(str(p) for p in e['loc']) or whole}: {e['msg']}"
        for e in err.errors(include_url=False, include_input=False)
    ]


class Frozen(BaseModel):
    """Base for the core's value objects: immutable, and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def describe_set_fields(self) -> str:
        """The fields that are set, as `key=value, ...` (empty when none are)."""
        return ", ".join(f"{key}={value}" for key, value in self.model_dump(exclude_none=True).items())


COMMENT_MAX_CHARS = 1000

NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ResultStatus(StrEnum):
    """Lab result status, after HL7 OBX-11 and FHIR Observation.status."""

    PRELIMINARY = "preliminary"
    FINAL = "final"
    CORRECTED = "corrected"
    CANCELLED = "cancelled"
    ENTERED_IN_ERROR = "entered_in_error"

    @property
    def may_page(self) -> bool:
        """Only a released (final or corrected) result may page a clinician."""
        return self in (ResultStatus.FINAL, ResultStatus.CORRECTED)

    @property
    def is_withdrawn(self) -> bool:
        return self in (ResultStatus.CANCELLED, ResultStatus.ENTERED_IN_ERROR)


class Phase(StrEnum):
    INDUCTION = "induction"
    MAINTENANCE = "maintenance"


class Route(StrEnum):
    INTRAVENOUS = "intravenous"
    SUBCUTANEOUS = "subcutaneous"


class Monitoring(StrEnum):
    """Why the level was drawn: routine (proactive) or because the disease is active (reactive)."""

    PROACTIVE = "proactive"
    REACTIVE = "reactive"


class Goal(StrEnum):
    """Treatment goals with published infliximab thresholds (see the rule set's citations)."""

    BIOCHEMICAL_REMISSION = "biochemical_remission"
    ENDOSCOPIC_REMISSION = "endoscopic_remission"
    HISTOLOGIC_REMISSION = "histologic_remission"
    MUCOSAL_HEALING = "mucosal_healing"
    TRANSMURAL_HEALING = "transmural_healing"


class Indication(StrEnum):
    """The disease treated: some thresholds were measured in one of them only."""

    CROHNS_DISEASE = "crohns_disease"
    ULCERATIVE_COLITIS = "ulcerative_colitis"


class TreatmentContext(Frozen):
    """What is known about the patient's treatment when the specimen was drawn.

    Every field is optional: a rule set says which target applies when something is unknown.
    """

    phase: Phase | None = None
    week: Annotated[int, Field(ge=0, le=1040)] | None = None
    route: Route | None = None
    goal: Goal | None = None
    monitoring: Monitoring | None = None
    indication: Indication | None = None
    days_since_last_dose: Annotated[int, Field(ge=0, le=3650)] | None = None
    dosing_interval_days: Annotated[int, Field(ge=1, le=365)] | None = None


class LabResult(Frozen):
    """One coded observation as the lab reported it, plus who and what it is about.

    `value` stays the lab's text ("2.4", "<1.0", "Positive", "TNP"): reading it is a clinical
    decision made by the engine, not by the decoder. `comments` are the lab's notes on the
    result (HL7 NTE, FHIR note): kept for people reading a result, never put into an alert.
    """

    patient_id: NonEmpty
    accession: NonEmpty | None = None
    specimen_id: NonEmpty | None = None
    result_id: NonEmpty | None = None
    collected_at: datetime | None = None
    code: NonEmpty
    code_system: NonEmpty | None = None
    display: Annotated[str, StringConstraints(max_length=500)] | None = None
    value: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None
    unit: Annotated[str, StringConstraints(strip_whitespace=True, max_length=50)] | None = None
    reference_range: Annotated[str, StringConstraints(max_length=100)] | None = None
    abnormal_flags: tuple[Annotated[str, StringConstraints(max_length=10)], ...] = ()
    status: ResultStatus = ResultStatus.FINAL
    performing_lab: NonEmpty | None = None
    comments: tuple[Annotated[str, StringConstraints(max_length=COMMENT_MAX_CHARS)], ...] = ()
    context: TreatmentContext = TreatmentContext()
