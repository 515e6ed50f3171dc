"""Fences: one after a broker outage is survived by a new producer; a second soon after is fatal."""

from __future__ import annotations

import pytest
from kafka import errors as kafka_errors

from consumer import delivery
from consumer.delivery import REFENCE_WINDOW_S, TransactionalDelivery
from consumer.settings import Settings


class _Producer:
    """Stands in for a fenced KafkaProducer: its abort fails the way the broker makes it."""

    def __init__(self, abort_error: Exception | None = None) -> None:
        self.abort_error = abort_error
        self.closed = False

    def abort_transaction(self) -> None:
        if self.abort_error is not None:
            raise self.abort_error

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(delivery.time, "monotonic", lambda: now[0])
    return now


@pytest.fixture
def transactional(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("TDM_"):
            monkeypatch.delenv(key)
    return TransactionalDelivery(Settings())


@pytest.mark.parametrize("fence", [kafka_errors.ProducerFencedError, kafka_errors.InvalidProducerEpochError])
def test_the_first_fence_replaces_the_producer(transactional, clock, fence):
    old = transactional._producer = _Producer()
    assert transactional.survive_fence(fence())
    assert old.closed and transactional._producer is None  # the next batch claims the id afresh


def test_a_fence_wrapped_by_the_client_counts_as_a_fence(transactional, clock):
    transactional._producer = _Producer()
    wrapped = kafka_errors.KafkaError("Cannot perform send", kafka_errors.ProducerFencedError())
    assert transactional.survive_fence(wrapped)


def test_a_second_fence_within_the_window_is_fatal_and_after_it_is_survived(transactional, clock):
    transactional._producer = _Producer()
    assert transactional.survive_fence(kafka_errors.ProducerFencedError())
    transactional._producer = _Producer()
    clock[0] += REFENCE_WINDOW_S - 1  # two instances with one id fence each other this fast
    assert not transactional.survive_fence(kafka_errors.ProducerFencedError())
    assert not transactional._producer.closed
    clock[0] += 2  # a second outage, long after the first
    assert transactional.survive_fence(kafka_errors.ProducerFencedError())


@pytest.mark.parametrize(
    "error",
    [kafka_errors.TransactionalIdAuthorizationFailedError(), kafka_errors.KafkaTimeoutError(), ValueError()],
)
def test_other_errors_are_not_fences(transactional, clock, error):
    transactional._producer = _Producer()
    assert not transactional.survive_fence(error)
    assert not transactional._producer.closed


def test_an_abort_the_broker_fences_is_survived_once_then_raises(transactional, clock):
    transactional._producer = _Producer(abort_error=kafka_errors.ProducerFencedError())
    transactional.abort()  # survived: the producer is replaced, nothing raised
    assert transactional._producer is None
    transactional._producer = _Producer(abort_error=kafka_errors.ProducerFencedError())
    with pytest.raises(kafka_errors.ProducerFencedError):
        transactional.abort()


def test_at_least_once_has_no_fences(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("TDM_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TDM_DELIVERY", "at_least_once")
    assert not delivery.delivery_for(Settings()).survive_fence(kafka_errors.ProducerFencedError())


def test_a_producer_is_not_reused_after_an_abort(transactional, clock):
    """kafka-python 3 keeps a refused TxnOffsetCommit's offsets past the abort and commits them
    with the next transaction: only a new producer is safe."""
    old = transactional._producer = _Producer()
    transactional.abort()
    assert old.closed and transactional._producer is None
