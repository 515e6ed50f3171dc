"""`tdm-alerts dlq replay`: re-submitting dead letters once the cause is fixed.

Each dead letter goes back, with its original key, value and headers, to the topic it came
from. The replay keeps no state of its own: it reads the dead-letter topic from a point in
time (or only one position) up to the end it saw on start, so it can be run again safely; the service's
`event_id` lets downstream systems recognise an event they already have.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import structlog

from consumer.clients import client_for
from consumer.clients.seam import ClientError, Producer, Reader, Record, Sent
from consumer.connecting import connect_once
from consumer.dead_letter_reader import Position, dead_letters, new_reader, partitions_of
from consumer.dead_letters import BODY_HEADER, HEADER_PREFIX, ORIGIN_HEADER, Body, Reason
from consumer.settings import Settings

log = structlog.get_logger("tdm_alerts.replay")
REPLAYED_FROM = "tdm.replayed_from"
SEND_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    reasons: frozenset[Reason] = frozenset()  # empty: every reason
    to_topic: str | None = None
    since_ms: int | None = None
    limit: int | None = None
    dry_run: bool = False
    at: Position | None = None  # only this dead letter


@dataclass
class ReplayReport:
    replayed: Counter[str] = field(default_factory=Counter)  # by reason
    passed_over: int = 0
    no_source: int = 0
    not_whole: int = 0
    failed: int = 0
    dry_run: bool = False

    def reached(self, limit: int | None) -> bool:
        return limit is not None and sum(self.replayed.values()) >= limit

    def describe(self) -> str:
        verb = "would replay" if self.dry_run else "replayed"
        by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(self.replayed.items())) or "none"
        return (
            f"{verb} {sum(self.replayed.values())} dead letters ({by_reason}); "
            f"{self.passed_over} not selected; {self.no_source} without a source topic; "
            f"{self.not_whole} too large to have kept whole (replay them from the source topic's copy); "
            f"{self.failed} failed to send"
        )


def _target(record: Record, request: ReplayRequest, report: ReplayReport) -> str | None:
    """Where this dead letter goes back to, or None if it is not to be replayed (and why, counted)."""
    headers = dict(record.headers)
    reason = headers.get(HEADER_PREFIX + "reason", b"").decode(errors="replace")
    if request.reasons and reason not in request.reasons:
        report.passed_over += 1
        return None
    target = request.to_topic or headers.get(HEADER_PREFIX + "source.topic", b"").decode(errors="replace")
    if not target:
        report.no_source += 1
        return None
    if headers.get(BODY_HEADER, Body.WHOLE.encode()) != Body.WHOLE.encode():
        report.not_whole += 1  # a cut message sent again would be read as a different one
        return None
    report.replayed[reason or "unknown"] += 1
    return target


def _origin(record: Record, target: str) -> bytes | None:
    """Where the record was first published, when it goes back to that topic (not --to another);
    None when its own headers already say (a replay of a replay keeps the first)."""
    headers = dict(record.headers)
    if ORIGIN_HEADER in headers:
        return None
    source = headers.get(HEADER_PREFIX + "source.topic", b"").decode(errors="replace")
    partition = headers.get(HEADER_PREFIX + "source.partition", b"").decode(errors="replace")
    offset = headers.get(HEADER_PREFIX + "source.offset", b"").decode(errors="replace")
    if source != target or not partition.isdigit() or not offset.isdigit():
        return None
    return f"{source}/{partition}/{offset}".encode()


def replay(settings: Settings, request: ReplayRequest) -> ReplayReport:
    consumer = new_reader(settings, "dlq-replay")
    producer = None if request.dry_run else connect_once(client_for(settings).producer, settings)
    try:
        if request.to_topic is not None:
            partitions_of(consumer, request.to_topic, "--to")  # before anything is sent
        return _replay(consumer, producer, settings.dlq_topic, request)
    finally:
        consumer.close()
        if producer is not None:
            producer.close(10)


def _replay(
    consumer: Reader, producer: Producer | None, dlq_topic: str, request: ReplayRequest
) -> ReplayReport:
    report = ReplayReport(dry_run=request.dry_run)
    sent: list[Sent] = []
    for record in dead_letters(consumer, dlq_topic, request.since_ms, request.at):
        if report.reached(request.limit):
            break
        target = _target(record, request, report)
        if target is not None and producer is not None:
            original = [(k, v) for k, v in record.headers if not k.startswith(HEADER_PREFIX)]
            dead_letter = f"{record.topic}/{record.partition}/{record.offset}".encode()
            headers = [*original, (REPLAYED_FROM, dead_letter)]
            if (first := _origin(record, target)) is not None:
                headers.append((ORIGIN_HEADER, first))
            sent.append(producer.send(target, record.key, record.value, headers))
    if producer is not None:
        with contextlib.suppress(ClientError):  # raised for the first failed send; each is counted below
            producer.flush(SEND_TIMEOUT_S)
        for one in sent:
            try:
                one.offset(SEND_TIMEOUT_S)
            except ClientError as err:  # every failed send is counted and reported, none hidden
                report.failed += 1
                log.error("replay send failed", error=err.name)
    log.info("dlq replay finished", summary=report.describe())
    return report
