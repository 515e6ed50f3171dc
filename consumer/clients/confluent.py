"""The seam on confluent-kafka (librdkafka): the group consumer and the transactional producer.

Work in progress for issue #15: not yet selected by any setting. Smoke-tested against Kafka
4.1.1 (session 5): 20 records through one exactly-once cycle (consume, send, send_offsets,
commit), offsets committed and all 20 readable read_committed. Still to do: Reader, Producer
(at least once), Admin, `in_group` from the group state, lag against the last stable offset
(check that librdkafka's high watermark is the LSO under read_committed), and the
security-failure mapping checked against the secured broker.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message  # type: ignore[import-untyped]
from confluent_kafka import Producer as _Producer
from confluent_kafka import TopicPartition as _TopicPartition

from consumer.clients.seam import ClientError, Failure, Partition, Rebalance, Record
from consumer.settings import Settings

_BY_CODE: dict[int, Failure] = {
    KafkaError._FENCED: Failure.FENCED,
    KafkaError.PRODUCER_FENCED: Failure.FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH: Failure.FENCED,
    KafkaError.UNKNOWN_MEMBER_ID: Failure.REBALANCED,
    KafkaError.ILLEGAL_GENERATION: Failure.REBALANCED,
    KafkaError.REBALANCE_IN_PROGRESS: Failure.REBALANCED,
    KafkaError.FENCED_MEMBER_EPOCH: Failure.REBALANCED,  # KIP-848
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
    if error.code() == KafkaError._SSL:
        text = error.str().lower()
        if "hostname" in text or "host name" in text:
            return Failure.TLS_HOSTNAME
        if "certificate verify failed" in text:
            return Failure.TLS_TRUST
        return Failure.TLS_CLIENT_CERTIFICATE
    if error.fatal():
        return Failure.UNSUPPORTED  # librdkafka's own fatal errors: nothing a retry fixes
    return Failure.TRANSIENT


def _raised(err: KafkaException, doing: str) -> ClientError:
    error: KafkaError = err.args[0]
    return ClientError(failure_of(error), f"{doing}: {error.name()}")


def _options(settings: Settings) -> dict[str, Any]:
    """librdkafka configuration for the shared settings (bootstrap, identity, TLS/SASL)."""
    options: dict[str, Any] = {
        "bootstrap.servers": ",".join(settings.bootstrap_servers),
        "client.id": settings.client_id,
        "security.protocol": settings.security_protocol,
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
    if "SSL" in settings.security_protocol and not settings.ssl_check_hostname:
        options["ssl.endpoint.identification.algorithm"] = "none"
    return options


def _ours(tp: _TopicPartition) -> Partition:
    return Partition(tp.topic, tp.partition)


def _theirs(partition: Partition, offset: int | None = None) -> _TopicPartition:
    return (
        _TopicPartition(partition.topic, partition.partition)
        if offset is None
        else _TopicPartition(partition.topic, partition.partition, offset)
    )


def _record(message: Message) -> Record:
    kind, stamp = message.timestamp()
    return Record(
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        key=message.key(),
        value=message.value(),
        headers=tuple(message.headers() or ()),
        timestamp_ms=stamp if kind != 0 else None,  # 0: TIMESTAMP_NOT_AVAILABLE
    )


class GroupConsumer:
    """read_committed, no auto-commit; callbacks run inside poll, on the polling thread."""

    def __init__(self, settings: Settings, *, kip848: bool = False) -> None:
        options = {
            **_options(settings),
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": settings.auto_offset_reset,
            "isolation.level": "read_committed",
        }
        if kip848:
            options["group.protocol"] = "consumer"  # Kafka 4: the broker assigns; no stop-the-world
        else:
            options["session.timeout.ms"] = settings.session_timeout_ms
        self._consumer = Consumer(options)
        self._member = threading.Event()

    def subscribe(self, topics: Sequence[str], pattern: str | None, listener: Rebalance) -> None:
        def assigned(_: Consumer, partitions: list[_TopicPartition]) -> None:
            self._member.set()
            listener.assigned([_ours(tp) for tp in partitions])

        def revoked(_: Consumer, partitions: list[_TopicPartition]) -> None:
            listener.revoked([_ours(tp) for tp in partitions])

        def lost(_: Consumer, partitions: list[_TopicPartition]) -> None:
            self._member.clear()
            listener.lost([_ours(tp) for tp in partitions])

        # librdkafka reads a subscription that starts with ^ as a regular expression.
        names = [f"^{pattern}"] if pattern else list(topics)
        self._consumer.subscribe(names, on_assign=assigned, on_revoke=revoked, on_lost=lost)

    def poll(self, timeout_ms: int, max_records: int) -> Mapping[Partition, Sequence[Record]]:
        try:
            messages = self._consumer.consume(num_messages=max_records, timeout=timeout_ms / 1000)
        except KafkaException as err:
            raise _raised(err, "poll") from err
        polled: dict[Partition, list[Record]] = {}
        for message in messages:
            if (error := message.error()) is not None:
                raise ClientError(failure_of(error), f"poll: {error.name()}")
            polled.setdefault(Partition(message.topic(), message.partition()), []).append(_record(message))
        return polled

    def assign(self, partitions: Collection[Partition]) -> None:
        self._consumer.assign([_theirs(p) for p in partitions])

    def seek(self, partition: Partition, offset: int) -> None:
        self._consumer.seek(_theirs(partition, offset))

    def pause(self, partitions: Collection[Partition]) -> None:
        self._consumer.pause([_theirs(p) for p in partitions])

    def resume(self, partitions: Collection[Partition]) -> None:
        self._consumer.resume([_theirs(p) for p in partitions])

    def position(self, partition: Partition) -> int:
        [found] = self._consumer.position([_theirs(partition)])
        return int(found.offset)

    def assignment(self) -> frozenset[Partition]:
        return frozenset(_ours(tp) for tp in self._consumer.assignment())

    def end_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int]:
        try:
            return {
                p: self._consumer.get_watermark_offsets(_theirs(p), timeout=5.0, cached=False)[1]
                for p in partitions
            }
        except KafkaException as err:
            raise _raised(err, "end offsets") from err

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        try:
            self._consumer.commit(offsets=[_theirs(p, o) for p, o in offsets.items()], asynchronous=False)
        except KafkaException as err:
            raise _raised(err, "commit") from err

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def in_group(self) -> bool:
        return self._member.is_set()

    def close(self) -> None:
        self._consumer.close()


class _Sent:
    """Filled by the delivery callback, which runs inside the producer's poll or flush."""

    def __init__(self) -> None:
        self._offset: int | None = None
        self._error: KafkaError | None = None

    def delivered(self, error: KafkaError | None, message: Message) -> None:
        self._error = error
        self._offset = None if error is not None else message.offset()

    def offset(self, timeout_s: float) -> int:
        if self._error is not None:
            raise ClientError(failure_of(self._error), f"send: {self._error.name()}")
        if self._offset is None:
            raise ClientError(Failure.TRANSIENT, "send: not acknowledged (flush first)")
        return self._offset


class TransactionalProducer:
    def __init__(self, settings: Settings, transactional_id: str, timeout_s: float = 30.0) -> None:
        self._producer = _Producer(
            {
                **_options(settings),
                "transactional.id": transactional_id,
                "transaction.timeout.ms": settings.transaction_timeout_ms,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.max.bytes": max(settings.max_message_bytes + 65_536, 1_048_576),
            }
        )
        self._timeout_s = timeout_s
        self._sent: list[_Sent] = []
        self._call(lambda: self._producer.init_transactions(timeout_s), "init transactions")

    def _call(self, action: Any, doing: str) -> None:
        try:
            action()
        except KafkaException as err:
            raise _raised(err, doing) from err

    def begin(self) -> None:
        self._sent = []
        self._call(self._producer.begin_transaction, "begin")

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
        sent = _Sent()
        extra: dict[str, Any] = {}
        if partition is not None:
            extra["partition"] = partition
        if timestamp_ms is not None:
            extra["timestamp"] = timestamp_ms
        try:
            self._producer.produce(
                topic, value=value, key=key, headers=list(headers), on_delivery=sent.delivered, **extra
            )
        except BufferError:
            self._producer.poll(0.1)  # the local queue is full: let deliveries drain, once
            self._producer.produce(
                topic, value=value, key=key, headers=list(headers), on_delivery=sent.delivered, **extra
            )
        except KafkaException as err:
            raise _raised(err, "send") from err
        self._sent.append(sent)
        return sent

    def flush(self, timeout_s: float) -> None:
        if self._producer.flush(timeout_s) > 0:
            raise ClientError(Failure.TRANSIENT, f"flush: records unacknowledged after {timeout_s:.0f} s")
        for sent in self._sent:
            sent.offset(0)  # raises the first failed send

    def send_offsets(self, offsets: Mapping[Partition, int], group_metadata: object) -> None:
        self._call(
            lambda: self._producer.send_offsets_to_transaction(
                [_theirs(p, o) for p, o in offsets.items()], group_metadata, self._timeout_s
            ),
            "send offsets",
        )

    def commit(self) -> None:
        self._call(lambda: self._producer.commit_transaction(self._timeout_s), "commit")

    def abort(self) -> None:
        self._sent = []
        self._call(lambda: self._producer.abort_transaction(self._timeout_s), "abort")

    def close(self, timeout_s: float) -> None:
        self._producer.flush(timeout_s)
