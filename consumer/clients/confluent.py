"""The seam on confluent-kafka (librdkafka): several times faster per record than kafka-python,
and it speaks Kafka 4's consumer group protocol (KIP-848, TDM_GROUP_PROTOCOL=consumer).

librdkafka connects in the background and reports trouble through a callback, not by raising:
each client here checks at creation that the cluster answers (a metadata request) and turns
the errors the callback saw meanwhile into the same failures kafka-python's adapter raises, so
start-up retries an unreachable cluster and stops on refused credentials or certificates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, OFFSET_STORED, Consumer, KafkaError, KafkaException, Message
from confluent_kafka import Producer as _Producer
from confluent_kafka import TopicPartition as _TopicPartition

from consumer.clients.confluent_admin import Admin
from consumer.clients.deadlines import DEADLINES
from consumer.clients.librdkafka import (
    CALL_TIMEOUT_S,
    LOG,
    Errors,
    call,
    check_reachable,
    client_error,
    client_options,
    failure_of,
    ours,
    theirs,
)
from consumer.clients.seam import (
    FETCH_MAX_WAIT_MS,
    FETCH_MIN_BYTES,
    METADATA_REFRESH_MS,
    ClientError,
    Failure,
    Partition,
    Rebalance,
    Record,
)
from consumer.settings import Settings

T = TypeVar("T")


def _record(message: Message) -> Record:
    kind, stamp = message.timestamp()
    return Record(  # by position, in field order: one is built per consumed message
        message.topic(),
        message.partition(),
        message.offset(),
        message.key(),
        message.value(),
        tuple(message.headers() or ()),
        stamp if kind != 0 and stamp > 0 else None,  # 0: TIMESTAMP_NOT_AVAILABLE
    )


class _Reader:
    """read_committed, no auto-commit."""

    def __init__(self, settings: Settings, purpose: str, extra: Mapping[str, Any]) -> None:
        self._errors = Errors()
        options = {
            **client_options(settings, self._errors, purpose),
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            # Pre-fetch at most ~16 MB (librdkafka's defaults, 64 MB and 100,000 messages per
            # partition, held 168 MB of RSS in `make bench`); it still keeps a backlog flowing.
            "queued.max.messages.kbytes": 16_384,
            "queued.min.messages": 5_000,
            # With the queue above those, librdkafka waits fetch.queue.backoff.ms (1 s by
            # default) before fetching again: the loop drained 5,000 records in ~0.5 s and then
            # starved. 10 ms: a restore of 100,000 patients 19.7 s -> 8.9 s, the mixed feed
            # with state 6,400 -> 9,100 msgs/s.
            "fetch.queue.backoff.ms": 10,
            # An empty fetch (fetch.wait.max.ms of 10 for the group consumer) backs off this
            # long before the next; librdkafka's 500 ms default would hold a quiet partition's
            # next record that long.
            "fetch.error.backoff.ms": 50,
            **extra,
        }
        self._starting: dict[Partition, int] | None = None  # assigned, not yet handed to librdkafka
        self._consumer = call(lambda: Consumer(options), "connect")
        try:
            check_reachable(self._consumer, self._errors, settings, "connect")
        except ClientError:
            self._consumer.close()
            raise

    def assign(self, partitions: Collection[Partition]) -> None:
        # Given to librdkafka with their start offsets on the next poll: it seeks only
        # partitions it is already fetching, and a seek right after assign races the fetcher.
        self._starting = dict.fromkeys(partitions, OFFSET_STORED)

    def seek(self, partition: Partition, offset: int) -> None:
        if (starting := self._starting) is not None and partition in starting:
            starting[partition] = offset
        else:
            call(lambda: self._consumer.seek(theirs(partition, offset)), "seek")

    def seek_to_beginning(self, partition: Partition) -> None:
        self.seek(partition, OFFSET_BEGINNING)

    def poll(self, timeout_ms: int, max_records: int) -> Mapping[Partition, Sequence[Record]]:
        if self._starting is not None:
            starts, self._starting = self._starting, None
            call(lambda: self._consumer.assign([theirs(p, o) for p, o in starts.items()]), "assign")
        consume = self._consumer.consume
        # librdkafka's consume waits until it has `num_messages` or the time-out; kafka-python's
        # poll returns what is there. Take what is queued; only if nothing is, wait for a first
        # record, then take what came with it. (A full wait held every alert ~100 ms.)
        messages = call(lambda: consume(num_messages=max_records, timeout=0), "poll")
        if not messages and timeout_ms > 0:
            messages = call(lambda: consume(num_messages=1, timeout=timeout_ms / 1000), "poll")
            if messages and max_records > 1:
                messages += call(lambda: consume(num_messages=max_records - 1, timeout=0), "poll")
        polled: dict[Partition, list[Record]] = {}
        for message in messages:
            if (error := message.error()) is not None:
                if failure_of(error).fatal:
                    raise client_error(error, "poll")
                continue  # e.g. a subscribed topic not created yet: librdkafka retries it
            polled.setdefault(Partition(message.topic(), message.partition()), []).append(_record(message))
        return polled

    def position(self, partition: Partition) -> int:
        if self._starting is not None and partition in self._starting and self._starting[partition] >= 0:
            return self._starting[partition]
        [found] = call(lambda: self._consumer.position([theirs(partition)]), "position")
        if found.offset >= 0:
            return int(found.offset)
        # Nothing fetched yet since the assignment: where fetching will start.
        [committed] = call(lambda: self._consumer.committed([theirs(partition)], CALL_TIMEOUT_S), "position")
        if committed.offset >= 0:
            return int(committed.offset)
        return self._watermarks(partition, "position")[0]

    def _watermarks(self, partition: Partition, doing: str) -> tuple[int, int]:
        """The log start and end, queried (not cached); the end is the last stable offset for
        a read_committed consumer."""
        low, high = call(
            lambda: self._consumer.get_watermark_offsets(theirs(partition), CALL_TIMEOUT_S, False), doing
        )
        return int(low), int(high)

    def end_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int]:
        return {p: self._watermarks(p, "end offsets")[1] for p in partitions}

    def partitions_for(self, topic: str) -> list[int] | None:
        metadata = call(lambda: self._consumer.list_topics(topic, timeout=CALL_TIMEOUT_S), "describe topic")
        found = metadata.topics.get(topic)
        return (
            None
            if found is None or found.error is not None or not found.partitions
            else sorted(found.partitions)
        )

    def beginning_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int]:
        return {p: self._watermarks(p, "beginning offsets")[0] for p in partitions}

    def offsets_for_time(self, partitions: Collection[Partition], ms: int) -> Mapping[Partition, int | None]:
        found = call(
            lambda: self._consumer.offsets_for_times([theirs(p, ms) for p in partitions], CALL_TIMEOUT_S),
            "offsets for time",
        )
        return {ours(tp): int(tp.offset) if tp.offset >= 0 else None for tp in found}

    def close(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as err:  # seam: close never raises
            LOG.info("consumer closed after a failure: %s", err)


class GroupConsumer(_Reader):
    """A member of TDM_GROUP_ID; callbacks run inside poll, on the polling thread."""

    def __init__(self, settings: Settings) -> None:
        extra: dict[str, Any] = {
            "group.id": settings.group_id,
            "auto.offset.reset": settings.auto_offset_reset,
            # The group's state (readiness) arrives with the statistics, served by poll.
            "statistics.interval.ms": 1000,
            "stats_cb": self._stats,
            "fetch.wait.max.ms": FETCH_MAX_WAIT_MS,
            "fetch.min.bytes": FETCH_MIN_BYTES,
            "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
        }
        if settings.group_protocol == "consumer":
            extra["group.protocol"] = "consumer"  # KIP-848: the broker assigns, incrementally
        else:
            extra["session.timeout.ms"] = settings.session_timeout_ms
            extra["heartbeat.interval.ms"] = settings.session_timeout_ms // 3
            extra["max.poll.interval.ms"] = 60_000
        self._steady = False
        self._subscription: tuple[list[str], dict[str, Any]] | None = None
        super().__init__(settings, "consumer", extra)

    def _stats(self, text: str) -> None:
        group = json.loads(text).get("cgrp", {})
        self._steady = group.get("state") == "up" and group.get("join_state") == "steady"

    def subscribe(self, topics: Sequence[str], pattern: str | None, listener: Rebalance) -> None:
        def assigned(consumer: Consumer, partitions: list[_TopicPartition]) -> None:
            listener.assigned([ours(tp) for tp in partitions])

        def revoked(consumer: Consumer, partitions: list[_TopicPartition]) -> None:
            listener.revoked([ours(tp) for tp in partitions])

        def lost(consumer: Consumer, partitions: list[_TopicPartition]) -> None:
            listener.lost([ours(tp) for tp in partitions])

        # librdkafka reads a subscription that starts with ^ as a regular expression.
        names = [f"^{pattern}"] if pattern else list(topics)
        self._subscription = (names, {"on_assign": assigned, "on_revoke": revoked, "on_lost": lost})
        self._consumer.subscribe(names, on_assign=assigned, on_revoke=revoked, on_lost=lost)

    def pause(self, partitions: Collection[Partition]) -> None:
        self._consumer.pause([theirs(p) for p in partitions])

    def resume(self, partitions: Collection[Partition]) -> None:
        self._consumer.resume([theirs(p) for p in partitions])

    def assignment(self) -> frozenset[Partition]:
        return frozenset(ours(tp) for tp in self._consumer.assignment())

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        marks = [theirs(p, o) for p, o in offsets.items()]
        call(lambda: self._consumer.commit(offsets=marks, asynchronous=False), "commit")

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def in_group(self) -> bool:
        return self._steady

    def rejoin(self) -> bool:
        """A member that owns nothing leaves and joins again as a new member, which makes the
        leader assign again (a follower's plain re-join gets the current assignment back).
        librdkafka has no call to ask for a rebalance, and an unsubscribe with partitions owned
        would revoke them outside the batch's order: such a member is left to the watchdog."""
        if self._subscription is None or self._consumer.assignment():
            return False
        names, callbacks = self._subscription
        call(self._consumer.unsubscribe, "unsubscribe")
        call(lambda: self._consumer.subscribe(names, **callbacks), "subscribe")
        self._steady = False
        return True


class _Sent:
    """Filled by the delivery callback, which runs inside the producer's poll or flush."""

    def __init__(self, errors: Errors) -> None:
        self._offset: int | None = None
        self._error: KafkaError | None = None
        self._errors = errors

    def delivered(self, error: KafkaError | None, message: Message) -> None:
        self._error = error
        self._offset = None if error is not None else message.offset()

    def offset(self, timeout_s: float) -> int:
        if self._error is not None:
            raise client_error(self._errors.resolve(self._error), "send")
        if self._offset is None:
            raise ClientError(Failure.TRANSIENT, "send: not acknowledged (flush first)")
        return self._offset


class Producer:
    """Idempotent, acks=all; transactional when given an id (initialised here, which fences and
    aborts whatever a predecessor with the same id left open)."""

    def __init__(self, settings: Settings, transactional_id: str | None = None) -> None:
        self._errors = Errors()
        options = {
            **client_options(settings, self._errors, "producer"),
            "enable.idempotence": True,
            "acks": "all",
            # Keys to partitions as the Java client and kafka-python map them (murmur2), not
            # librdkafka's CRC32 default: a patient's results, their forget command and an
            # upstream keyed producer must all reach the same partition (and its state).
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "message.max.bytes": settings.producer_max_request_bytes,
        }
        if transactional_id is not None:
            options["transactional.id"] = transactional_id
            options["transaction.timeout.ms"] = settings.transaction_timeout_ms
        self._producer = call(lambda: _Producer(options), "connect")
        self._sent: list[_Sent] = []
        check_reachable(self._producer, self._errors, settings, "connect")
        if transactional_id is not None:
            self._bounded(self._producer.init_transactions, "init transactions")

    def _do(self, action: Callable[[], T], doing: str) -> T:
        try:
            return action()
        except KafkaException as err:
            if err.args[0].code() == KafkaError._FATAL:
                self._producer.poll(0)  # serves the error callback, which heard which error
            raise client_error(self._errors.resolve(err.args[0]), doing) from err

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
        sent = _Sent(self._errors)
        extra: dict[str, Any] = {}
        if partition is not None:
            extra["partition"] = partition
        if timestamp_ms is not None:
            extra["timestamp"] = timestamp_ms

        def produce() -> None:
            self._producer.produce(
                topic, value=value, key=key, headers=list(headers), on_delivery=sent.delivered, **extra
            )

        try:
            self._do(produce, "send")
        except BufferError:
            self._producer.poll(1.0)  # the local queue is full: let deliveries drain, once
            self._do(produce, "send")
        self._sent.append(sent)
        return sent

    def flush(self, timeout_s: float) -> None:
        if self._producer.flush(timeout_s) > 0:
            raise ClientError(Failure.TRANSIENT, f"flush: records unacknowledged after {timeout_s:.0f} s")
        sent, self._sent = self._sent, []
        for one in sent:
            one.offset(0)  # raises the first failed send

    def close(self, timeout_s: float) -> None:
        try:
            self._producer.flush(timeout_s)
        except KafkaException as err:  # a fenced or failed producer: nothing left to deliver
            LOG.info("producer closed after a failure: %s", err.args[0].name())

    # -- transactions (with a transactional id) ----------------------------------------------

    def begin(self) -> None:
        self._sent = []
        self._do(self._producer.begin_transaction, "begin")

    def send_offsets(self, offsets: Mapping[Partition, int], group_metadata: object) -> None:
        marks = [theirs(p, o) for p, o in offsets.items()]
        self._bounded(
            lambda timeout: self._producer.send_offsets_to_transaction(marks, group_metadata, timeout),
            "send offsets",
        )

    def commit(self) -> None:
        self._bounded(self._producer.commit_transaction, "commit")

    def abort(self) -> None:
        self._sent = []
        self._bounded(self._producer.abort_transaction, "abort")

    def _bounded(self, transaction_call: Callable[[float], object], doing: str) -> None:
        """A transaction call given CALL_TIMEOUT_S, and watched for keeping it (`deadlines.py`)."""
        with DEADLINES.bounded(doing, CALL_TIMEOUT_S):
            self._do(lambda: transaction_call(CALL_TIMEOUT_S), doing)


class ConfluentClient:
    name = "confluent-kafka"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def group_consumer(self) -> GroupConsumer:
        return GroupConsumer(self._settings)

    def reader(self, purpose: str) -> _Reader:
        # librdkafka wants a group id even to read assigned partitions. The service's own one
        # needs no further ACL; a reader never subscribes or commits, so it never joins.
        return _Reader(self._settings, purpose, {"group.id": self._settings.group_id})

    def producer(self) -> Producer:
        return Producer(self._settings)

    def transactional_producer(self, transactional_id: str) -> Producer:
        return Producer(self._settings, transactional_id)

    def admin(self) -> Admin:
        return Admin(self._settings)
