"""How a batch's outputs and consumed offsets reach Kafka: in one transaction, or at least once.

Exactly once (the default): alerts, dead letters and the batch's consumed offsets commit in
one Kafka transaction. The offsets carry the consumer's group metadata (KIP-447), so an
instance that has lost its partitions cannot commit them; the transactional id is stable per
instance (`{group}-{instance}`), so a restarted instance aborts whatever its dead
predecessor left open.

At least once: outputs are sent and acknowledged, then the offsets are committed; a crash
between the two re-delivers the batch, and `event_id` tells the duplicates apart.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata

from consumer.connection_failures import exception_chain
from consumer.kafka_clients import new_producer
from consumer.settings import Settings

log = structlog.get_logger("tdm_alerts.delivery")
SEND_TIMEOUT_S = 30.0

# The broker reads as a fence both another instance claiming our transactional id and its own
# abort of a transaction that outlived TDM_TRANSACTION_TIMEOUT_MS (a broker restart mid-batch):
# it bumps the epoch either way. Only a transaction open that long can have been timed out (the
# broker's clock for it starts after our begin), so a fence on a younger one is another instance.
FENCES: tuple[type[Exception], ...] = (
    kafka_errors.ProducerFencedError,
    kafka_errors.InvalidProducerEpochError,
)

# Errors no retry can fix: another instance owns our transactional id, or we are not allowed in.
FATAL_ERRORS: tuple[type[Exception], ...] = (
    kafka_errors.ProducerFencedError,
    kafka_errors.InvalidProducerEpochError,
    kafka_errors.TransactionalIdAuthorizationFailedError,
    kafka_errors.AuthorizationError,
    kafka_errors.SaslAuthenticationFailedError,
    kafka_errors.UnsupportedVersionError,
)


def fatal_cause(err: BaseException) -> BaseException | None:
    """The fatal error in `err` or wrapped in it (kafka-python wraps a fence seen at send time in
    a plain KafkaError whose args hold the ProducerFencedError), or None."""
    return next((e for e in exception_chain(err) if isinstance(e, FATAL_ERRORS)), None)


def is_fatal(err: BaseException) -> bool:
    return fatal_cause(err) is not None


class Delivery(ABC):
    """Opens a batch, sends its records, then commits or aborts outputs and offsets together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: KafkaProducer | None = None
        self._futures: list[FutureRecordMetadata] = []

    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = self._new_producer()
        return self._producer

    @abstractmethod
    def _new_producer(self) -> KafkaProducer: ...

    def connect(self) -> None:
        """Create the producer now (and for transactions, claim the transactional id)."""
        _ = self.producer

    def begin(self) -> None:
        self._futures = []

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        *,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> FutureRecordMetadata:
        """Send into the open batch; the future resolves once the batch is committed."""
        future = self.producer.send(
            topic, key=key, value=value, headers=headers, partition=partition, timestamp_ms=timestamp_ms
        )
        self._futures.append(future)
        return future

    @abstractmethod
    def commit(self, offsets: dict[TopicPartition, int], consumer: KafkaConsumer) -> None:
        """Make the batch's outputs visible and its offsets committed, or raise KafkaError."""

    def abort(self) -> None:
        """Drop the open batch; if the producer cannot say so, replace it (never raises transient)."""
        self._futures = []

    def survive_fence(self, err: BaseException) -> bool:
        """Whether `err` is a fence this delivery has recovered from (by replacing its producer)."""
        return False

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None

    def _await_sends(self) -> None:
        self.producer.flush(timeout=SEND_TIMEOUT_S)
        for future in self._futures:
            future.get(timeout=SEND_TIMEOUT_S)  # raises the send's error, if any
        self._futures = []


class TransactionalDelivery(Delivery):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._began = 0.0  # monotonic time the open transaction began

    @property
    def transactional_id(self) -> str:
        return f"{self.settings.group_id}-{self.settings.instance_id}"

    def _new_producer(self) -> KafkaProducer:
        producer = new_producer(self.settings, transactional_id=self.transactional_id)
        try:
            producer.init_transactions()  # fences and aborts any predecessor with our id
        except Exception:
            producer.close(timeout=5)
            raise
        log.info("transactions ready", transactional_id=self.transactional_id)
        return producer

    def begin(self) -> None:
        super().begin()
        self.producer.begin_transaction()
        self._began = time.monotonic()

    def commit(self, offsets: dict[TopicPartition, int], consumer: KafkaConsumer) -> None:
        self._await_sends()
        self.producer.send_offsets_to_transaction(
            {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()},
            consumer.group_metadata(),
        )
        self.producer.commit_transaction()

    def abort(self) -> None:
        super().abort()
        if self._producer is None:
            return
        try:
            self._producer.abort_transaction()
        except Exception as err:
            if is_fatal(err):
                if self.survive_fence(err):
                    return
                raise
            # The producer is in a state abort cannot leave (broker gone, fatal internal
            # error). A new producer with the same transactional id aborts the open
            # transaction when it initialises, so replacing this one is always safe.
            log.warning("abort failed; replacing the producer", error=type(err).__name__)
            self.close()
            return
        # Replaced after every abort, not reused: kafka-python 3 keeps the offsets of a refused
        # TxnOffsetCommit (a re-join's UnknownMemberId) after the abort and sends them with the
        # next transaction's, committing offsets whose outputs were aborted (alerts lost after a
        # broker restart, reproduced). A new producer starts clean; aborts are rare.
        self.close()

    def survive_fence(self, err: BaseException) -> bool:
        """Replace the producer after the broker's abort of a timed-out transaction; False (a
        fatal fence: another instance has our id) for anything else."""
        if not isinstance(cause := fatal_cause(err), FENCES):
            return False
        open_s = time.monotonic() - self._began
        if open_s * 1000 < self.settings.transaction_timeout_ms:
            return False
        log.warning(
            "transaction fenced after it outlived TDM_TRANSACTION_TIMEOUT_MS (a broker outage); "
            "replacing the producer",
            error=type(cause).__name__,
            open_s=round(open_s, 1),
        )
        self._futures = []
        self.close()  # the next batch's producer claims the id again and aborts what is open
        return True


class AtLeastOnceDelivery(Delivery):
    def _new_producer(self) -> KafkaProducer:
        return new_producer(self.settings)

    def commit(self, offsets: dict[TopicPartition, int], consumer: KafkaConsumer) -> None:
        self._await_sends()
        consumer.commit(offsets={tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()})


def delivery_for(settings: Settings) -> Delivery:
    if settings.delivery == "exactly_once":
        return TransactionalDelivery(settings)
    return AtLeastOnceDelivery(settings)
