"""A patient-stage record the service cannot handle is dead-lettered, never a crash loop."""

from __future__ import annotations

import pytest

from consumer.clients.seam import ClientError, Failure, Record
from consumer.dead_letters import DeadLetter, Reason, Stage
from consumer.metrics import Metrics
from consumer.pipeline import Outcome, Pipeline
from consumer.service import Service
from consumer.settings import Settings
from consumer.state.manager import _RepartitionedResult
from interpretation import default_ruleset

pytestmark = pytest.mark.usefixtures("clean_env")

RECORD = Record("tdm-alerts.patient-results", 3, 17, b"P-1", b'{"result": {"patient_id": "P-1"}}', (), None)


class _States:
    """The part of PatientStates the service calls for a repartitioned record."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def process(self, record: Record) -> None:
        if self.error is not None:
            raise self.error
        # As PatientStates.process reads a result record: this one lacks most of its fields.
        _RepartitionedResult.model_validate_json(record.value or b"")


def service() -> Service:
    return Service(Settings(), Pipeline(default_ruleset(), 4096), Metrics())


@pytest.mark.parametrize(
    ("error", "shown"),
    [(None, "ValidationError"), (ZeroDivisionError("a bug in correlation"), "ZeroDivisionError")],
)
def test_a_record_the_patient_stage_cannot_handle_is_dead_lettered(error, shown):
    done = service()._patient_record(_States(error), RECORD)
    assert done.outcome is Outcome.DEAD_LETTERED
    # The exception's type only: its message may quote the record (patient data).
    assert done.dead_letter == DeadLetter(Reason.PROCESSING_ERROR, Stage.INTERPRET, shown)
    assert done.maybe_relevant  # an infliximab result that reached no one: counted as such
    assert not done.alerts


def test_kafka_errors_in_the_patient_stage_still_reach_the_loop():
    """The loop aborts and retries the batch on a client error; dead-lettering it would lose it."""
    fenced = ClientError(Failure.FENCED, "send: ProducerFencedError")
    with pytest.raises(ClientError):
        service()._patient_record(_States(fenced), RECORD)
