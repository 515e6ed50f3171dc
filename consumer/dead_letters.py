"""Dead letters: why a message could not be processed, in a form operators can search.

A dead letter keeps the original bytes and key; its headers say why (a fixed reason, usable
as a metric label), at which stage, where it came from and when.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

HEADER_PREFIX = "tdm.dlq."


class Reason(StrEnum):
    """Why a message was dead-lettered; a small fixed set so it can label metrics."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    BINARY = "binary"
    UNDECODABLE = "undecodable"
    UNSUPPORTED_FORMAT = "unsupported_format"
    INVALID = "invalid"
    PROCESSING_ERROR = "processing_error"


class Stage(StrEnum):
    INTAKE = "intake"
    DECODE = "decode"
    INTERPRET = "interpret"


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
