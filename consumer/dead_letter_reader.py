"""Reading the dead-letter topic for operators: `dlq list`, `dlq show` and `dlq replay`.

A dead letter's body is the lab message as it arrived, so it holds patient data: what is shown
by default is only what tdm-alerts wrote itself (reason, stage, error, where the message came
from, when) and the names of the sender's headers. The body is printed only on request.
The reader keeps no state: it reads from a point in time (or one position) up to the end it saw
on start, so every command can be repeated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from consumer.clients import client_for
from consumer.clients.seam import ClientError, Failure, Partition, Reader, Record
from consumer.connecting import connect_once
from consumer.dead_letters import HEADER_PREFIX
from consumer.fatal import FatalError
from consumer.settings import Settings


@dataclass(frozen=True, slots=True)
class Position:
    """One record of the dead-letter topic, as `PARTITION:OFFSET` on the command line."""

    partition: int
    offset: int

    @classmethod
    def parse(cls, text: str) -> Position:
        partition, sep, offset = text.partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit():
            raise ValueError(f"{text!r} is not PARTITION:OFFSET (for example 0:1234)")
        return cls(int(partition), int(offset))


@dataclass(frozen=True, slots=True)
class DeadLetterView:
    """What `dlq list` and `dlq show` print of one dead letter: never its body."""

    partition: int
    offset: int
    written: datetime | None
    reason: str
    stage: str
    error: str
    source: str  # topic/partition/offset of the original message
    other_headers: tuple[str, ...]  # names only: their values are the sender's
    size: int
    body: str  # whole, cut or left_out (dead letters written before bodies were cut: whole)
    original_size: str  # of the whole message, in bytes
    digest: str  # SHA-256 of the whole message

    @classmethod
    def of(cls, record: Record) -> DeadLetterView:
        ours = {
            k.removeprefix(HEADER_PREFIX): v.decode(errors="replace")
            for k, v in record.headers
            if k.startswith(HEADER_PREFIX)
        }
        source = "/".join(ours.get(f"source.{part}", "?") for part in ("topic", "partition", "offset"))
        return cls(
            partition=record.partition,
            offset=record.offset,
            written=datetime.fromtimestamp(record.timestamp_ms / 1000, UTC) if record.timestamp_ms else None,
            reason=ours.get("reason", "unknown"),
            stage=ours.get("stage", "?"),
            error=ours.get("error", ""),
            source=source,
            other_headers=tuple(k for k, _ in record.headers if not k.startswith(HEADER_PREFIX)),
            size=len(record.value or b""),
            body=ours.get("body", "whole"),
            original_size=ours.get("body.bytes", str(len(record.value or b""))),
            digest=ours.get("body.sha256", "?"),
        )

    def line(self) -> str:
        when = self.written.isoformat(timespec="seconds") if self.written else "?"
        return f"{self.partition}:{self.offset}  {when}  {self.reason:<18} {self.source}  {self.error}"

    def describe(self, *, header_names: bool = False) -> str:
        """The dead letter's facts; the sender's header names (which can carry identifiers) only
        when asked for with the body, else their count."""
        others = (", ".join(self.other_headers) or "none") if header_names else str(len(self.other_headers))
        rows = [
            ("position", f"{self.partition}:{self.offset}"),
            ("written", self.written.isoformat() if self.written else "?"),
            ("reason", self.reason),
            ("stage", self.stage),
            ("error", self.error),
            ("source", self.source),
            ("size", f"{self.size} bytes"),
            ("body", f"{self.body} (the message was {self.original_size} bytes, sha256 {self.digest})"),
            ("other headers", others),
        ]
        return "\n".join(f"{name:>14}: {value}" for name, value in rows)


def new_reader(settings: Settings, purpose: str) -> Reader:
    """A read_committed reader that commits nothing; an unreachable cluster is a clear error in seconds."""
    return connect_once(lambda: client_for(settings).reader(purpose), settings)


def partitions_of(consumer: Reader, topic: str, what: str) -> list[Partition]:
    partitions = consumer.partitions_for(topic)
    if not partitions:
        raise FatalError(f"{what} topic {topic!r} does not exist (or this user may not describe it)")
    return [Partition(topic, p) for p in partitions]


def dead_letters(
    consumer: Reader, topic: str, since_ms: int | None = None, at: Position | None = None
) -> Iterator[Record]:
    """The dead letters from `since_ms` (or the start) up to the end seen now; or only the one `at`."""
    try:
        yield from _dead_letters(consumer, topic, since_ms, at)
    except ClientError as err:
        if err.failure is not Failure.NOT_AUTHORISED_TOPIC:
            raise
        raise FatalError(
            f"not authorised to READ topic {topic} (TDM_DLQ_TOPIC): grant READ on Topic:{topic} "
            "to this principal (README 'Operator access')"
        ) from None


def _dead_letters(
    consumer: Reader, topic: str, since_ms: int | None, at: Position | None
) -> Iterator[Record]:
    tps = partitions_of(consumer, topic, "dead-letter")
    if at is not None:
        tps = [tp for tp in tps if tp.partition == at.partition]
        if not tps:
            raise FatalError(f"dead-letter topic {topic!r} has no partition {at.partition}")
    consumer.assign(tps)
    ends = consumer.end_offsets(tps)
    starts = consumer.beginning_offsets(tps)
    if at is not None:
        tp = tps[0]
        if not starts[tp] <= at.offset < ends[tp]:
            raise FatalError(
                f"no dead letter at {at.partition}:{at.offset} (partition {at.partition} holds "
                f"offsets {starts[tp]} to {ends[tp] - 1})"
            )
        starts, ends = {tp: at.offset}, {tp: at.offset + 1}
    elif since_ms is not None:
        found = consumer.offsets_for_time(tps, since_ms)
        starts = {tp: (at_time if (at_time := found.get(tp)) is not None else ends[tp]) for tp in tps}
    for tp in tps:
        consumer.seek(tp, starts[tp])
    remaining = {tp for tp in tps if starts[tp] < ends[tp]}
    while remaining:
        for tp, records in consumer.poll(1000, 500).items():
            for record in records:
                if record.offset >= ends[tp]:
                    break
                yield record
            if consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
