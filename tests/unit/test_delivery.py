"""Fences and aborts: a fence on a transaction that outlived the transaction timeout is the
broker's abort after an outage and is survived with a new producer; on a younger one it is
another instance with our id, which is fatal. No producer is reused after an abort."""

from __future__ import annotations

import pytest

from consumer import delivery
from consumer.clients.seam import ClientError, Failure
from consumer.delivery import TransactionalDelivery
from consumer.settings import Settings

TIMEOUT_S = 10.0  # TDM_TRANSACTION_TIMEOUT_MS's default, 10,000


def fenced() -> ClientError:
    return ClientError(Failure.FENCED, "commit: ProducerFencedError", name="ProducerFencedError")


class _Producer:
    """Stands in for the seam's transactional producer, whose abort fails the way the broker makes it."""

    def __init__(self, abort_error: Exception | None = None, transactional_id: str = "") -> None:
        self.abort_error = abort_error
        self.transactional_id = transactional_id
        self.closed = False
        self.committed = 0

    def begin(self) -> None:
        pass

    def flush(self, timeout_s: float) -> None:
        pass

    def send_offsets(self, offsets: object, group: object) -> None:
        pass

    def commit(self) -> None:
        self.committed += 1

    def abort(self) -> None:
        if self.abort_error is not None:
            raise self.abort_error

    def close(self, timeout_s: float) -> None:
        self.closed = True


class _Client:
    name = "fake"

    def __init__(self) -> None:
        self.claimed: list[str] = []

    def transactional_producer(self, transactional_id: str) -> _Producer:
        self.claimed.append(transactional_id)
        return _Producer(transactional_id=transactional_id)


class _Consumer:
    def group_metadata(self) -> object:
        return object()


pytestmark = pytest.mark.usefixtures("clean_env")


def opened(
    clock: list[float], seconds_ago: float, producer: _Producer | None = None
) -> TransactionalDelivery:
    """A delivery whose transaction began `seconds_ago`."""
    transactional = TransactionalDelivery(Settings(), _Client())  # type: ignore[arg-type]
    assert transactional.settings.transaction_timeout_ms == TIMEOUT_S * 1000
    transactional._producer = producer or _Producer()
    transactional.begin()
    clock[0] += seconds_ago
    return transactional


def test_a_fence_after_the_transaction_timeout_replaces_the_producer(clock):
    transactional = opened(clock, TIMEOUT_S + 5)  # a broker restart held the batch open
    old = transactional._producer
    assert transactional.survive_fence(fenced())
    assert old.closed and transactional._producer is None  # the next batch claims the id afresh


def test_a_fence_on_a_younger_transaction_is_another_instance(clock):
    transactional = opened(clock, TIMEOUT_S - 0.5)  # the broker cannot have timed it out yet
    assert not transactional.survive_fence(fenced())
    assert not transactional._producer.closed


@pytest.mark.parametrize(
    "error",
    [
        ClientError(Failure.NOT_AUTHORISED_TRANSACTIONAL_ID, "init transactions"),
        ClientError(Failure.TRANSIENT, "commit"),
        ClientError(Failure.REBALANCED, "send offsets"),
        ValueError(),
    ],
)
def test_other_errors_are_not_fences(clock, error):
    transactional = opened(clock, TIMEOUT_S + 1)
    assert not transactional.survive_fence(error)
    assert not transactional._producer.closed


def test_an_abort_the_broker_fences_after_an_outage_is_survived(clock):
    transactional = opened(clock, TIMEOUT_S + 1, _Producer(abort_error=fenced()))
    transactional.abort()  # nothing raised: the producer is replaced
    assert transactional._producer is None


def test_an_abort_fenced_by_another_instance_raises(clock):
    transactional = opened(clock, 0.2, _Producer(abort_error=fenced()))
    with pytest.raises(ClientError, match="fenced"):
        transactional.abort()


def test_a_producer_is_not_reused_after_an_abort(clock):
    """kafka-python 3 keeps a refused TxnOffsetCommit's offsets past the abort and commits them
    with the next transaction: only a new producer is safe."""
    transactional = opened(clock, 0.1)
    old = transactional._producer
    transactional.abort()
    assert old.closed and transactional._producer is None


def test_at_least_once_has_no_fences(monkeypatch):
    monkeypatch.setenv("TDM_DELIVERY", "at_least_once")
    assert not delivery.delivery_for(Settings(), _Client()).survive_fence(fenced())  # type: ignore[arg-type]


def test_two_transactional_ids_are_claimed_at_start_and_used_in_turn(monkeypatch):
    """Back to back on one id, a transaction waits for the broker to finish the previous one
    (CONCURRENT_TRANSACTIONS); the other id's last transaction has always finished."""
    monkeypatch.setenv("TDM_GROUP_ID", "g")
    monkeypatch.setenv("TDM_INSTANCE_ID", "pod-0")
    client = _Client()
    transactional = TransactionalDelivery(Settings(), client)  # type: ignore[arg-type]
    transactional.connect()
    assert client.claimed == ["g-pod-0", "g-pod-0/1"]  # both fenced and aborted before any batch
    used = []
    for _ in range(4):
        transactional.begin()
        used.append(transactional.producer.transactional_id)
        transactional.commit({}, _Consumer())  # type: ignore[arg-type]
    assert used == ["g-pod-0", "g-pod-0/1", "g-pod-0", "g-pod-0/1"]
    assert client.claimed == ["g-pod-0", "g-pod-0/1"]  # no producer made after the start


def test_an_abort_replaces_only_the_lane_in_use(clock):
    client = _Client()
    transactional = TransactionalDelivery(Settings(), client)  # type: ignore[arg-type]
    transactional.connect()
    transactional.begin()
    transactional.commit({}, _Consumer())  # type: ignore[arg-type]
    transactional.begin()
    failing = transactional.producer
    transactional.abort()
    assert failing.closed
    transactional.begin()  # the same lane again, with a new producer under the same id
    assert transactional.producer is not failing
    assert transactional.producer.transactional_id == failing.transactional_id
    resting = transactional._resting
    assert resting is not None and not resting.closed
    transactional.close()
    assert resting.closed and transactional._resting is None and transactional._producer is None


def _started(clock) -> TransactionalDelivery:
    """Both lanes claimed and one transaction committed on each."""
    transactional = TransactionalDelivery(Settings(), _Client())  # type: ignore[arg-type]
    transactional.connect()
    for _ in range(2):
        transactional.begin()
        transactional.commit({}, _Consumer())  # type: ignore[arg-type]
        clock[0] += 0.25
    return transactional


def test_a_fence_while_batches_have_failed_for_longer_than_the_timeout_is_the_brokers(clock):
    transactional = _started(clock)
    transactional.begin()
    transactional.failed(ClientError(Failure.TRANSIENT, "commit: all brokers down"))
    clock[0] += TIMEOUT_S + 1  # retried with back-off through the outage
    transactional.abort()
    transactional.begin()  # a new producer on this lane, a young transaction
    assert transactional.survive_fence(fenced())


def test_the_lane_idle_through_a_long_outage_survives_its_fence_after_the_other_lane_recovers(clock):
    """confluent-kafka on Kafka 4: after a 35 s outage the lane that had rested through it was
    fenced on its first transaction (a young one), and the service exited as if replaced."""
    transactional = _started(clock)
    transactional.begin()
    transactional.failed(ClientError(Failure.TRANSIENT, "commit: all brokers down"))
    clock[0] += TIMEOUT_S + 5
    transactional.abort()
    transactional.begin()
    transactional.commit({}, _Consumer())  # type: ignore[arg-type]  # the cluster is back
    clock[0] += 0.25
    transactional.begin()  # the other lane: its producer last worked before the outage
    rested = transactional.producer
    assert transactional.survive_fence(fenced())
    assert rested.closed and transactional._producer is None
    # Its new producer has worked since: a fence on it now is another instance.
    transactional.begin()
    transactional.commit({}, _Consumer())  # type: ignore[arg-type]
    transactional.begin()
    assert not transactional.survive_fence(fenced())


def test_a_short_outage_or_a_rebalance_does_not_excuse_a_fence(clock):
    transactional = _started(clock)
    transactional.begin()
    transactional.failed(ClientError(Failure.TRANSIENT, "commit: request timed out"))
    transactional.failed(ClientError(Failure.REBALANCED, "send offsets"))
    clock[0] += TIMEOUT_S / 2  # too short for the broker to time a transaction out
    transactional.abort()
    transactional.begin()
    assert not transactional.survive_fence(fenced())
    transactional.commit({}, _Consumer())  # type: ignore[arg-type]
    transactional.begin()  # the other lane, which rested through the short spell
    assert not transactional.survive_fence(fenced())
