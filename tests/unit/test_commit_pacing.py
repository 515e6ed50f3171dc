"""When the loop commits, and that the broker's answers about lag never hold it up."""

from __future__ import annotations

import threading
import time

import pytest

from consumer.clients.seam import ClientError, Failure, Partition
from consumer.end_offsets import EndOffsets
from consumer.loop.batch import Batch
from consumer.loop.pacing import Pacing
from consumer.settings import Settings

P0 = Partition("lab.results", 0)


pytestmark = pytest.mark.usefixtures("clean_env")


def pacing(clock: list[float], **overrides: float) -> Pacing:
    """The settings' pacing (TDM_COMMIT_INTERVAL_MS 125 here) on the test's clock."""
    fields = {"interval_s": 0.125, **overrides}
    made = Pacing.from_settings(Settings(), clock=lambda: clock[0])
    for name, value in fields.items():
        setattr(made, name, value)
    return made


def test_a_batch_to_page_commits_once_caught_up_and_the_last_commit_is_paid_for(clock):
    """A commit costs the loop its length whatever it carries; an urgent batch waits at most
    as long again after the last one, so commits never take more than half the loop."""
    p = pacing(clock)
    p.committed(0.03125)  # the last commit took 31.25 ms and finished now
    batch = Batch(opened=clock[0], urgent=True)
    assert not p.due(batch, caught_up=True)
    assert p.wait_ms(batch) == 31  # the poll waits no longer than that
    clock[0] += 0.03125
    assert p.due(batch, caught_up=True)
    assert not p.due(batch, caught_up=False)  # a backlog: keep filling


def test_a_batch_with_nothing_to_page_fills_up_to_the_interval(clock):
    p = pacing(clock)
    batch = Batch(opened=clock[0])
    clock[0] += 0.0625
    assert not p.due(batch, caught_up=True)
    assert p.wait_ms(batch) == 62
    clock[0] += 0.0625
    assert p.due(batch, caught_up=True)


def test_a_full_batch_commits_and_a_poll_never_brings_more_than_it_has_room_for(clock):
    p = pacing(clock, batch_max_records=600)
    batch = Batch(opened=clock[0])
    assert p.room(None) == 500 and p.wait_ms(None) == Settings().poll_timeout_ms
    batch.processed.extend([(None, None)] * 450)  # type: ignore[list-item]
    assert p.room(batch) == 150 and not p.due(batch, caught_up=False)
    batch.processed.extend([(None, None)] * 150)  # type: ignore[list-item]
    assert p.due(batch, caught_up=False)


class _Reader:
    def __init__(self, release: threading.Event, error: ClientError | None = None) -> None:
        self.release, self.error, self.closed = release, error, False

    def end_offsets(self, partitions):
        self.release.wait(5)
        if self.error is not None:
            raise self.error
        return dict.fromkeys(partitions, 42)

    def close(self) -> None:
        self.closed = True


class _Client:
    def __init__(self, error: ClientError | None = None) -> None:
        self.release = threading.Event()
        self.readers: list[_Reader] = []
        self.error = error

    def reader(self, purpose: str) -> _Reader:
        self.readers.append(_Reader(self.release, self.error))
        return self.readers[-1]


def _answer(offsets: EndOffsets):
    deadline = time.monotonic() + 5
    while (answer := offsets.answer()) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return answer


def test_end_offsets_are_asked_off_the_loop_one_question_at_a_time():
    client = _Client()
    offsets = EndOffsets(client)  # type: ignore[arg-type]
    assert offsets.ask([P0])
    assert offsets.answer() is None  # the broker has not answered: the loop goes on
    assert not offsets.ask([P0])  # no second question while one is out
    client.release.set()
    assert _answer(offsets) == {P0: 42}
    assert offsets.answer() is None  # collected once
    assert offsets.ask([P0])  # the same reader asks again
    assert _answer(offsets) == {P0: 42} and len(client.readers) == 1
    offsets.close()
    assert client.readers[0].closed


def test_a_failed_question_is_raised_to_the_loop_and_the_next_one_reconnects():
    client = _Client(ClientError(Failure.TRANSIENT, "end offsets: broker gone"))
    client.release.set()
    offsets = EndOffsets(client)  # type: ignore[arg-type]
    offsets.ask([P0])
    deadline = time.monotonic() + 5
    with pytest.raises(ClientError, match="broker gone"):
        while offsets.answer() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    assert client.readers[0].closed
    offsets.ask([P0])
    with pytest.raises(ClientError):
        _answer(offsets)
    assert len(client.readers) == 2


def test_behind_the_feed_a_batch_runs_longer_but_well_inside_the_transaction_timeout(clock):
    """A commit costs as much for 700 records as for 5,000: while polls come back full, the
    batch outgrows the interval, never past a quarter of the transaction timeout."""
    p = pacing(clock)
    batch = Batch(opened=clock[0], behind=True)
    clock[0] += 0.25
    assert not p.due(batch, caught_up=False)
    clock[0] += 1.0  # 10 intervals in all
    assert p.due(batch, caught_up=False)
    short = pacing(clock, transaction_timeout_s=2.0)
    assert short.max_age(Batch(opened=0.0, behind=True)) == 0.5
    assert short.max_age(Batch(opened=0.0)) == 0.125
