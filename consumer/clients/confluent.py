"""The seam on confluent-kafka (librdkafka): several times faster per record than kafka-python,
and it speaks Kafka 4's consumer group protocol (KIP-848, TDM_GROUP_PROTOCOL=consumer).

librdkafka connects in the background and reports trouble through a callback, not by raising:
each client here checks at creation that the cluster answers (a metadata request) and turns
the errors the callback saw meanwhile into the same failures kafka-python's adapter raises, so
start-up retries an unreachable cluster and stops on refused credentials or certificates.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_STORED,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    TopicCollection,
)
from confluent_kafka import Producer as _Producer
from confluent_kafka import TopicPartition as _TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from consumer.clients.deadlines import DEADLINES
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
CONNECT_TIMEOUT_S = 5.0  # as kafka-python's bootstrap time-out (kafka_python.BOOTSTRAP_TIMEOUT_MS)
CALL_TIMEOUT_S = 30.0
# librdkafka's own log lines, through the standard logging the service renders as JSON.
_LOG = logging.getLogger("tdm_alerts.librdkafka")

_BY_CODE: dict[int, Failure] = {
    KafkaError._FENCED: Failure.FENCED,
    KafkaError.PRODUCER_FENCED: Failure.FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH: Failure.FENCED,
    KafkaError.UNKNOWN_MEMBER_ID: Failure.REBALANCED,
    KafkaError.ILLEGAL_GENERATION: Failure.REBALANCED,
    KafkaError.REBALANCE_IN_PROGRESS: Failure.REBALANCED,
    KafkaError.FENCED_MEMBER_EPOCH: Failure.REBALANCED,  # KIP-848
    KafkaError.STALE_MEMBER_EPOCH: Failure.REBALANCED,  # KIP-848
    KafkaError.TOPIC_AUTHORIZATION_FAILED: Failure.NOT_AUTHORISED_TOPIC,
    KafkaError.GROUP_AUTHORIZATION_FAILED: Failure.NOT_AUTHORISED_GROUP,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: Failure.NOT_AUTHORISED_TRANSACTIONAL_ID,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: Failure.NOT_AUTHORISED_CLUSTER,
    KafkaError.UNKNOWN_TOPIC_OR_PART: Failure.MISSING_TOPIC,
    KafkaError._UNKNOWN_TOPIC: Failure.MISSING_TOPIC,
    KafkaError._AUTHENTICATION: Failure.AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED: Failure.AUTHENTICATION,
    KafkaError.UNSUPPORTED_VERSION: Failure.UNSUPPORTED,
    KafkaError._UNSUPPORTED_FEATURE: Failure.UNSUPPORTED,
}


def failure_of(error: KafkaError) -> Failure:
    """Our reading of a librdkafka error. TLS problems arrive as _SSL with OpenSSL's words."""
    if (known := _BY_CODE.get(error.code())) is not None:
        return known
    text = error.str().lower()
    if "certificate verify failed" in text:
        # librdkafka words a host-name mismatch the same way: _check_reachable tells them apart.
        return Failure.TLS_HOSTNAME if "hostname" in text or "host name" in text else Failure.TLS_TRUST
    if (
        error.code() == KafkaError._SSL
        or "ssl handshake failed" in text
        or ("alert" in text and "certificate" in text)
    ):
        # The broker's TLS alert: it does not accept our certificate (missing, rogue, expired).
        return Failure.TLS_CLIENT_CERTIFICATE
    if error.code() == KafkaError._TRANSPORT and "sasl" in text and "authentication" in text:
        return Failure.AUTHENTICATION
    if error.code() == KafkaError._FATAL and "fenced" in text:
        return Failure.FENCED
    # Any other error librdkafka calls fatal (INVALID_TXN_STATE after a broker restart, say)
    # makes this producer unusable, not the service: the delivery replaces a producer whose
    # abort fails, and the new one fences the old epoch. Fences and refusals are mapped above.
    return Failure.TRANSIENT


def _error(error: KafkaError, doing: str) -> ClientError:
    # librdkafka's error texts name brokers, topics and ids, never record contents.
    return ClientError(failure_of(error), f"{doing}: {error.name()}: {error.str()[:200]}", name=error.name())


def _call(action: Callable[[], T], doing: str) -> T:
    try:
        return action()
    except KafkaException as err:
        raise _error(err.args[0], doing) from err


class _Errors:
    """What librdkafka reported through error_cb that a call's own error does not say."""

    def __init__(self) -> None:
        self.refused: KafkaError | None = None  # the last refusal: credentials, certificates, ACLs
        self.fatal: KafkaError | None = None  # a fatal error's own code (a call reports only _FATAL)

    def __call__(self, error: KafkaError) -> None:
        # "All brokers are down" follows every refused connection: it must not hide the refusal.
        if failure_of(error).fatal:
            self.refused = error
            _LOG.warning("client error: %s", error.name())
        if error.fatal():
            self.fatal = error

    def resolve(self, error: KafkaError) -> KafkaError:
        """A call or delivery report says only _FATAL; the callback heard which error it was."""
        return (self.fatal or error) if error.code() == KafkaError._FATAL else error


def _options(settings: Settings, errors: _Errors, purpose: str) -> dict[str, Any]:
    """librdkafka configuration for the shared settings (bootstrap, identity, TLS/SASL)."""
    options: dict[str, Any] = {
        "bootstrap.servers": ",".join(settings.bootstrap_servers),
        "client.id": f"{settings.client_id}-{purpose}",
        "security.protocol": settings.security_protocol,
        "error_cb": errors,
        "logger": _LOG,
    }
    if settings.sasl_mechanism:
        options["sasl.mechanism"] = settings.sasl_mechanism
        options["sasl.username"] = settings.sasl_username
        if settings.sasl_password is not None:
            options["sasl.password"] = settings.sasl_password.get_secret_value()
    for ours, theirs in (
        ("ssl_cafile", "ssl.ca.location"),
        ("ssl_certfile", "ssl.certificate.location"),
        ("ssl_keyfile", "ssl.key.location"),
    ):
        if (path := getattr(settings, ours)) is not None:
            options[theirs] = str(path)
    if settings.ssl_password is not None:
        options["ssl.key.password"] = settings.ssl_password.get_secret_value()
    if "SSL" in settings.security_protocol:
        options["ssl.endpoint.identification.algorithm"] = "https" if settings.ssl_check_hostname else "none"
    return options


def _check_reachable(client: Any, errors: _Errors, settings: Settings, doing: str) -> None:
    """A metadata request: the cluster answers, or the reason it did not becomes a ClientError."""
    try:
        client.list_topics(timeout=CONNECT_TIMEOUT_S)
    except KafkaException as err:
        client.poll(0)  # serves the error callback, which heard why the connections failed
        refused = errors.refused
        failure = _error(refused if refused is not None else err.args[0], doing)
        if failure.failure is Failure.TLS_TRUST and _names_another_host(settings):
            failure = ClientError(Failure.TLS_HOSTNAME, failure.detail, name=failure.name)
        raise failure from err


def _names_another_host(settings: Settings) -> bool:
    """Whether the broker's certificate verifies against our CA but names another host.

    librdkafka reports both as "certificate verify failed"; Python's TLS handshake with the same
    CA says which (OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH, 62, or _IP_ADDRESS_MISMATCH, 64, for a
    broker named by address). No Kafka bytes are sent.
    """
    host, _, port = settings.bootstrap_servers[0].rpartition(":")
    context = ssl.create_default_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    try:
        with (
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return False
    except ssl.SSLCertVerificationError as err:
        return err.verify_code in (62, 64)
    except (OSError, ValueError):
        return False


def _ours(tp: _TopicPartition) -> Partition:
    return Partition(tp.topic, tp.partition)


def _theirs(partition: Partition, offset: int | None = None) -> _TopicPartition:
    if offset is None:
        return _TopicPartition(partition.topic, partition.partition)
    return _TopicPartition(partition.topic, partition.partition, offset)


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
        self._errors = _Errors()
        options = {
            **_options(settings, self._errors, purpose),
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
        self._consumer = _call(lambda: Consumer(options), "connect")
        try:
            _check_reachable(self._consumer, self._errors, settings, "connect")
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
            _call(lambda: self._consumer.seek(_theirs(partition, offset)), "seek")

    def seek_to_beginning(self, partition: Partition) -> None:
        self.seek(partition, OFFSET_BEGINNING)

    def poll(self, timeout_ms: int, max_records: int) -> Mapping[Partition, Sequence[Record]]:
        if self._starting is not None:
            starts, self._starting = self._starting, None
            _call(lambda: self._consumer.assign([_theirs(p, o) for p, o in starts.items()]), "assign")
        consume = self._consumer.consume
        # librdkafka's consume waits until it has `num_messages` or the time-out; kafka-python's
        # poll returns what is there. Take what is queued; only if nothing is, wait for a first
        # record, then take what came with it. (A full wait held every alert ~100 ms.)
        messages = _call(lambda: consume(num_messages=max_records, timeout=0), "poll")
        if not messages and timeout_ms > 0:
            messages = _call(lambda: consume(num_messages=1, timeout=timeout_ms / 1000), "poll")
            if messages and max_records > 1:
                messages += _call(lambda: consume(num_messages=max_records - 1, timeout=0), "poll")
        polled: dict[Partition, list[Record]] = {}
        for message in messages:
            if (error := message.error()) is not None:
                if failure_of(error).fatal:
                    raise _error(error, "poll")
                continue  # e.g. a subscribed topic not created yet: librdkafka retries it
            polled.setdefault(Partition(message.topic(), message.partition()), []).append(_record(message))
        return polled

    def position(self, partition: Partition) -> int:
        if self._starting is not None and partition in self._starting and self._starting[partition] >= 0:
            return self._starting[partition]
        [found] = _call(lambda: self._consumer.position([_theirs(partition)]), "position")
        if found.offset >= 0:
            return int(found.offset)
        # Nothing fetched yet since the assignment: where fetching will start.
        [committed] = _call(
            lambda: self._consumer.committed([_theirs(partition)], CALL_TIMEOUT_S), "position"
        )
        if committed.offset >= 0:
            return int(committed.offset)
        return self._watermarks(partition, "position")[0]

    def _watermarks(self, partition: Partition, doing: str) -> tuple[int, int]:
        """The log start and end, queried (not cached); the end is the last stable offset for
        a read_committed consumer."""
        low, high = _call(
            lambda: self._consumer.get_watermark_offsets(_theirs(partition), CALL_TIMEOUT_S, False), doing
        )
        return int(low), int(high)

    def end_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int]:
        return {p: self._watermarks(p, "end offsets")[1] for p in partitions}

    def partitions_for(self, topic: str) -> list[int] | None:
        metadata = _call(lambda: self._consumer.list_topics(topic, timeout=CALL_TIMEOUT_S), "describe topic")
        found = metadata.topics.get(topic)
        return (
            None
            if found is None or found.error is not None or not found.partitions
            else sorted(found.partitions)
        )

    def beginning_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int]:
        return {p: self._watermarks(p, "beginning offsets")[0] for p in partitions}

    def offsets_for_time(self, partitions: Collection[Partition], ms: int) -> Mapping[Partition, int | None]:
        found = _call(
            lambda: self._consumer.offsets_for_times([_theirs(p, ms) for p in partitions], CALL_TIMEOUT_S),
            "offsets for time",
        )
        return {_ours(tp): int(tp.offset) if tp.offset >= 0 else None for tp in found}

    def close(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as err:  # seam: close never raises
            _LOG.info("consumer closed after a failure: %s", err)


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
            listener.assigned([_ours(tp) for tp in partitions])

        def revoked(consumer: Consumer, partitions: list[_TopicPartition]) -> None:
            listener.revoked([_ours(tp) for tp in partitions])

        def lost(consumer: Consumer, partitions: list[_TopicPartition]) -> None:
            listener.lost([_ours(tp) for tp in partitions])

        # librdkafka reads a subscription that starts with ^ as a regular expression.
        names = [f"^{pattern}"] if pattern else list(topics)
        self._subscription = (names, {"on_assign": assigned, "on_revoke": revoked, "on_lost": lost})
        self._consumer.subscribe(names, on_assign=assigned, on_revoke=revoked, on_lost=lost)

    def pause(self, partitions: Collection[Partition]) -> None:
        self._consumer.pause([_theirs(p) for p in partitions])

    def resume(self, partitions: Collection[Partition]) -> None:
        self._consumer.resume([_theirs(p) for p in partitions])

    def assignment(self) -> frozenset[Partition]:
        return frozenset(_ours(tp) for tp in self._consumer.assignment())

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        marks = [_theirs(p, o) for p, o in offsets.items()]
        _call(lambda: self._consumer.commit(offsets=marks, asynchronous=False), "commit")

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
        _call(self._consumer.unsubscribe, "unsubscribe")
        _call(lambda: self._consumer.subscribe(names, **callbacks), "subscribe")
        self._steady = False
        return True


class _Sent:
    """Filled by the delivery callback, which runs inside the producer's poll or flush."""

    def __init__(self, errors: _Errors) -> None:
        self._offset: int | None = None
        self._error: KafkaError | None = None
        self._errors = errors

    def delivered(self, error: KafkaError | None, message: Message) -> None:
        self._error = error
        self._offset = None if error is not None else message.offset()

    def offset(self, timeout_s: float) -> int:
        if self._error is not None:
            raise _error(self._errors.resolve(self._error), "send")
        if self._offset is None:
            raise ClientError(Failure.TRANSIENT, "send: not acknowledged (flush first)")
        return self._offset


class Producer:
    """Idempotent, acks=all; transactional when given an id (initialised here, which fences and
    aborts whatever a predecessor with the same id left open)."""

    def __init__(self, settings: Settings, transactional_id: str | None = None) -> None:
        self._errors = _Errors()
        options = {
            **_options(settings, self._errors, "producer"),
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
        self._producer = _call(lambda: _Producer(options), "connect")
        self._sent: list[_Sent] = []
        _check_reachable(self._producer, self._errors, settings, "connect")
        if transactional_id is not None:
            self._bounded(self._producer.init_transactions, "init transactions")

    def _do(self, action: Callable[[], T], doing: str) -> T:
        try:
            return action()
        except KafkaException as err:
            if err.args[0].code() == KafkaError._FATAL:
                self._producer.poll(0)  # serves the error callback, which heard which error
            raise _error(self._errors.resolve(err.args[0]), doing) from err

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
            _LOG.info("producer closed after a failure: %s", err.args[0].name())

    # -- transactions (with a transactional id) ----------------------------------------------

    def begin(self) -> None:
        self._sent = []
        self._do(self._producer.begin_transaction, "begin")

    def send_offsets(self, offsets: Mapping[Partition, int], group_metadata: object) -> None:
        marks = [_theirs(p, o) for p, o in offsets.items()]
        self._bounded(
            lambda timeout: self._producer.send_offsets_to_transaction(marks, group_metadata, timeout),
            "send offsets",
        )

    def commit(self) -> None:
        self._bounded(self._producer.commit_transaction, "commit")

    def abort(self) -> None:
        self._sent = []
        self._bounded(self._producer.abort_transaction, "abort")

    def _bounded(self, call: Callable[[float], object], doing: str) -> None:
        """A transaction call given CALL_TIMEOUT_S, and watched for keeping it (`deadlines.py`)."""
        with DEADLINES.bounded(doing, CALL_TIMEOUT_S):
            self._do(lambda: call(CALL_TIMEOUT_S), doing)


# librdkafka's group states in the words the Kafka protocol (and kafka-python) use.
_GROUP_STATES = {
    "STABLE": "Stable",
    "PREPARING_REBALANCING": "PreparingRebalance",
    "COMPLETING_REBALANCING": "CompletingRebalance",
    "EMPTY": "Empty",
    "DEAD": "Dead",
}


class Admin:
    def __init__(self, settings: Settings) -> None:
        self._errors = _Errors()
        options = _options(settings, self._errors, "admin")
        self._admin = _call(lambda: AdminClient(options), "connect")
        _check_reachable(self._admin, self._errors, settings, "connect")

    def describe_topics(self, topics: Collection[str]) -> Mapping[str, TopicInfo]:
        futures = _call(
            lambda: self._admin.describe_topics(
                TopicCollection(list(topics)),
                request_timeout=CALL_TIMEOUT_S,
                include_authorized_operations=True,
            ),
            "describe topics",
        )
        info: dict[str, TopicInfo] = {}
        for topic, future in futures.items():
            try:
                described = future.result()
            except KafkaException as err:
                error: KafkaError = err.args[0]
                if not failure_of(error).fatal and failure_of(error) is not Failure.MISSING_TOPIC:
                    raise _error(error, "describe topics") from err
                info[topic] = TopicInfo(0, failure_of(error), error.name())
                continue
            operations = described.authorized_operations
            info[topic] = TopicInfo(
                len(described.partitions),
                operations=None if operations is None else frozenset(op.name for op in operations),
            )
        return info

    def create_topics(self, specs: Collection[TopicSpec]) -> None:
        topics = [NewTopic(t.name, num_partitions=t.partitions, config=dict(t.config)) for t in specs]
        futures = _call(
            lambda: self._admin.create_topics(topics, request_timeout=CALL_TIMEOUT_S), "create topics"
        )
        for future in futures.values():
            try:
                future.result()
            except KafkaException as err:
                if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another instance won the race
                    raise _error(err.args[0], "create topics") from err

    def max_message_bytes(self, topic: str) -> int | None:
        wanted = ConfigResource(ResourceType.TOPIC, topic)
        futures = _call(
            lambda: self._admin.describe_configs([wanted], request_timeout=CALL_TIMEOUT_S), "describe configs"
        )
        try:
            found = next(iter(futures.values())).result()
        except KafkaException as err:
            error: KafkaError = err.args[0]
            if not failure_of(error).fatal and failure_of(error) is not Failure.MISSING_TOPIC:
                raise _error(error, "describe configs") from err
            return None  # not authorised to describe it, or gone: the caller assumes Kafka's default
        entry = found.get("max.message.bytes")
        return int(entry.value) if entry is not None and entry.value else None

    def describe_group(self, group_id: str) -> GroupInfo:
        future = _call(
            lambda: self._admin.describe_consumer_groups([group_id], request_timeout=CALL_TIMEOUT_S)[
                group_id
            ],
            "describe group",
        )
        try:
            described = future.result()
        except KafkaException as err:
            if err.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND:  # Kafka 4, of a group never used
                return GroupInfo("Dead", ())
            raise _error(err.args[0], "describe group") from err
        members = tuple(
            Member(
                member_id=m.member_id,
                host=str(m.host).lstrip("/"),
                partitions=tuple(
                    sorted(_ours(tp) for tp in (m.assignment.topic_partitions if m.assignment else []))
                ),
            )
            for m in described.members
        )
        state = described.state.name
        return GroupInfo(_GROUP_STATES.get(state, state.title()), members)

    def group_offsets(self, group_id: str) -> Mapping[Partition, int]:
        future = _call(
            lambda: self._admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group_id)], request_timeout=CALL_TIMEOUT_S
            )[group_id],
            "group offsets",
        )
        found = _call(future.result, "group offsets")
        return {_ours(tp): int(tp.offset) for tp in found.topic_partitions or [] if tp.offset >= 0}

    def close(self) -> None:
        """Nothing to release: librdkafka's admin client closes when it is collected."""


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
