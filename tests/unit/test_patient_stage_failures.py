"""A patient-stage record the service cannot handle is dead-lettered, never a crash loop."""

from __future__ import annotations

import pytest

from consumer.clients.seam import ClientError, Failure, Record
from consumer.dead_letters import DeadLetter, Reason, Stage
from consumer.fatal import FatalError
from consumer.pipeline import Outcome
from consumer.stages.patient import PatientStage

RECORD = Record("tdm-alerts.patient-results", 3, 17, b"P-1", b'{"result": {"patient_id": "P-1"}}', (), None)
READABLE = Record(
    "tdm-alerts.patient-results",
    3,
    18,
    b"P-1",
    b'{"result":{"patient_id":"P-1","code":"39803-2","value":"1.1","unit":"ug/mL"},'
    b'"source":{"topic":"lab.results","partition":0,"offset":4}}',
    (),
    None,
)


class _States:
    """The part of PatientStates the patient stage calls for a result."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.read: list[object] = []

    def correlate(
        self, partition: int, result: object, source: object, *, arrived_ms: int | None = None
    ) -> None:
        self.read.append(result)
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize(
    ("record", "error", "shown"),
    [
        (RECORD, None, "ValidationError"),  # lacks most of a result's fields
        (READABLE, ZeroDivisionError("a bug in correlation"), "ZeroDivisionError"),
    ],
)
def test_a_record_the_patient_stage_cannot_handle_is_dead_lettered(record, error, shown):
    done = PatientStage(_States(error)).process(record)  # type: ignore[arg-type]
    assert done.outcome is Outcome.DEAD_LETTERED
    # The exception's type only: its message may quote the record (patient data).
    assert done.dead_letter == DeadLetter(Reason.PROCESSING_ERROR, Stage.INTERPRET, shown)
    assert done.maybe_relevant  # an infliximab result that reached no one: counted as such
    assert not done.alerts


@pytest.mark.parametrize(
    "error",
    [ClientError(Failure.FENCED, "send: ProducerFencedError"), FatalError("disk full under TDM_STATE_DIR")],
)
def test_kafka_and_store_failures_in_the_patient_stage_still_reach_the_loop(error):
    """The loop aborts and retries the batch on a client error, and a store that cannot be
    written stops the service; dead-lettering either would lose a page."""
    states = _States(error)
    with pytest.raises(type(error)):
        PatientStage(states).process(READABLE)  # type: ignore[arg-type]
    assert states.read  # the record was read as far as the state
