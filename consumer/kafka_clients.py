"""Building kafka-python clients from settings, and waiting with back-off (for either client behind
the seam, and the admin calls) while the cluster is unreachable."""

from __future__ import annotations

import ssl
import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import structlog
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaConnectionError, KafkaTimeoutError
from kafka.structs import MemberState

from consumer.clients.seam import CONNECTION_REFUSALS, ClientError, Failure
from consumer.connection_failures import ADVICE, WATCH, Cause
from consumer.fatal import FatalError
from consumer.settings import Settings

log = structlog.get_logger("tdm_alerts.kafka")
T = TypeVar("T")
# A failure with a known cause (bad password, untrusted certificate) is fatal once this many
# connections have failed with it: a second refusal rules out a one-off (a broker mid-restart).
FATAL_AFTER_FAILURES = 2
# How long one client waits for a first broker before we log and back off (kafka-python: 30 s).
BOOTSTRAP_TIMEOUT_MS = 5000
# Records per poll; a batch (transaction) spans polls up to TDM_BATCH_MAX_RECORDS.
POLL_MAX_RECORDS = 500
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


class StopRequested(Exception):
    """Start-up was interrupted by a stop request while waiting for the brokers."""


def with_backoff(make: Callable[[], T], what: str, max_backoff_s: float, stopping: Callable[[], bool]) -> T:
    """Call `make` until the brokers answer, doubling the wait up to `max_backoff_s`.

    An unreachable cluster is retried for ever; a failure whose cause says retrying cannot help
    (credentials, certificates) raises FatalError after FATAL_AFTER_FAILURES such failures.
    """
    delay = 0.5
    refused: Counter[Cause] = Counter()
    WATCH.take()  # forget what an earlier client's attempts left behind
    while True:
        try:
            return make()
        # kafka-python 3 reports every failed bootstrap as a time-out (BOOTSTRAP_TIMEOUT_MS);
        # its cause, if any, is in its log (WATCH). confluent-kafka's adapter names the cause.
        except (KafkaTimeoutError, KafkaConnectionError, ClientError) as err:
            if isinstance(err, ClientError) and err.failure not in CONNECTION_REFUSALS | {Failure.TRANSIENT}:
                raise
            if stopping():
                raise StopRequested from None
            cause, failures = WATCH.take()
            if isinstance(err, ClientError) and err.failure in CONNECTION_REFUSALS:
                cause, failures = Cause(err.failure.value), max(failures, 1)
            if cause is not None:
                refused[cause] += failures
            if cause is not None and refused[cause] >= FATAL_AFTER_FAILURES:
                raise FatalError(f"cannot connect to Kafka ({cause.value}): {ADVICE[cause]}") from None
            if cause is not None:
                log.warning("connection refused; retrying once", client=what, cause=cause.value)
            else:
                log.warning("brokers unreachable; retrying", client=what, retry_in_s=delay)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if stopping():
                    raise StopRequested from None
                time.sleep(0.1)
            delay = min(delay * 2, max_backoff_s)


def connect_once(make: Callable[[], T], settings: Settings) -> T:
    """For operator commands: one attempt, and a failure is a clear error naming its cause."""
    check_tls_material(settings)
    WATCH.take()
    try:
        return make()
    except (KafkaTimeoutError, KafkaConnectionError):
        cause, _ = WATCH.take()
        why = ADVICE[cause] if cause else "check TDM_BOOTSTRAP_SERVERS, the network and the security settings"
        servers = ",".join(settings.bootstrap_servers)
        raise FatalError(f"cannot connect to the Kafka cluster at {servers}: {why}") from None


def check_tls_material(settings: Settings) -> None:
    """Load the CA, certificate and key now, so a wrong path or key password is a clear error.

    kafka-python would hit the same problem inside its connection loop and retry for ever.
    """
    if "SSL" not in settings.security_protocol:
        return
    try:
        context = ssl.create_default_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
        if settings.ssl_certfile:
            password = settings.ssl_password.get_secret_value() if settings.ssl_password else None
            context.load_cert_chain(
                str(settings.ssl_certfile),
                str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
                password=password or "",  # "" rather than None: never prompt on a terminal
            )
    except FileNotFoundError as err:
        raise FatalError(
            f"TLS file not found: {err.filename} (TDM_SSL_CAFILE / _CERTFILE / _KEYFILE)"
        ) from None
    except ssl.SSLError as err:
        raise FatalError(
            f"TLS material could not be loaded ({err.reason or 'unreadable'}): check TDM_SSL_CAFILE, "
            "TDM_SSL_CERTFILE, TDM_SSL_KEYFILE and, for an encrypted key, TDM_SSL_PASSWORD (or _FILE)"
        ) from None


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
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.session_timeout_ms // 3,
        **settings.kafka_security(),
    )


def in_group(consumer: KafkaConsumer) -> bool:
    """A stable member of its group with a known coordinator (an idle member with no partitions is).

    Safe from another thread: it reads the membership snapshot and the coordinator id, with no
    I/O. The coordinator id is kafka-python's own attribute, read defensively: without it, the
    membership state alone decides.
    """
    if consumer.group_metadata().state != MemberState.STABLE:
        return False
    coordinator = getattr(consumer, "_coordinator", None)
    return getattr(coordinator, "coordinator_id", 0) is not None


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
        max_request_size=max(settings.max_message_bytes + 65_536, 1_048_576),
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
