"""The canonical JSON lab-result message (format `canonical`), documented in README.md.

One message is one report: a patient, an order/specimen, and one or more results.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from consumer.dead_letters import Reason
from consumer.formats.errors import DecodeError, describe_validation_error
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


class CanonicalMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    patient_id: str
    accession: str | None = None
    specimen_id: str | None = None
    collected_at: datetime | None = None
    context: TreatmentContext = TreatmentContext()
    results: list[CanonicalResult] = Field(min_length=1, max_length=1000)


def decode_canonical(data: bytes) -> list[LabResult]:
    """Decode and validate one canonical JSON message into lab results."""
    try:
        message = CanonicalMessage.model_validate_json(data)
        return [
            LabResult(
                patient_id=message.patient_id,
                accession=message.accession,
                specimen_id=message.specimen_id,
                collected_at=message.collected_at,
                context=message.context,
                abnormal_flags=tuple(r.abnormal_flags),
                **r.model_dump(exclude={"abnormal_flags"}),
            )
            for r in message.results
        ]
    except ValidationError as err:
        json_broken = any(e["type"] == "json_invalid" for e in err.errors())
        reason = Reason.UNDECODABLE if json_broken else Reason.INVALID
        raise DecodeError(reason, describe_validation_error(err)) from err
