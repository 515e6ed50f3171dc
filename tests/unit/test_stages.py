"""The stages and the restore gate against in-memory fakes of the client seam."""

from __future__ import annotations

import json

import pytest

from consumer.clients.seam import Partition, Record
from consumer.outputs import CORRELATION_HEADER, Outputs
from consumer.patient_topic import KIND_HEADER, TREATMENT, ResultRecord, TreatmentUpdate, read
from consumer.pipeline import Outcome, Pipeline
from consumer.stages.context import TreatmentContextStage
from consumer.stages.intake import ForwardingIntake
from consumer.stages.topology import Publishing
from consumer.state.gate import RestoreGate
from tests.unit.helpers import RULES

PATIENTS = "g.patient-results"
LOW = json.dumps(
    {
        "patient_id": "PT-9",
        "accession": "A1",
        "results": [{"code": "39803-2", "value": "1.1", "unit": "ug/mL"}],
    }
).encode()


class Delivery:
    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []

    def send(self, topic, key, value, headers, *, partition=None, timestamp_ms=None):
        self.sent.append({"topic": topic, "key": key, "value": value, "headers": headers, "ts": timestamp_ms})


def lab_message(value: bytes, offset: int = 4) -> Record:
    return Record("lab.results", 0, offset, b"k", value, (), 1_700_000_000_000)


def test_the_forwarding_intake_sends_each_result_to_the_patient_topic_keyed_by_patient():
    delivery = Delivery()
    stage = ForwardingIntake(Pipeline(RULES, 4096), delivery, PATIENTS)  # type: ignore[arg-type]
    done = stage.process(lab_message(LOW))
    assert done.urgent and not done.alerts and len(done.results) == 1
    [sent] = delivery.sent
    assert sent["topic"] == PATIENTS and sent["key"] == b"PT-9"
    assert sent["ts"] == 1_700_000_000_000  # the lab message's time travels with the result
    assert sent["headers"] == [(CORRELATION_HEADER, b"lab.results/0/4")]
    forwarded = read(Record(PATIENTS, 1, 0, b"PT-9", sent["value"], (), None))  # type: ignore[arg-type]
    assert isinstance(forwarded, ResultRecord)
    assert forwarded.result.value == "1.1" and forwarded.source.offset == 4


def test_a_message_the_intake_cannot_read_goes_to_the_dead_letter_topic_whole():
    delivery = Delivery()
    outputs = Outputs(delivery, "alerts", "dlq", dead_letter_limit=1_048_588)  # type: ignore[arg-type]
    stage = Publishing(ForwardingIntake(Pipeline(RULES, 4096), delivery, PATIENTS), outputs)  # type: ignore[arg-type]
    bad = b'{"patient_id": "PT-9", "results": [{"code": "39803-2", "value": true}]}'
    done = stage.process(lab_message(bad))
    assert done.outcome is Outcome.DEAD_LETTERED
    [sent] = delivery.sent
    headers = dict(sent["headers"])  # type: ignore[arg-type]
    assert sent["topic"] == "dlq" and sent["value"] == bad and headers["tdm.dlq.body"] == b"whole"


def test_a_treatment_record_is_forwarded_to_the_patient_topic_as_the_patient_stage_reads_it():
    delivery = Delivery()
    stage = TreatmentContextStage(RULES.recognition, None, delivery, PATIENTS)  # type: ignore[arg-type]
    context = Record("lab.context", 0, 1, b"PT-9", b'{"route": "subcutaneous"}', (), None)
    assert stage.process(context).outcome is Outcome.INTERPRETED
    [sent] = delivery.sent
    assert sent["key"] == b"PT-9" and sent["headers"] == [(KIND_HEADER, TREATMENT)]
    update = read(Record(PATIENTS, 0, 0, b"PT-9", sent["value"], tuple(sent["headers"]), None))  # type: ignore[arg-type]
    assert isinstance(update, TreatmentUpdate) and update.replace and update.record is not None


class States:
    """The part of PatientStates the gate uses: partition 1 waits for its restore."""

    def __init__(self) -> None:
        self.topics = type("Topics", (), {"patients": PATIENTS})()
        self.topics_read = frozenset({PATIENTS})
        self.pending: set[int] = set()
        self.restored = 0

    def assign(self, partitions):
        self.pending |= set(partitions)

    def waits_for_restore(self, tp: Partition) -> bool:
        return tp.partition in self.pending and tp.topic in self.topics_read

    def restore_pending(self) -> list[int]:
        done, self.pending = sorted(self.pending), set()
        return done

    def revoke(self, partitions):
        self.pending -= set(partitions)


class Consumer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.owned: set[Partition] = set()

    def pause(self, tps):
        self.calls.append(("pause", sorted(tps)))

    def resume(self, tps):
        self.calls.append(("resume", sorted(tps)))

    def seek(self, tp, offset):
        self.calls.append(("seek", (tp, offset)))

    def assignment(self):
        return frozenset(self.owned)


@pytest.mark.parametrize("delivered_while_paused", [True, False])
def test_a_patient_partition_is_read_only_after_its_restore_whatever_the_client_delivers(
    delivered_while_paused,
):
    """confluent-kafka applies the assignment after the callback, so the pause can come too late
    and the first poll deliver the partition's records anyway (issue 27)."""
    states, consumer = States(), Consumer()
    gate = RestoreGate(states, lambda s: None)  # type: ignore[arg-type]
    p1, other = Partition(PATIENTS, 1), Partition("lab.results", 0)
    consumer.owned = {p1, other}
    gate.assigned([p1, other], consumer)  # type: ignore[arg-type]
    assert consumer.calls == [("pause", [p1])] and gate.due()
    polled = {p1: [Record(PATIENTS, 1, 40, b"PT", b"{}", (), None)], other: [lab_message(LOW)]}
    if delivered_while_paused:
        kept = gate.admit(consumer, polled)  # type: ignore[arg-type]
        assert list(kept) == [other]  # the feed goes on; the patient partition waits
        assert gate.holds(p1) and consumer.calls[-2:] == [("seek", (p1, 40)), ("pause", [p1])]
    gate.restore(consumer)  # type: ignore[arg-type]
    assert not gate.due() and not gate.holds(p1)
    resumed = consumer.calls[consumer.calls.index(("resume", [p1])) :]
    assert resumed == (
        [("resume", [p1]), ("seek", (p1, 40))] if delivered_while_paused else [("resume", [p1])]
    )
    assert gate.admit(consumer, polled) is polled  # restored: nothing held any more
