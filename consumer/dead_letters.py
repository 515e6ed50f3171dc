"""Dead letters: why a message could not be processed, in a form operators can search.

A dead letter keeps the original bytes and key; its headers say why (a fixed reason, usable
as a metric label), at which stage, where it came from and when, and how much of the body it
holds with a digest of the whole.

A message larger than the dead-letter topic takes is still dead-lettered, with its body cut to
fit (said in `tdm.dlq.body`): a dead letter that cannot be written would stop its partition
for good, and every later result on it would wait (issue 28).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

HEADER_PREFIX = "tdm.dlq."
# Set by `dlq replay` on a record sent back to its source topic: where it was first published
# (topic/partition/offset), kept through later replays. The notifier orders a replayed alert
# event by it, so an event older than what a receiver has is not news (issue 42).
ORIGIN_HEADER = "tdm.origin"
BODY_HEADER = HEADER_PREFIX + "body"
# What a record needs beside its key, value and headers (batch header, lengths, varints), with
# room to spare: a dead letter that exceeds its topic's limit by a byte blocks the partition.
RECORD_OVERHEAD_BYTES = 4096
BODY_HEADERS_BYTES = 160  # fit_body's three headers


class Body(StrEnum):
    """How much of the original message a dead letter carries."""

    WHOLE = "whole"
    CUT = "cut"  # the first bytes, up to what the dead-letter topic takes
    LEFT_OUT = "left_out"  # not even the headers left room for a part of it


def fit(
    value: bytes,
    key: bytes | None,
    headers: list[tuple[str, bytes]],
    original: list[tuple[str, bytes]],
    limit: int,
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The dead letter's body and headers within `limit` bytes: ours always, the sender's
    headers when they fit beside them, then as much of the body as there is room for."""
    fixed = RECORD_OVERHEAD_BYTES + len(key or b"") + header_bytes(headers) + BODY_HEADERS_BYTES
    if fixed + header_bytes(original) > limit:
        original = [(HEADER_PREFIX + "headers", b"left_out")]
    body, about = fit_body(value, limit - fixed - header_bytes(original))
    return body, [*headers, *about, *original]


def fit_body(value: bytes, room: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The body to dead-letter within `room` bytes, and headers saying what was kept.

    The size and SHA-256 of the whole message let an operator match the cut dead letter with the
    source's copy (its topic, partition and offset are in the other headers).
    """
    if len(value) <= room:
        kept, body = Body.WHOLE, value
    elif room > 0:
        kept, body = Body.CUT, value[:room]
    else:
        kept, body = Body.LEFT_OUT, b""
    headers = [
        (BODY_HEADER, kept.value.encode()),
        (HEADER_PREFIX + "body.bytes", str(len(value)).encode()),
        (HEADER_PREFIX + "body.sha256", hashlib.sha256(value).hexdigest().encode()),
    ]
    return body, headers


def header_bytes(headers: list[tuple[str, bytes]]) -> int:
    return sum(len(k) + len(v) + 8 for k, v in headers)


class Reason(StrEnum):
    """Why a message was dead-lettered; a small fixed set so it can label metrics."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    BINARY = "binary"
    UNDECODABLE = "undecodable"
    UNSUPPORTED_FORMAT = "unsupported_format"
    INVALID = "invalid"
    PROCESSING_ERROR = "processing_error"
    UNDELIVERED = "undelivered"  # `tdm-alerts notify`: a receiver refused it, or retries ran out
    # An acknowledgement for an incident the patient does not have open: nothing was changed.
    UNKNOWN_INCIDENT = "unknown_incident"


class Stage(StrEnum):
    INTAKE = "intake"
    DECODE = "decode"
    INTERPRET = "interpret"
    DELIVER = "deliver"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: Reason
    stage: Stage
    detail: str

    def headers(self, topic: str, partition: int, offset: int, at_ms: int) -> list[tuple[str, bytes]]:
        """Kafka headers for the dead-letter record (the detail never holds message content)."""
        fields = {
            "reason": self.reason.value,
            "stage": self.stage.value,
            "error": self.detail[:1000],
            "source.topic": topic,
            "source.partition": str(partition),
            "source.offset": str(offset),
            "time_ms": str(at_ms),
        }
        return [(HEADER_PREFIX + k, v.encode()) for k, v in fields.items()]
