"""What the service needs from a Kafka client, in its own terms.

Two implementations sit behind it: kafka-python (the default, as the design card names it) and
confluent-kafka (librdkafka), chosen by TDM_KAFKA_CLIENT. The loop, the delivery and the
patient-state store import no client library: records, partitions and failures are ours, so
they are written once and the integration suite runs each client through them.

Who uses what (today's call sites, all in `consumer/`):
- service.py, loop/: GroupConsumer (subscribe with a Rebalance listener, poll, pause/resume/seek,
  position, assignment, group_metadata, in_group); end_offsets.py: a Reader for lag.
- delivery.py: TransactionalProducer (begin, send, flush, send_offsets, commit, abort) or, at
  least once, Producer plus GroupConsumer.commit.
- state/manager.py: an assigned Reader for the changelog restore; Sent.offset() for the
  changelog offset a write landed at. state/gate.py: pause, resume and seek.
- access.py, state/topics.py, group_status.py: Admin.
- dead_letter_reader.py, replay.py, cli.py (forget): Reader and Producer.

kafka-python 3.0.12's flaws are listed, numbered, in its adapter (`kafka_python.py`, K1-K8);
the code that works around one refers to it by number. Some workarounds cannot live in the
adapter (a new producer after every abort, a rewind of an aborted batch, the watchdog).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class Partition(NamedTuple):
    topic: str
    partition: int


class Record(NamedTuple):
    """One consumed record; headers as sent, timestamp in ms since the epoch (None if absent).

    A named tuple, immutable like a frozen dataclass: one is built per consumed message, and a
    frozen dataclass cost 2.9 us to build against 0.8 (a skipped message's work is ~20 us).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int | None


class Failure(enum.Enum):
    """Why a client call failed, as far as the service's decisions go."""

    TRANSIENT = "transient"  # the cluster or a broker is away, a leader moved: retry with back-off
    REBALANCED = "rebalanced"  # the group moved on (UnknownMemberId, IllegalGeneration): retry at once
    FENCED = "fenced"  # our transactional id's epoch was bumped (by the broker or another instance)
    AUTHENTICATION = "authentication"
    SASL_MECHANISM = "sasl_mechanism"  # the broker does not offer TDM_SASL_MECHANISM
    TLS_TRUST = "tls_trust"
    TLS_HOSTNAME = "tls_hostname"
    TLS_CLIENT_CERTIFICATE = "tls_client_certificate"
    NOT_AUTHORISED_TOPIC = "not_authorised_topic"
    NOT_AUTHORISED_GROUP = "not_authorised_group"
    NOT_AUTHORISED_TRANSACTIONAL_ID = "not_authorised_transactional_id"
    NOT_AUTHORISED_CLUSTER = "not_authorised_cluster"
    MISSING_TOPIC = "missing_topic"
    UNSUPPORTED = "unsupported"  # the cluster lacks what the settings ask for (transactions, ...)

    @property
    def retried(self) -> bool:
        """Retried in place; a fence is decided by the delivery (the transaction's age)."""
        return self in (Failure.TRANSIENT, Failure.REBALANCED)

    @property
    def fatal(self) -> bool:
        """No retry fixes it: credentials, certificates, ACLs, another owner of our id."""
        return self not in (Failure.TRANSIENT, Failure.REBALANCED, Failure.MISSING_TOPIC)


# How long the broker may hold a group consumer's fetch for more data, and how much it waits
# for. With its defaults (answer at the first byte, else wait 500 ms) a consumer of a steady feed
# asks again for every record or two: at 2,000 msgs/s the broker averaged 1.3-1.5 of 2 cores and
# alerts waited over a second (p50). Answering after 10 ms or 64 kB: p50 77 ms, p99 287 ms (one run).
# Both clients find new partitions (and topics matching TDM_INPUT_PATTERN) only when they
# refresh metadata: every 5 minutes by default, so messages on a partition added to the input
# topic waited ~296 s for their page (issue 28). A metadata request every 5 s costs the broker
# nothing to speak of.
METADATA_REFRESH_MS = 5_000
FETCH_MAX_WAIT_MS = 10
FETCH_MIN_BYTES = 65_536

# The failures that say why a connection was refused, as opposed to "nobody answered".
CONNECTION_REFUSALS = frozenset(
    {
        Failure.AUTHENTICATION,
        Failure.SASL_MECHANISM,
        Failure.TLS_TRUST,
        Failure.TLS_HOSTNAME,
        Failure.TLS_CLIENT_CERTIFICATE,
    }
)


class ClientError(Exception):
    """A failed client call. `detail` names positions and resources, never record contents."""

    def __init__(self, failure: Failure, detail: str, name: str = "", connections: int = 1) -> None:
        super().__init__(f"{failure.value}: {detail}")
        self.failure = failure
        self.detail = detail
        self.name = name or failure.value  # the client's own name for the error, for the operator
        self.connections = connections  # how many connections a refusal failed (at least this one)


class Rebalance(Protocol):
    """Called from inside GroupConsumer.poll, on the polling thread's behalf."""

    def assigned(self, partitions: Collection[Partition]) -> None: ...

    def revoked(self, partitions: Collection[Partition]) -> None:
        """Before the partitions go, while offsets for them can still be committed."""

    def lost(self, partitions: Collection[Partition]) -> None:
        """The member was expelled: the partitions are gone and nothing for them may commit."""


class Reader(Protocol):
    """A consumer outside any group, reading assigned partitions (restore, dead-letter tools)."""

    def assign(self, partitions: Collection[Partition]) -> None: ...

    def seek(self, partition: Partition, offset: int) -> None: ...

    def seek_to_beginning(self, partition: Partition) -> None:
        """The log start (compaction and retention move it past 0)."""

    def poll(self, timeout_ms: int, max_records: int) -> Mapping[Partition, Sequence[Record]]: ...

    def position(self, partition: Partition) -> int:
        """The next offset to read: past the transaction markers and aborted records skipped."""

    def partitions_for(self, topic: str) -> list[int] | None:
        """The topic's partition numbers; None if it does not exist (or may not be described)."""

    def beginning_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int]: ...

    def offsets_for_time(self, partitions: Collection[Partition], ms: int) -> Mapping[Partition, int | None]:
        """The first offset at or after `ms` since the epoch; None past the last record."""

    def end_offsets(self, partitions: Collection[Partition]) -> Mapping[Partition, int]:
        """Last stable offsets (the readers are read_committed)."""

    def close(self) -> None: ...


class GroupConsumer(Reader, Protocol):
    """The service's consumer: a member of TDM_GROUP_ID, read_committed, no auto-commit."""

    def subscribe(self, topics: Sequence[str], pattern: str | None, listener: Rebalance) -> None: ...

    def pause(self, partitions: Collection[Partition]) -> None: ...

    def resume(self, partitions: Collection[Partition]) -> None: ...

    def assignment(self) -> frozenset[Partition]: ...

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """At-least-once delivery only; exactly once commits through the producer."""

    def group_metadata(self) -> object:
        """Opaque, for TransactionalProducer.send_offsets (KIP-447 fencing of zombies)."""

    def in_group(self) -> bool:
        """A stable member with a known coordinator (readiness, the watchdog)."""

    def rejoin(self) -> bool:
        """Ask the group for a new assignment (`loop/coverage.py`): a member that owns nothing
        leaves and joins again as a new member (a follower's plain re-join is answered with the
        current assignment, no rebalance). Revocations and assignments reach the listener inside
        a later poll. False if the client cannot do it in place (the watchdog then ends the
        process after Health's bound, for a fresh start)."""


class Sent(Protocol):
    def offset(self, timeout_s: float) -> int:
        """Where the record landed, once the producer has flushed; raises ClientError if it failed."""


class Producer(Protocol):
    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        *,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> Sent: ...

    def flush(self, timeout_s: float) -> None:
        """Every send so far acknowledged; raises the first ClientError among them."""

    def close(self, timeout_s: float) -> None:
        """Deliver what it can within `timeout_s`, then let go; never raises (the caller is done)."""


class TransactionalProducer(Producer, Protocol):
    """Initialised (init_transactions) when made; one transaction open at a time."""

    def begin(self) -> None: ...

    def send_offsets(self, offsets: Mapping[Partition, int], group_metadata: object) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic as DescribeTopics answers for this principal."""

    partitions: int  # 0 when it cannot be described
    failure: Failure | None = None  # MISSING_TOPIC, NOT_AUTHORISED_TOPIC, ...
    error: str = ""  # the client's name for the failure
    operations: frozenset[str] | None = None  # what we may do ("READ", "WRITE"), if the broker said


@dataclass(frozen=True, slots=True)
class Member:
    member_id: str
    host: str
    partitions: tuple[Partition, ...]  # sorted


@dataclass(frozen=True, slots=True)
class GroupInfo:
    state: str  # as the broker names it: Stable, PreparingRebalance, Empty, Dead, ...
    members: tuple[Member, ...]


class Admin(Protocol):
    def describe_topics(self, topics: Collection[str]) -> Mapping[str, TopicInfo]: ...

    def create_topics(self, specs: Collection[TopicSpec]) -> None:
        """Create them; one that exists already (another instance won the race) is no failure."""

    def max_message_bytes(self, topic: str) -> int | None:
        """The largest record batch the topic takes (its max.message.bytes, default or set);
        None when the broker does not say (no DESCRIBE_CONFIGS, an old broker, no topic)."""

    def describe_group(self, group_id: str) -> GroupInfo: ...

    def group_offsets(self, group_id: str) -> Mapping[Partition, int]:
        """The group's committed offsets (partitions it never committed are absent)."""

    def close(self) -> None: ...


class Client(Protocol):
    """One implementation of the seam, built from the settings (bootstrap, security, ids)."""

    name: str  # "kafka-python" or "confluent-kafka"

    def group_consumer(self) -> GroupConsumer: ...

    def reader(self, purpose: str) -> Reader: ...

    def producer(self) -> Producer: ...

    def transactional_producer(self, transactional_id: str) -> TransactionalProducer: ...

    def admin(self) -> Admin: ...
