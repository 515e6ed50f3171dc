"""When the loop commits, and that the broker's answers about lag never hold it up."""

from __future__ import annotations

import threading
import time

import pytest

from consumer.clients.seam import ClientError, Failure, Partition
from consumer.end_offsets import EndOffsets
from consumer.metrics import Metrics
from consumer.pipeline import Pipeline
from consumer.service import Service, _Batch
from consumer.settings import Settings
from interpretation import default_ruleset

P0 = Partition("lab.results", 0)


pytestmark = pytest.mark.usefixtures("clean_env")


def service() -> Service:
    return Service(Settings(), Pipeline(default_ruleset(), 4096), Metrics())


def test_a_batch_to_page_commits_once_caught_up_and_the_last_commit_is_paid_for(clock):
    """A commit costs the loop its length whatever it carries; an urgent batch waits at most
    as long again after the last one, so commits never take more than half the loop."""
    s, interval = service(), 0.125
    s._committed_at, s._commit_took = clock[0], 0.03125  # the last commit took 31.25 ms
    batch = _Batch(opened=clock[0], urgent=True)
    assert not s._commit_due(batch, caught_up=True, interval=interval)
    assert s._wait_ms(batch, interval) == 31  # the poll waits no longer than that
    clock[0] += 0.03125
    assert s._commit_due(batch, caught_up=True, interval=interval)
    assert not s._commit_due(batch, caught_up=False, interval=interval)  # a backlog: keep filling


def test_a_batch_with_nothing_to_page_fills_up_to_the_interval(clock):
    s, interval = service(), 0.125
    batch = _Batch(opened=clock[0])
    clock[0] += 0.0625
    assert not s._commit_due(batch, caught_up=True, interval=interval)
    assert s._wait_ms(batch, interval) == 62
    clock[0] += 0.0625
    assert s._commit_due(batch, caught_up=True, interval=interval)


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


def test_behind_the_feed_a_batch_runs_longer_but_well_inside_the_transaction_timeout(clock, monkeypatch):
    """A commit costs as much for 700 records as for 5,000: while polls come back full, the
    batch outgrows the interval, never past a quarter of the transaction timeout."""
    s, interval = service(), 0.125
    batch = _Batch(opened=clock[0], behind=True)
    clock[0] += 0.25
    assert not s._commit_due(batch, caught_up=False, interval=interval)
    clock[0] += 1.0  # 10 intervals in all
    assert s._commit_due(batch, caught_up=False, interval=interval)
    monkeypatch.setenv("TDM_TRANSACTION_TIMEOUT_MS", "2000")
    short = service()
    assert short._max_age(_Batch(opened=0.0, behind=True), interval) == 0.5
    assert short._max_age(_Batch(opened=0.0), interval) == interval
