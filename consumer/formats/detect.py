"""Choosing a decoder for a message's bytes."""

from __future__ import annotations

from consumer.dead_letters import Reason
from consumer.formats.canonical import decode_canonical
from consumer.formats.errors import DecodeError
from interpretation import LabResult


def decode(data: bytes) -> list[LabResult]:
    """Decode one message of any supported format into lab results."""
    head = data.lstrip()[:1]
    if head == b"{":
        return decode_canonical(data)
    raise DecodeError(Reason.UNSUPPORTED_FORMAT, "message is not a JSON object (canonical format)")
