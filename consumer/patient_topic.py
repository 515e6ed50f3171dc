"""What the patient topic carries: every record the patient stage reads, in one place.

The patient topic is keyed by patient id, so all of a patient's records reach the partition
(and the instance) that holds their state. With the repartition hop it is the internal topic
`{TDM_GROUP_ID}.patient-results`, written by the intake; with the input keyed by patient it is
the input topic itself, which carries only the `forget` command in this format.

Three kinds of record, told apart by their headers:
- a lab result the intake picked out: `{"result": LabResult, "source": SourceRef}`;
- a treatment-context record (`tdm.kind: treatment`): `{"record": TreatmentRecord | null,
  "replace": bool}`;
- a forget command (`tdm.command: forget`), empty, written by `tdm-alerts forget`;
- an acknowledgement (`tdm.kind: ack`): an `Acknowledgement`, forwarded from the ack topic.
"""

from __future__ import annotations

from typing import NamedTuple

from consumer.clients.seam import Record
from interpretation import LabResult, SourceRef
from interpretation.acknowledgement import Acknowledgement
from interpretation.lab_result import Frozen
from interpretation.treatment import TreatmentRecord

COMMAND_HEADER = "tdm.command"
KIND_HEADER = "tdm.kind"
TREATMENT = b"treatment"
ACK = b"ack"
FORGET = b"forget"

Headers = list[tuple[str, bytes]]


class ResultRecord(Frozen):
    """A decoded result and where it was first read (the lab message)."""

    result: LabResult
    source: SourceRef


class TreatmentUpdate(Frozen):
    """A patient's treatment record replaced, merged (replace=False) or deleted (record None)."""

    record: TreatmentRecord | None
    replace: bool


class Forget(NamedTuple):
    """Remove the patient's state (a data-protection request)."""

    patient_id: str


def result_value(result: LabResult, source: SourceRef) -> bytes:
    # Built by hand from two dumps: a model for the pair cost a validation per forwarded result.
    return (
        b'{"result":'
        + result.model_dump_json(exclude_defaults=True).encode()
        + b',"source":'
        + source.model_dump_json(exclude_none=True).encode()
        + b"}"
    )


def treatment_record(update: TreatmentRecord | None, replace: bool) -> tuple[bytes, Headers]:
    shown = "null" if update is None else update.model_dump_json(exclude_none=True)
    value = f'{{"record":{shown},"replace":{"true" if replace else "false"}}}'.encode()
    return value, [(KIND_HEADER, TREATMENT)]


def ack_record(ack: Acknowledgement) -> tuple[bytes, Headers]:
    return ack.model_dump_json().encode(), [(KIND_HEADER, ACK)]


def forget_record() -> tuple[bytes, Headers]:
    return b"", [(COMMAND_HEADER, FORGET)]


def is_forget(record: Record) -> bool:
    return (COMMAND_HEADER, FORGET) in record.headers


def read(record: Record) -> Forget | TreatmentUpdate | Acknowledgement | ResultRecord:
    """The record as the patient stage acts on it; raises ValueError (pydantic's) if unreadable."""
    if is_forget(record):
        return Forget(record.key.decode() if record.key else "")
    if (KIND_HEADER, TREATMENT) in record.headers:
        return TreatmentUpdate.model_validate_json(record.value or b"")
    if (KIND_HEADER, ACK) in record.headers:
        return Acknowledgement.model_validate_json(record.value or b"")
    return ResultRecord.model_validate_json(record.value or b"")
