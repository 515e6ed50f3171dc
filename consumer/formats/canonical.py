"""The canonical JSON lab-result message (format `canonical`), documented in README.md.

One message is one report: a patient, an order/specimen, and one or more results.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from consumer.formats.errors import Relevance, json_refusal, lab_result
from interpretation import LabResult, ResultStatus, TreatmentContext


class CanonicalResult(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: str
    code_system: str | None = None
    display: str | None = None
    # Labs send 2.1 and "2.1" alike; the engine reads text, so a number becomes its text (a
    # boolean is still refused).
    value: Annotated[str | None, Field(coerce_numbers_to_str=True)] = None
    unit: str | None = None
    reference_range: str | None = None
    abnormal_flags: list[str] = Field(default_factory=list)
    status: ResultStatus = ResultStatus.FINAL
    result_id: str | None = None
    performing_lab: str | None = None
    comments: list[str] = Field(default_factory=list, max_length=20)


class CanonicalMessage(BaseModel):
    """One rule for the whole message: a field we do not know is ignored, at every level.

    A sender adding a field must not stop its results paging; the core's TreatmentContext
    forbids unknown fields (a typo in a rule set must fail), so the message drops them first.
    """

    model_config = ConfigDict(extra="ignore")

    patient_id: str
    accession: str | None = None
    specimen_id: str | None = None
    collected_at: datetime | None = None
    context: TreatmentContext = TreatmentContext()
    results: list[CanonicalResult] = Field(min_length=1, max_length=1000)

    @field_validator("context", mode="before")
    @classmethod
    def _known_context_fields(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if k in TreatmentContext.model_fields}
        return value


def decode_canonical(data: bytes, relevant: Relevance) -> list[LabResult]:
    """Validate one canonical message (all of it: it is our own format) and return its relevant results.

    Validated straight from the bytes: parsing to Python objects first and validating those
    cost twice as much (48 against 27 us for a skipped ten-result report).
    """
    try:
        message = CanonicalMessage.model_validate_json(data)
    except ValidationError as err:
        raise json_refusal(err, "canonical") from err
    return [
        lab_result(
            f"results.{index}",
            patient_id=message.patient_id,
            accession=message.accession,
            specimen_id=message.specimen_id,
            collected_at=message.collected_at,
            context=message.context,
            abnormal_flags=tuple(r.abnormal_flags),
            comments=tuple(r.comments),
            **r.model_dump(exclude={"abnormal_flags", "comments"}),
        )
        for index, r in enumerate(message.results)
        if relevant(r.code, r.display)
    ]
