"""Choosing a decoder for a message: by the topic's configured format, or by the bytes themselves."""

from __future__ import annotations

from enum import StrEnum

from consumer.dead_letters import Reason
from consumer.formats.canonical import decode_canonical
from consumer.formats.errors import DecodeError, Relevance
from consumer.formats.fhir import check_resource, decode_fhir, parse_document
from consumer.formats.hl7v2 import decode_hl7v2
from interpretation import LabResult

_LEADING = b" \t\r\n\x0b\xef\xbb\xbf"  # whitespace, an MLLP start byte, a UTF-8 byte-order mark


class Format(StrEnum):
    AUTO = "auto"
    CANONICAL = "canonical"
    HL7V2 = "hl7v2"
    FHIR = "fhir"


def detect(data: bytes) -> Format | None:
    """The format the bytes are in, from their first bytes (and, for JSON, `resourceType`)."""
    head = data[:256].lstrip(_LEADING)
    if head[:3] in (b"MSH", b"FHS", b"BHS"):
        return Format.HL7V2
    if head[:1] == b"{":
        # FHIR resources carry resourceType; the canonical format never does.
        return Format.FHIR if b'"resourceType"' in data else Format.CANONICAL
    return None


def decode(
    data: bytes, relevant: Relevance, fmt: Format = Format.AUTO, maybe_relevant: bool = True
) -> list[LabResult]:
    """The relevant lab results in one message; raises DecodeError for anything unreadable.

    A message the pre-filter ruled out (`maybe_relevant` False) is checked only for its format
    (an HL7 header; JSON syntax and, for FHIR, a known resource type), not parsed in full. The
    canonical format, ours, is always validated whole.
    """
    maybe = maybe_relevant
    if fmt is Format.AUTO:
        found = detect(data)
        if found is None:
            raise DecodeError(
                Reason.UNSUPPORTED_FORMAT, "not JSON (canonical or FHIR) and not HL7 v2 (no MSH header)"
            )
        fmt = found
    if fmt is Format.HL7V2:
        return decode_hl7v2(data, relevant) if maybe else []
    if fmt is Format.CANONICAL:
        return decode_canonical(data.lstrip(_LEADING), relevant if maybe else _never)
    if not maybe:
        # An unknown resource is refused even when it holds nothing of ours.
        check_resource(data.lstrip(_LEADING))
        return []
    return decode_fhir(parse_document(data.lstrip(_LEADING)), relevant)


def _never(code: str, display: str | None) -> bool:
    return False
