"""The seam on kafka-python 3 (the default client): the group consumer and the producers.

Work in progress for issue #15: the service still uses kafka-python directly
(`consumer/kafka_clients.py`); this adapter is what it will use instead. The failure mapping
collects what `delivery.FATAL_ERRORS`, `service._REBALANCE_ERRORS` and `service._fatal_message`
decide today.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from kafka import ConsumerRebalanceListener, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors
from kafka.consumer.fetcher import ConsumerRecord
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata

from consumer.clients.seam import ClientError, Failure, Partition, Rebalance, Record
from consumer.connection_failures import exception_chain
from consumer.kafka_clients import in_group, new_consumer, new_producer
from consumer.settings import Settings

# First match wins, walking the exception and what it wraps (kafka-python wraps a fence seen
# at send time in a plain KafkaError).
_BY_CLASS: tuple[tuple[type[BaseException], Failure], ...] = (
    (kafka_errors.ProducerFencedError, Failure.FENCED),
    (kafka_errors.InvalidProducerEpochError, Failure.FENCED),
    (kafka_errors.CommitFailedError, Failure.REBALANCED),
    (kafka_errors.RebalanceInProgressError, Failure.REBALANCED),
    (kafka_errors.IllegalGenerationError, Failure.REBALANCED),
    (kafka_errors.UnknownMemberIdError, Failure.REBALANCED),
    (kafka_errors.TopicAuthorizationFailedError, Failure.NOT_AUTHORISED_TOPIC),
    (kafka_errors.GroupAuthorizationFailedError, Failure.NOT_AUTHORISED_GROUP),
    (kafka_errors.TransactionalIdAuthorizationFailedError, Failure.NOT_AUTHORISED_TRANSACTIONAL_ID),
    (kafka_errors.ClusterAuthorizationFailedError, Failure.NOT_AUTHORISED_CLUSTER),
    (kafka_errors.SaslAuthenticationFailedError, Failure.AUTHENTICATION),
    (kafka_errors.UnsupportedVersionError, Failure.UNSUPPORTED),
)


def failure_of(err: BaseException) -> Failure:
    for cause in exception_chain(err):
        for kind, failure in _BY_CLASS:
            if isinstance(cause, kind):
                return failure
    return Failure.TRANSIENT


def _raised(err: BaseException, doing: str) -> ClientError:
    return ClientError(failure_of(err), f"{doing}: {type(err).__name__}")


def _ours(tp: TopicPartition) -> Partition:
    return Partition(tp.topic, tp.partition)


def _theirs(partition: Partition) -> TopicPartition:
    return TopicPartition(partition.topic, partition.partition)


def _record(record: ConsumerRecord) -> Record:
    return Record(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=tuple(record.headers or ()),
        timestamp_ms=record.timestamp if record.timestamp is not None and record.timestamp >= 0 else None,
    )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, listener: Rebalance) -> None:
        self._listener = listener

    def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self._listener.assigned([_ours(tp) for tp in assigned])

    def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        self._listener.revoked([_ours(tp) for tp in revoked])

    def on_partitions_lost(self, lost: Collection[TopicPartition]) -> None:
        self._listener.lost([_ours(tp) for tp in lost])


class GroupConsumer:
    def __init__(self, settings: Settings) -> None:
        try:
            self._consumer = new_consumer(settings)
        except kafka_errors.KafkaError as err:
            raise _raised(err, "connect") from err

    def subscribe(self, topics: Sequence[str], pattern: str | None, listener: Rebalance) -> None:
        if pattern:
            self._consumer.subscribe(pattern=pattern, listener=_Listener(listener))
        else:
            self._consumer.subscribe(topics=list(topics), listener=_Listener(listener))

    def poll(self, timeout_ms: int, max_records: int) -> Mapping[Partition, Sequence[Record]]:
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except kafka_errors.KafkaError as err:
            raise _raised(err, "poll") from err
        return {_ours(tp): [_record(r) for r in records] for tp, records in polled.items()}

    def assign(self, partitions: Collection[Partition]) -> None:
        self._consumer.assign([_theirs(p) for p in partitions])

    def seek(self, partition: Partition, offset: int) -> None:
        self._consumer.seek(_theirs(partition), offset)

    def pause(self, partitions: Collection[Partition]) -> None:
        self._consumer.pause(*[_theirs(p) for p in partitions])

    def resume(self, partitions: Collection[Partition]) -> None:
        self._consumer.resume(*[_theirs(p) for p in partitions])

    def position(self, partition: Partition) -> int:
        return int(self._consumer.position(_theirs(partition)))

    def assignment(self) -> frozenset[Partition]:
        return frozenset(_ours(tp) for tp in self._consumer.assignment())

    def end_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int]:
        try:
            ends = self._consumer.end_offsets([_theirs(p) for p in partitions])
        except kafka_errors.KafkaError as err:
            raise _raised(err, "end offsets") from err
        return {_ours(tp): int(end) for tp, end in ends.items()}

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        try:
            self._consumer.commit(
                offsets={_theirs(p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
            )
        except kafka_errors.KafkaError as err:
            raise _raised(err, "commit") from err

    def group_metadata(self) -> object:
        return self._consumer.group_metadata()

    def in_group(self) -> bool:
        return in_group(self._consumer)

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class _Sent:
    def __init__(self, future: FutureRecordMetadata) -> None:
        self._future = future

    def offset(self, timeout_s: float) -> int:
        try:
            return int(self._future.get(timeout=timeout_s).offset)
        except kafka_errors.KafkaError as err:
            raise _raised(err, "send") from err


class Producer:
    """Idempotent, acks=all; transactional when given an id (initialised here)."""

    def __init__(self, settings: Settings, transactional_id: str | None = None) -> None:
        try:
            self._producer: KafkaProducer = new_producer(settings, transactional_id=transactional_id)
            if transactional_id is not None:
                self._producer.init_transactions()
        except kafka_errors.KafkaError as err:
            raise _raised(err, "connect") from err
        self._sent: list[_Sent] = []

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        *,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> _Sent:
        try:
            future = self._producer.send(
                topic,
                key=key,
                value=value,
                headers=list(headers),
                partition=partition,
                timestamp_ms=timestamp_ms,
            )
        except kafka_errors.KafkaError as err:
            raise _raised(err, "send") from err
        sent = _Sent(future)
        self._sent.append(sent)
        return sent

    def flush(self, timeout_s: float) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        except kafka_errors.KafkaError as err:
            raise _raised(err, "flush") from err
        sent, self._sent = self._sent, []
        for one in sent:
            one.offset(timeout_s)  # raises the first failed send

    def close(self, timeout_s: float) -> None:
        self._producer.close(timeout=timeout_s)

    # -- transactions (with a transactional id) ----------------------------------------------

    def begin(self) -> None:
        self._sent = []
        self._call(self._producer.begin_transaction, "begin")

    def send_offsets(self, offsets: Mapping[Partition, int], group_metadata: object) -> None:
        marks = {_theirs(p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
        self._call(lambda: self._producer.send_offsets_to_transaction(marks, group_metadata), "send offsets")

    def commit(self) -> None:
        self._call(self._producer.commit_transaction, "commit")

    def abort(self) -> None:
        self._sent = []
        self._call(self._producer.abort_transaction, "abort")

    def _call(self, action: object, doing: str) -> None:
        try:
            action()  # type: ignore[operator]
        except kafka_errors.KafkaError as err:
            raise _raised(err, doing) from err
