"""The canonical JSON lab-result message (format `canonical`), documented in README.md.

One message is one report: a patient, an order/specimen, and one or more results.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from consumer.dead_letters import Reason
from consumer.formats.errors import DecodeError, Relevance, describe_validation_error, lab_result
from interpretation import LabResult, ResultStatus, TreatmentContext


def _number_as_text(value: object) -> object:
    """Labs send 2.1 and "2.1" alike; the engine reads text, so numbers become their text."""
    if isinstance(value, bool):
        return value  # rejected by the str type below, not silently "True"
    if isinstance(value, int | float | Decimal):
        return str(value)
    return value


class CanonicalResult(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: str
    code_system: str | None = None
    display: str | None = None
    value: Annotated[str | None, BeforeValidator(_number_as_text)] = None
    unit: str | None = None
    reference_range: str | None = None
    abnormal_flags: list[str] = Field(default_factory=list)
    status: ResultStatus = ResultStatus.FINAL
    result_id: str | None = None
    performing_lab: str | None = None
    comments: list[str] = Field(default_factory=list, max_length=20)


class CanonicalMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    patient_id: str
    accession: str | None = None
    specimen_id: str | None = None
    collected_at: datetime | None = None
    context: TreatmentContext = TreatmentContext()
    results: list[CanonicalResult] = Field(min_length=1, max_length=1000)


def decode_canonical(document: dict[str, Any], relevant: Relevance) -> list[LabResult]:
    """Validate one canonical message (all of it: it is our own format) and return its relevant results."""
    try:
        message = CanonicalMessage.model_validate(document)
    except ValidationError as err:
        raise DecodeError(Reason.INVALID, describe_validation_error(err)) from err
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
