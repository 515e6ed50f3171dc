"""The seam on kafka-python 3 (the default client).

kafka-python 3.0.12 behaviours the code works around, each seen on a real broker (most are
reproduced in docs/benchmarks.md or a test). Elsewhere the code refers to them by number
("kafka-python K1") instead of retelling them:

- K1 Refused TxnOffsetCommit offsets (a re-join's UnknownMemberId) are kept past the abort and
  committed with the next transaction: the delivery replaces its producer after every abort.
- K2 A partition a rebalance gives back to the same member keeps its position and fetch
  buffers: an aborted batch is rewound to its first offsets (`loop/batch.py`).
- K3 A join can hang for good (an empty first assignment, a re-join after a commit), and the
  fetcher can wedge or spin after rebalances: the watchdog (`health.py`) ends the process for
  the orchestrator to restart; a partition left unfetched is re-sought first (`loop/lag.py`).
- K4 A zero-timeout poll can spin in its coordinator lookup after a rebalance: the loop never
  polls with 0 (`loop/pacing.py`).
- K5 What a rebalance callback raises is swallowed: a fatal error there is kept and raised
  after the poll (`loop/rebalance.py`).
- K6 Rebalance callbacks run inside poll(), on the loop's thread, and a long one starves the
  group's heartbeats: stores are opened there and restored in the loop (`state/gate.py`).
- K7 TxnOffsetCommit is sent without the fencing the broker applies to librdkafka's: after a
  broker restart a member the group had expelled committed a transaction (alerts published
  twice). `group_metadata` refuses to hand out metadata once the consumer is no stable member
  or its heartbeats go unanswered (`in_group` below).
- K8 It logs its own recovered I/O-thread errors with tracebacks, and reports every failed
  bootstrap as a time-out: the cause of a refused connection is read from its log records
  (`kafka_python_failures.py`).
- K9 A leader that joins before it has a topic's metadata assigns that topic to nobody ("No
  partition metadata for topic") and the group stays stable so: a restarted notifier paged
  nothing (issue 25). Every member checks the group's assignment against the topics and asks
  for a new one (`loop/coverage.py`, `GroupConsumer.rejoin`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TypeVar

import structlog
from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import MemberState, OffsetAndMetadata

from consumer.clients.kafka_python_failures import WATCH, exception_chain
from consumer.clients.seam import (
    FETCH_MAX_WAIT_MS,
    FETCH_MIN_BYTES,
    METADATA_REFRESH_MS,
    ClientError,
    Failure,
    GroupInfo,
    Member,
    Partition,
    Rebalance,
    Record,
    TopicInfo,
    TopicSpec,
)
from consumer.settings import Settings

T = TypeVar("T")

# How long one client waits for a first broker before we log and back off (kafka-python: 30 s).
BOOTSTRAP_TIMEOUT_MS = 5000
# Also the group's rebalance timeout: how long the broker holds a re-join open for members that
# have not re-joined (kafka-python's default, 300 s, is as long as the watchdog's stall timeout).
# The loop polls every 100 ms; a patient-state restore, the longest pause between polls,
# replays ~25,000 patients a second.
MAX_POLL_INTERVAL_MS = 60_000
# kafka-python retries the first AddPartitionsToTxn of a transaction, which the broker refuses
# while the previous one's markers are still being written, after retry_backoff_ms: with
# the default 100 ms every transaction waited ~108 ms; with 10 ms it waits ~15 ms (measured
# in docs/benchmarks.md). Other retries back off as briefly, against a local cluster.
TRANSACTIONAL_RETRY_BACKOFF_MS = 10
# Records per poll for the service's consumer (its loop asks for fewer as a batch fills).
POLL_MAX_RECORDS = 500
MAX_MESSAGE_BYTES = "max.message.bytes"

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
    (kafka_errors.AuthorizationError, Failure.NOT_AUTHORISED_CLUSTER),
    (kafka_errors.SaslAuthenticationFailedError, Failure.AUTHENTICATION),
    (kafka_errors.UnsupportedVersionError, Failure.UNSUPPORTED),
)


def failure_of(err: BaseException) -> Failure:
    return _classified(err)[0]


def _classified(err: BaseException) -> tuple[Failure, BaseException]:
    for cause in exception_chain(err):
        for kind, failure in _BY_CLASS:
            if isinstance(cause, kind):
                return failure, cause
    return Failure.TRANSIENT, err


def _raised(err: BaseException, doing: str) -> ClientError:
    failure, cause = _classified(err)
    name = type(cause).__name__
    return ClientError(failure, f"{doing}: {name}: {str(cause)[:200]}", name=name)


def _call(action: Callable[[], T], doing: str) -> T:
    try:
        return action()
    except kafka_errors.KafkaError as err:
        raise _raised(err, doing) from err


_log = structlog.get_logger("tdm_alerts.kafka")


def _close(action: Callable[[], object], what: str) -> None:
    """Close a client, giving up on what it cannot finish: never raises (seam: close).

    kafka-python's producer close waits for the broker and raises KafkaTimeoutError when it is
    gone (an outage longer than the send timeout ended the service with a traceback, issue 27);
    the client is dropped all the same, and a new one starts clean.
    """
    try:
        action()
    except (kafka_errors.KafkaError, OSError) as err:
        _log.warning("client closed without finishing", client=what, error=type(err).__name__)


def _connect(make: Callable[[], T]) -> T:
    """Create a client. kafka-python reports every failed bootstrap as a time-out; the cause, if
    the cluster refused us, is in its own log records (WATCH)."""
    WATCH.take()  # forget what an earlier client's attempts left behind
    try:
        return make()
    except (kafka_errors.KafkaTimeoutError, kafka_errors.KafkaConnectionError) as err:
        cause, connections = WATCH.take()
        if cause is None:
            raise ClientError(
                Failure.TRANSIENT, f"connect: {type(err).__name__}", name=type(err).__name__
            ) from err
        raise ClientError(
            cause, f"connect: {cause.value}", name=type(err).__name__, connections=connections
        ) from err
    except kafka_errors.KafkaError as err:
        raise _raised(err, "connect") from err


def _ours(tp: TopicPartition) -> Partition:
    return Partition(tp.topic, tp.partition)


def _theirs(partition: Partition) -> TopicPartition:
    return TopicPartition(partition.topic, partition.partition)


def _record(record: ConsumerRecord) -> Record:
    return Record(  # by position, in field order: one is built per consumed message
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        tuple(record.headers or ()),
        record.timestamp if record.timestamp is not None and record.timestamp > 0 else None,
    )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """kafka-python swallows what a callback raises: the listener keeps its own fatal errors."""

    def __init__(self, listener: Rebalance) -> None:
        self._listener = listener

    def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self._listener.assigned([_ours(tp) for tp in assigned])

    def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        self._listener.revoked([_ours(tp) for tp in revoked])

    def on_partitions_lost(self, lost: Collection[TopicPartition]) -> None:
        self._listener.lost([_ours(tp) for tp in lost])


class _Reader:
    """A KafkaConsumer seen through the seam; the group consumer adds membership to it."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer

    def assign(self, partitions: Collection[Partition]) -> None:
        self._consumer.assign([_theirs(p) for p in partitions])

    def seek(self, partition: Partition, offset: int) -> None:
        self._consumer.seek(_theirs(partition), offset)

    def seek_to_beginning(self, partition: Partition) -> None:
        self._consumer.seek_to_beginning(_theirs(partition))

    def poll(self, timeout_ms: int, max_records: int) -> Mapping[Partition, Sequence[Record]]:
        polled = _call(lambda: self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records), "poll")
        return {_ours(tp): [_record(r) for r in records] for tp, records in polled.items()}

    def position(self, partition: Partition) -> int:
        return int(_call(lambda: self._consumer.position(_theirs(partition)), "position"))

    def end_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int]:
        # The consumer is read_committed, so ListOffsets answers with the last stable offsets.
        ends = _call(lambda: self._consumer.end_offsets([_theirs(p) for p in partitions]), "end offsets")
        return {_ours(tp): int(end) for tp, end in ends.items()}

    def partitions_for(self, topic: str) -> list[int] | None:
        found = _call(lambda: self._consumer.partitions_for_topic(topic), "describe topic")
        return sorted(found) if found else None

    def beginning_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int]:
        starts = _call(
            lambda: self._consumer.beginning_offsets([_theirs(p) for p in partitions]), "beginning offsets"
        )
        return {_ours(tp): int(start) for tp, start in starts.items()}

    def offsets_for_time(self, partitions: Collection[Partition], ms: int) -> Mapping[Partition, int | None]:
        found = _call(
            lambda: self._consumer.offsets_for_times({_theirs(p): ms for p in partitions}), "offsets for time"
        )
        return {_ours(tp): None if at is None else int(at.offset) for tp, at in found.items()}

    def close(self) -> None:
        _close(lambda: self._consumer.close(autocommit=False), "consumer")


class GroupConsumer(_Reader):
    def __init__(self, consumer: KafkaConsumer) -> None:
        super().__init__(consumer)
        self._subscription: tuple[Sequence[str], str | None, Rebalance] | None = None

    def subscribe(self, topics: Sequence[str], pattern: str | None, listener: Rebalance) -> None:
        self._subscription = (topics, pattern, listener)
        if pattern:
            self._consumer.subscribe(pattern=pattern, listener=_Listener(listener))
        else:
            self._consumer.subscribe(topics=list(topics), listener=_Listener(listener))

    def pause(self, partitions: Collection[Partition]) -> None:
        self._consumer.pause(*[_theirs(p) for p in partitions])

    def resume(self, partitions: Collection[Partition]) -> None:
        self._consumer.resume(*[_theirs(p) for p in partitions])

    def assignment(self) -> frozenset[Partition]:
        return frozenset(_ours(tp) for tp in self._consumer.assignment())

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        marks = {_theirs(p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
        _call(lambda: self._consumer.commit(offsets=marks), "commit")

    def group_metadata(self) -> object:
        """The member's group metadata for a transaction's offsets; refused once it is no member.

        kafka-python's TxnOffsetCommit was not fenced for a member the group had already
        expelled: after a broker restart an instance committed a batch whose partitions a second
        instance had been given, and both published the same alerts (the crash test, issue 27).
        The batch is aborted and rewound instead, as for any refused commit.
        """
        if not in_group(self._consumer):
            raise ClientError(
                Failure.REBALANCED, "commit: no longer a member of the group", name="NotInGroup"
            )
        return self._consumer.group_metadata()

    def in_group(self) -> bool:
        return in_group(self._consumer)

    def rejoin(self) -> bool:
        """K9. A follower's JoinGroup with unchanged metadata gets the group's current assignment
        back, with no rebalance (seen: the member stayed with nothing). So a member that owns
        nothing leaves and joins again as a new member, which makes the leader assign again; one
        that owns partitions only re-joins (that re-assigns if it leads; otherwise the watchdog
        ends it after Health's bound). kafka-python has no public call for the latter; its
        coordinator is read defensively, as `in_group` does."""
        if self._subscription is None:
            return False
        if not self._consumer.assignment():
            topics, pattern, listener = self._subscription
            self._consumer.unsubscribe()
            self.subscribe(topics, pattern, listener)
            return True
        request = getattr(getattr(self._consumer, "_coordinator", None), "request_rejoin", None)
        if request is None:
            return False
        request()
        return True


class _Sent:
    def __init__(self, future: FutureRecordMetadata) -> None:
        self._future = future

    def offset(self, timeout_s: float) -> int:
        return int(_call(lambda: self._future.get(timeout=timeout_s), "send").offset)


class Producer:
    """Idempotent, acks=all; transactional when given an id (initialised here, which fences and
    aborts whatever a predecessor with the same id left open)."""

    def __init__(self, settings: Settings, transactional_id: str | None = None) -> None:
        self._producer: KafkaProducer = _connect(
            lambda: new_producer(settings, transactional_id=transactional_id)
        )
        if transactional_id is not None:
            try:
                _call(self._producer.init_transactions, "init transactions")
            except ClientError:
                _close(lambda: self._producer.close(timeout=5), "producer")
                raise
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
        future = _call(
            lambda: self._producer.send(
                topic,
                key=key,
                value=value,
                headers=list(headers),
                partition=partition,
                timestamp_ms=timestamp_ms,
            ),
            "send",
        )
        sent = _Sent(future)
        self._sent.append(sent)
        return sent

    def flush(self, timeout_s: float) -> None:
        _call(lambda: self._producer.flush(timeout=timeout_s), "flush")
        sent, self._sent = self._sent, []
        for one in sent:
            one.offset(timeout_s)  # raises the first failed send

    def close(self, timeout_s: float) -> None:
        _close(lambda: self._producer.close(timeout=timeout_s), "producer")

    # -- transactions (with a transactional id) ----------------------------------------------

    def begin(self) -> None:
        self._sent = []
        _call(self._producer.begin_transaction, "begin")

    def send_offsets(self, offsets: Mapping[Partition, int], group_metadata: object) -> None:
        marks = {_theirs(p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
        _call(lambda: self._producer.send_offsets_to_transaction(marks, group_metadata), "send offsets")

    def commit(self) -> None:
        _call(self._producer.commit_transaction, "commit")

    def abort(self) -> None:
        self._sent = []
        _call(self._producer.abort_transaction, "abort")


class Admin:
    def __init__(self, admin: KafkaAdminClient) -> None:
        self._admin = admin

    def describe_topics(self, topics: Collection[str]) -> Mapping[str, TopicInfo]:
        described = _call(lambda: self._admin.describe_topics(list(topics)), "describe topics")
        found = {d["name"]: d for d in described}
        info: dict[str, TopicInfo] = {}
        for topic in topics:
            d = found.get(topic, {"error_code": kafka_errors.UnknownTopicOrPartitionError.errno})
            if code := d["error_code"]:
                error = kafka_errors.for_code(code)
                failure = (
                    Failure.MISSING_TOPIC
                    if error is kafka_errors.UnknownTopicOrPartitionError
                    else failure_of(error())
                )
                info[topic] = TopicInfo(0, failure, error.__name__)
            else:
                operations = d.get("authorized_operations")
                info[topic] = TopicInfo(
                    len(d["partitions"]), operations=None if operations is None else frozenset(operations)
                )
        return info

    def create_topics(self, specs: Collection[TopicSpec]) -> None:
        topics = [NewTopic(t.name, t.partitions, -1, topic_configs=dict(t.config)) for t in specs]
        try:
            _call(lambda: self._admin.create_topics(topics), "create topics")
        except ClientError as err:
            if err.name != "TopicAlreadyExistsError":  # another instance won the race
                raise

    def max_message_bytes(self, topic: str) -> int | None:
        wanted = ConfigResource(ConfigResourceType.TOPIC, topic, {MAX_MESSAGE_BYTES: None})
        try:
            found = _call(
                lambda: self._admin.describe_configs([wanted], config_filter="all"), "describe configs"
            )
        except ClientError as err:
            if not err.failure.fatal:
                raise
            return None  # not authorised to describe it: the caller assumes Kafka's default
        value = found.get("topic", {}).get(topic, {}).get(MAX_MESSAGE_BYTES, {}).get("value")
        return int(value) if value else None

    def describe_group(self, group_id: str) -> GroupInfo:
        described = _call(lambda: self._admin.describe_groups([group_id]), "describe group")[group_id]
        if error := described.get("error"):
            # kafka-python hands the error back as text ("[Error 69] GroupIdNotFoundError: ...").
            if "GroupIdNotFoundError" in error:  # Kafka 4 says so of a group never used
                return GroupInfo("Dead", ())
            if "GroupAuthorizationFailedError" in error:
                denied = "GroupAuthorizationFailed"
                raise ClientError(Failure.NOT_AUTHORISED_GROUP, "describe group", name=denied)
            raise ClientError(Failure.TRANSIENT, f"describe group: {error}", name="DescribeGroups")
        members = []
        for m in described.get("members", []):
            assignment = m.get("member_assignment")
            topics = assignment.get("assigned_partitions", []) if isinstance(assignment, dict) else []
            members.append(
                Member(
                    member_id=str(m.get("member_id", "?")),
                    host=str(m.get("client_host", "?")).lstrip("/"),
                    partitions=tuple(
                        sorted(Partition(t["topic"], p) for t in topics for p in t.get("partitions", []))
                    ),
                )
            )
        return GroupInfo(str(described.get("group_state") or "unknown"), tuple(members))

    def group_offsets(self, group_id: str) -> Mapping[Partition, int]:
        offsets = _call(lambda: self._admin.list_group_offsets(group_id), "group offsets").get(group_id, {})
        return {_ours(tp): int(o.offset) for tp, o in offsets.items() if o.offset >= 0}

    def close(self) -> None:
        _close(self._admin.close, "admin")


class KafkaPythonClient:
    name = "kafka-python"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def group_consumer(self) -> GroupConsumer:
        return GroupConsumer(_connect(lambda: new_consumer(self._settings)))

    def reader(self, purpose: str) -> _Reader:
        s = self._settings
        return _Reader(
            _connect(
                lambda: KafkaConsumer(
                    bootstrap_servers=s.bootstrap_servers,
                    bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
                    client_id=f"{s.client_id}-{purpose}",
                    group_id=None,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    isolation_level="read_committed",
                    **s.kafka_security(),
                )
            )
        )

    def producer(self) -> Producer:
        return Producer(self._settings)

    def transactional_producer(self, transactional_id: str) -> Producer:
        return Producer(self._settings, transactional_id)

    def admin(self) -> Admin:
        return Admin(_connect(lambda: new_admin(self._settings)))


def new_consumer(settings: Settings) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        group_id=settings.group_id,
        client_id=f"{settings.client_id}-consumer",
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        isolation_level="read_committed",
        max_poll_records=POLL_MAX_RECORDS,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        fetch_min_bytes=FETCH_MIN_BYTES,
        metadata_max_age_ms=METADATA_REFRESH_MS,
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.session_timeout_ms // 3,
        **settings.kafka_security(),
    )


HEARTBEATS_MISSED = 2.5


def in_group(consumer: KafkaConsumer) -> bool:
    """A stable member of its group with a known coordinator (an idle member with no partitions is).

    Safe from another thread: it reads the membership snapshot and the coordinator id, with no
    I/O. The coordinator id is kafka-python's own attribute, read defensively: without it, the
    membership state alone decides.
    """
    if consumer.group_metadata().state != MemberState.STABLE:
        return False
    coordinator = getattr(consumer, "_coordinator", None)
    if getattr(coordinator, "coordinator_id", 0) is None:
        return False
    # A frozen broker keeps its connections open and answers nothing: kafka-python stays
    # "stable" until its requests time out (~30 s). No heartbeat answered for HEARTBEATS_MISSED
    # intervals means the group has most likely lost us already (issue 28: ready for 33 s).
    heartbeat = getattr(coordinator, "heartbeat", None)
    try:
        interval = heartbeat.config["heartbeat_interval_ms"] / 1000  # type: ignore[union-attr]
        heard = max(heartbeat.last_receive, heartbeat.last_reset)  # type: ignore[union-attr]
    except (AttributeError, KeyError, TypeError):
        return True
    return bool(time.monotonic() - heard < HEARTBEATS_MISSED * interval)


def new_producer(settings: Settings, transactional_id: str | None = None) -> KafkaProducer:
    if transactional_id is not None:
        extra: dict[str, object] = {
            "retry_backoff_ms": TRANSACTIONAL_RETRY_BACKOFF_MS,
            "transaction_timeout_ms": settings.transaction_timeout_ms,
        }
    else:
        extra = {}
    return KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        client_id=f"{settings.client_id}-producer",
        acks="all",
        enable_idempotence=True,
        transactional_id=transactional_id,
        linger_ms=5,
        max_request_size=settings.producer_max_request_bytes,
        **settings.kafka_security(),
        **extra,
    )


def new_admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        client_id=settings.client_id,
        **settings.kafka_security(),
    )
