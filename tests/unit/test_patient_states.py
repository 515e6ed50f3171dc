"""The state manager's batch protocol against an in-memory delivery: writes are read back within
the batch, applied to the local store only once the batch commits, and dropped when it aborts."""

from __future__ import annotations

import json

import pytest

from consumer.fatal import FatalError
from consumer.metrics import Metrics
from consumer.settings import Settings
from consumer.state.manager import PatientStates
from consumer.state.topics import StateTopics
from interpretation import LabResult, SourceRef
from tests.unit.helpers import RULES

pytestmark = pytest.mark.usefixtures("clean_env")

TOPICS = StateTopics(patients="g.patient-results", changelog="g.patient-state-changelog", repartition=True)


class Sent:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def offset(self, timeout_s: float) -> int:
        return self._offset


class Delivery:
    """Records what goes to the changelog; offsets count up as a partition's log would."""

    def __init__(self) -> None:
        self.changelog: list[tuple[int, bytes, bytes | None]] = []

    def send(self, topic, key, value, headers, *, partition=None, timestamp_ms=None):
        assert topic == TOPICS.changelog
        self.changelog.append((partition, key, value))
        return Sent(len(self.changelog) - 1)


def low_level(value: str = "1.2") -> LabResult:
    return LabResult.model_validate(
        {"patient_id": "PT-5", "accession": "A5", "code": "39803-2", "value": value, "unit": "ug/mL"}
    )


def states(tmp_path, monkeypatch) -> tuple[PatientStates, Delivery]:
    monkeypatch.setenv("TDM_STATE_DIR", str(tmp_path))
    delivery = Delivery()
    made = PatientStates(Settings(), TOPICS, RULES, delivery, Metrics())  # type: ignore[arg-type]
    made.assign([2])
    made.pending.clear()  # restored (nothing to restore: no Kafka here)
    return made, delivery


SOURCE = SourceRef(topic="lab.results", partition=0, offset=9)


def test_a_batch_reads_its_own_writes_and_the_store_gets_them_at_commit(tmp_path, monkeypatch):
    s, delivery = states(tmp_path, monkeypatch)
    first = s.correlate(2, low_level(), SOURCE)
    assert first is not None and [e.action.value for e in first.events] == ["trigger"]
    again = s.correlate(2, low_level(), SOURCE)  # an identical resend, read against the first
    assert again is not None and not again.events
    assert s.stores[2].get("PT-5") is None  # not applied before the transaction commits
    assert [(p, k) for p, k, _ in delivery.changelog] == [(2, b"PT-5")]  # the resend wrote nothing
    s.committed()
    stored = s.stores[2].get("PT-5")
    assert stored is not None and json.loads(stored) == json.loads(delivery.changelog[-1][2])
    assert s.stores[2].changelog_offset() == 0


def test_an_aborted_batch_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    s, _ = states(tmp_path, monkeypatch)
    s.correlate(2, low_level(), SOURCE)
    s.discarded()
    assert s.stores[2].get("PT-5") is None
    replay = s.correlate(2, low_level(), SOURCE)  # read again after the rewind: pages again
    assert replay is not None and [e.action.value for e in replay.events] == ["trigger"]


def test_forget_tombstones_the_patient_and_a_store_that_cannot_be_written_is_fatal(tmp_path, monkeypatch):
    s, delivery = states(tmp_path, monkeypatch)
    s.correlate(2, low_level(), SOURCE)
    s.committed()
    s.forget(2, "PT-5")
    assert delivery.changelog[-1] == (2, b"PT-5", None)
    s.committed()
    assert s.stores[2].get("PT-5") is None
    s.stores[2]._db.execute("PRAGMA query_only = ON")  # as a read-only volume would
    s.correlate(2, low_level("0.9"), SOURCE)
    with pytest.raises(FatalError, match="TDM_STATE_DIR"):
        s.committed()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def clocked(tmp_path, monkeypatch, now: float) -> tuple[PatientStates, Delivery, Clock]:
    monkeypatch.setenv("TDM_STATE_DIR", str(tmp_path))
    delivery, clock = Delivery(), Clock(now)
    made = PatientStates(Settings(), TOPICS, RULES, delivery, Metrics(), clock=clock)  # type: ignore[arg-type]
    made.assign([2])
    made.pending.clear()
    return made, delivery, clock


def test_a_follow_up_is_indexed_by_its_due_time_and_fired_once_on_the_clock(tmp_path, monkeypatch):
    """Issue 39: the deadline is in the store's index (and the changelog header), a tick finds it
    without reading other patients, and fires it once, writing the state that marks it fired."""
    s, delivery, clock = clocked(tmp_path, monkeypatch, 1_800_000_000.0)
    done = s.correlate(2, low_level(), SOURCE)  # no draw time: due from when it was read
    assert done is not None and done.state.next_due() is not None
    due = done.state.next_due().timestamp()
    s.committed()
    assert s.stores[2].due(due, 10) == ["PT-5"] and s.stores[2].due(due - 1, 10) == []
    assert s.stores[2].next_due() == due
    assert not s.follow_ups_due(clock.now)
    clock.now = due + 2.0
    assert s.follow_ups_due(clock.now)
    assert not s.follow_ups_due(clock.now)  # looked at most once a second
    fired = s.fire_due(clock.now)
    assert [(p, e.category.value, e.follow_up.late_seconds) for p, e in fired] == [(2, "follow_up", 2)]
    # Within the same batch, before its commit, a second tick fires nothing more.
    assert s.fire_due(clock.now + 1) == []
    s.committed()
    assert s.stores[2].next_due() is None and s.stores[2].due(clock.now + 10**9, 10) == []
    assert s.fire_due(clock.now + 5) == []
    assert len(delivery.changelog) == 2  # the level's write, then the one that marks it fired


def test_a_tick_never_fires_in_a_partition_that_is_restoring(tmp_path, monkeypatch):
    s, _, clock = clocked(tmp_path, monkeypatch, 1_800_000_000.0)
    done = s.correlate(2, low_level(), SOURCE)
    assert done is not None
    s.committed()
    clock.now = done.state.next_due().timestamp() + 60
    s.pending.add(2)
    assert not s.follow_ups_due(clock.now) and s.fire_due(clock.now) == []
    s.pending.clear()
    assert len(s.fire_due(clock.now)) == 1


def test_an_aborted_tick_fires_again_with_the_same_event(tmp_path, monkeypatch):
    s, _, clock = clocked(tmp_path, monkeypatch, 1_800_000_000.0)
    done = s.correlate(2, low_level(), SOURCE)
    assert done is not None
    s.committed()
    clock.now = done.state.next_due().timestamp() + 1
    (first,) = s.fire_due(clock.now)
    s.discarded()
    (again,) = s.fire_due(clock.now + 3)
    assert again[1].event_id == first[1].event_id


def test_follow_ups_count_from_when_the_result_reached_the_feed_not_from_when_it_is_read(
    tmp_path, monkeypatch
):
    """A result read again after a crash or a move, on another clock, leaves the same state."""
    arrived_ms = 1_800_000_000_000
    states_seen = []
    for n, now in enumerate((1_800_000_005.0, 1_800_000_900.0)):
        s, _, _ = clocked(tmp_path / str(n), monkeypatch, now)
        done = s.correlate(2, low_level(), SOURCE, arrived_ms=arrived_ms)
        assert done is not None
        states_seen.append(done.state)
    assert states_seen[0] == states_seen[1]
    assert states_seen[0].incidents[0].opened_at is not None
    assert states_seen[0].incidents[0].opened_at.timestamp() == arrived_ms / 1000
