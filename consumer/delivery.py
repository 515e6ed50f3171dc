"""How a batch's outputs and consumed offsets reach Kafka: in one transaction, or at least once.

Exactly once (the default): alerts, dead letters and the batch's consumed offsets commit in
one Kafka transaction. The offsets carry the consumer's group metadata (KIP-447), so an
instance that has lost its partitions cannot commit them; the transactional ids are stable per
instance (`{group}-{instance}` and `{group}-{instance}/1`), so a restarted instance aborts
whatever its dead predecessor left open.

Two transactional producers take turns, one transaction at a time. The broker finishes a
commit (writes its markers) after answering it, and a producer that starts its next
transaction before that is told CONCURRENT_TRANSACTIONS and retries 20 ms later: back to
back on one id a transaction took 41 ms (p50), alternating two ids 14 ms, so the idle one
has always finished. Batches stay strictly sequential: a batch begins only after the one
before it committed, so outputs and offsets commit in the order they were read.

At least once: outputs are sent and acknowledged, then the offsets are committed; a crash
between the two re-delivers the batch, and `event_id` tells the duplicates apart.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

import structlog

from consumer.clients.seam import (
    Client,
    ClientError,
    Failure,
    GroupConsumer,
    Partition,
    Producer,
    Sent,
    TransactionalProducer,
)
from consumer.settings import Settings

log = structlog.get_logger("tdm_alerts.delivery")
SEND_TIMEOUT_S = 30.0
P = TypeVar("P", bound=Producer)


def fatal_cause(err: BaseException) -> ClientError | None:
    """The failure in `err` that no retry fixes (credentials, ACLs, our id fenced), or None."""
    return err if isinstance(err, ClientError) and err.failure.fatal else None


def is_fatal(err: BaseException) -> bool:
    return fatal_cause(err) is not None


class Delivery(ABC, Generic[P]):
    """Opens a batch, sends its records, then commits or aborts outputs and offsets together."""

    def __init__(self, settings: Settings, client: Client) -> None:
        self.settings = settings
        self.client = client
        self._producer: P | None = None

    @property
    def producer(self) -> P:
        if self._producer is None:
            self._producer = self._new_producer()
        return self._producer

    @abstractmethod
    def _new_producer(self) -> P: ...

    def connect(self) -> None:
        """Create the producer now (and for transactions, claim the transactional id)."""
        _ = self.producer

    def begin(self) -> None:
        pass

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        *,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> Sent:
        """Send into the open batch; where it landed is known once the batch is committed."""
        return self.producer.send(topic, key, value, headers, partition=partition, timestamp_ms=timestamp_ms)

    @abstractmethod
    def commit(self, offsets: Mapping[Partition, int], consumer: GroupConsumer) -> None:
        """Make the batch's outputs visible and its offsets committed, or raise ClientError."""

    def abort(self) -> None:
        """Drop the open batch; if the producer cannot say so, replace it (never raises transient)."""

    def survive_fence(self, err: BaseException) -> bool:
        """Whether `err` is a fence this delivery has recovered from (by replacing its producer)."""
        return False

    def failed(self, err: ClientError) -> None:
        """A batch failed with `err` (the loop retries it)."""

    def close(self) -> None:
        self._drop_producer()

    def _drop_producer(self) -> None:
        """Close the producer in use; the next batch makes a new one."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(10)


class TransactionalDelivery(Delivery[TransactionalProducer]):
    """`_producer` is the lane whose turn it is; `_resting` the other, its last transaction committed."""

    def __init__(self, settings: Settings, client: Client) -> None:
        super().__init__(settings, client)
        self._began = 0.0  # monotonic time the open transaction began
        self._lane = 0
        self._resting: TransactionalProducer | None = None
        # For telling the broker's own aborts after an outage from another instance's fence:
        # when each lane's producer last worked (made or committed), since when batches have
        # been failing (the cluster away), and when the last failing spell long enough for the
        # broker to time a transaction out ended.
        self._worked = [0.0, 0.0]
        self._failing_since: float | None = None
        self._long_outage_ended: float | None = None

    @property
    def transactional_id(self) -> str:
        """The first lane's id; the second's adds `/1` (a character no instance id may hold)."""
        return f"{self.settings.group_id}-{self.settings.instance_id}"

    def lane_id(self, lane: int) -> str:
        return self.transactional_id if lane == 0 else f"{self.transactional_id}/{lane}"

    def _new_producer(self) -> TransactionalProducer:
        # Initialising fences and aborts whatever a predecessor with this id left open.
        transactional_id = self.lane_id(self._lane)
        producer = self.client.transactional_producer(transactional_id)
        self._worked[self._lane] = time.monotonic()
        log.info("transactions ready", transactional_id=transactional_id, client=self.client.name)
        return producer

    def connect(self) -> None:
        """Claim both ids now: a predecessor's open transaction on either is aborted at start."""
        _ = self.producer
        self._take_turns()
        try:
            _ = self.producer
        finally:
            self._take_turns()

    def _take_turns(self) -> None:
        self._producer, self._resting = self._resting, self._producer
        self._lane = 1 - self._lane

    def begin(self) -> None:
        self.producer.begin()
        self._began = time.monotonic()

    def commit(self, offsets: Mapping[Partition, int], consumer: GroupConsumer) -> None:
        self.producer.flush(SEND_TIMEOUT_S)  # raises the first failed send
        if offsets:  # a batch the loop's clock opened may have read nothing (issue 39)
            self.producer.send_offsets(offsets, consumer.group_metadata())
        self.producer.commit()
        now = self._worked[self._lane] = time.monotonic()
        if self._failing_since is not None and self._outlived_transactions(now - self._failing_since):
            self._long_outage_ended = now
        self._failing_since = None
        self._take_turns()

    def failed(self, err: ClientError) -> None:
        if err.failure is Failure.TRANSIENT and self._failing_since is None:
            self._failing_since = time.monotonic()

    def _outlived_transactions(self, seconds: float) -> bool:
        return seconds * 1000 >= self.settings.transaction_timeout_ms

    def close(self) -> None:
        super().close()
        if self._resting is not None:
            self._resting.close(10)
            self._resting = None

    def abort(self) -> None:
        if self._producer is None:
            return
        try:
            self._producer.abort()
        except Exception as err:
            if is_fatal(err):
                if self.survive_fence(err):
                    return
                raise
            # The producer is in a state abort cannot leave (broker gone, fatal internal
            # error). A new producer with the same transactional id aborts the open
            # transaction when it initialises, so replacing this one is always safe.
            log.warning(
                "abort failed; replacing the producer", error=getattr(err, "name", type(err).__name__)
            )
            self._drop_producer()
            return
        # Replaced after every abort, not reused (kafka-python K1: a new producer starts clean).
        # Aborts are rare, so confluent-kafka's producer, which has no such flaw, is replaced
        # the same way.
        self._drop_producer()

    def survive_fence(self, err: BaseException) -> bool:
        """Replace the producer after the broker's own abort of a timed-out transaction; False
        (a fatal fence: another instance has our id) for anything else.

        The broker's abort can reach a producer three ways: its transaction stayed open past
        TDM_TRANSACTION_TIMEOUT_MS; batches have been failing (the cluster away) for that long;
        or the producer last worked before such a spell ended (the other lane, idle through it,
        met the bumped epoch on its next transaction: seen on confluent-kafka with Kafka 4).
        Another instance with our id fences a producer that has worked all along.
        """
        if not (isinstance(err, ClientError) and err.failure is Failure.FENCED):
            return False
        now = time.monotonic()
        open_s = now - self._began
        failing_s = now - self._failing_since if self._failing_since is not None else 0.0
        ended = self._long_outage_ended
        if not (
            self._outlived_transactions(open_s)
            or self._outlived_transactions(failing_s)
            or (ended is not None and self._worked[self._lane] < ended)
        ):
            return False
        log.warning(
            "transaction fenced by the broker after an outage longer than TDM_TRANSACTION_TIMEOUT_MS; "
            "replacing the producer",
            error=err.name,
            open_s=round(open_s, 1),
            failing_s=round(failing_s, 1),
        )
        self._drop_producer()  # the next batch's producer claims the id again and aborts what is open
        return True


class AtLeastOnceDelivery(Delivery[Producer]):
    def _new_producer(self) -> Producer:
        return self.client.producer()

    def commit(self, offsets: Mapping[Partition, int], consumer: GroupConsumer) -> None:
        self.producer.flush(SEND_TIMEOUT_S)  # raises the first failed send
        if offsets:
            consumer.commit(offsets)


def delivery_for(settings: Settings, client: Client) -> Delivery[TransactionalProducer] | Delivery[Producer]:
    if settings.delivery == "exactly_once":
        return TransactionalDelivery(settings, client)
    return AtLeastOnceDelivery(settings, client)
