"""Building kafka-python clients from settings, with back-off while the cluster is unreachable."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import structlog
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from consumer.settings import Settings

log = structlog.get_logger("tdm_alerts.kafka")
T = TypeVar("T")
# How long one client waits for a first broker before we log and back off (kafka-python: 30 s).
BOOTSTRAP_TIMEOUT_MS = 5000
# Records per poll; a batch (transaction) spans polls up to TDM_BATCH_MAX_RECORDS.
POLL_MAX_RECORDS = 500
# kafka-python retries the first AddPartitionsToTxn of a transaction, which the broker refuses
# while the previous one's markers are still being written, after retry_backoff_ms: with
# the default 100 ms every transaction waited ~108 ms; with 10 ms it waits ~15 ms (measured
# in docs/benchmarks.md). Other retries back off as briefly, against a local cluster.
TRANSACTIONAL_RETRY_BACKOFF_MS = 10


class StopRequested(Exception):
    """Start-up was interrupted by a stop request while waiting for the brokers."""


def with_backoff(make: Callable[[], T], what: str, max_backoff_s: float, stopping: Callable[[], bool]) -> T:
    """Call `make` until the brokers answer, doubling the wait up to `max_backoff_s`."""
    delay = 0.5
    while True:
        try:
            return make()
        # kafka-python 3 reports an unreachable cluster as a bootstrap time-out (BOOTSTRAP_TIMEOUT_MS).
        except (KafkaTimeoutError, KafkaConnectionError):
            if stopping():
                raise StopRequested from None
            log.warning("brokers unreachable; retrying", client=what, retry_in_s=delay)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if stopping():
                    raise StopRequested from None
                time.sleep(0.1)
            delay = min(delay * 2, max_backoff_s)


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
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.session_timeout_ms // 3,
        **settings.kafka_security(),
    )


def new_producer(settings: Settings, transactional_id: str | None = None) -> KafkaProducer:
    if transactional_id is not None:
        extra: dict[str, object] = {"retry_backoff_ms": TRANSACTIONAL_RETRY_BACKOFF_MS}
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
        client_id=settings.client_id,
        **settings.kafka_security(),
    )
