"""OffLoop: broker questions on a side thread (EndOffsets and GroupCoverage run on it; their own
tests cover one question at a time and reconnecting after a ClientError)."""

from __future__ import annotations

import threading
import time

import pytest

from consumer.off_loop import OffLoop


class _Connection:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _wait_answered(asking: OffLoop[_Connection, int]) -> None:
    deadline = time.monotonic() + 5
    while not asking.answered and time.monotonic() < deadline:
        time.sleep(0.01)
    assert asking.answered


def test_closing_while_a_question_is_in_flight_leaves_its_connection_to_it():
    opened: list[_Connection] = []
    release = threading.Event()

    def connect() -> _Connection:
        opened.append(_Connection())
        return opened[-1]

    def question(connection: _Connection) -> int:
        release.wait(5)
        assert not connection.closed  # still open for the question using it
        return 7

    asking: OffLoop[_Connection, int] = OffLoop(connect, "test")
    assert asking.ask(question)
    time.sleep(0.05)
    asking.close()
    assert asking.busy and not opened[0].closed
    release.set()
    _wait_answered(asking)
    assert asking.take() == 7
    asking.close()
    assert opened[0].closed


def test_a_question_that_ends_without_an_answer_is_none_and_the_next_may_be_asked(monkeypatch):
    reported: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", reported.append)

    def broken(connection: _Connection) -> int:
        raise ValueError("a bug in the question, not the broker")

    asking: OffLoop[_Connection, int] = OffLoop(_Connection, "test")
    asking.ask(broken)
    _wait_answered(asking)
    assert asking.take() is None
    assert [type(r.exc_value) for r in reported] == [ValueError]  # reported, not swallowed
    assert asking.ask(lambda connection: 3)
    _wait_answered(asking)
    assert asking.take() == 3


def test_taking_before_the_answer_came_is_a_programming_error():
    asking: OffLoop[_Connection, int] = OffLoop(_Connection, "test")
    with pytest.raises(RuntimeError, match="before the answer came"):
        asking.take()
