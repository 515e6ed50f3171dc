"""Choosing a decoder for a message: by the topic's configured format, or by the bytes themselves."""

from __future__ import annotations

from enum import StrEnum

from consumer.dead_letters import Reason
from consumer.formats.canonical import decode_canonical
from consumer.formats.errors import DecodeError, Relevance
from consumer.formats.fhir import decode_fhir, parse_document
from consumer.formats.hl7v2 import decode_hl7v2
from consumer.formats.prefilter import LEADING as _LEADING
from interpretation import LabResult


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


_NOT_A_FORMAT = "not JSON (canonical or FHIR) and not HL7 v2 (no MSH header)"
_EXPECTED = {
    Format.HL7V2: "not HL7 v2 as the topic is configured: no MSH, FHS or BHS header",
    Format.FHIR: "not FHIR JSON as the topic is configured: no JSON object",
    Format.CANONICAL: "not canonical JSON as the topic is configured: no JSON object",
}


def shaped(head: bytes, fmt: Format) -> str | None:
    """Why the first bytes (`Scan.head`) are in no format we read (or not in the topic's), else
    None: all a skipped message is asked about its form."""
    hl7, json = head[:3] in (b"MSH", b"FHS", b"BHS"), head[:1] == b"{"
    if fmt is Format.AUTO:
        return None if hl7 or json else _NOT_A_FORMAT
    if fmt is Format.HL7V2:
        return None if hl7 else _EXPECTED[fmt]
    return None if json else _EXPECTED[fmt]


def decode(
    data: bytes, relevant: Relevance, fmt: Format = Format.AUTO, *, hl7_split: bool = False
) -> list[LabResult]:
    """The relevant lab results in one message; raises DecodeError for anything unreadable.

    `hl7_split`: HL7 v2 read by splitting what is read, not parsed whole first (the same
    results; see `decode_hl7v2`).
    """
    if fmt is Format.AUTO:
        found = detect(data)
        if found is None:
            raise DecodeError(Reason.UNSUPPORTED_FORMAT, _NOT_A_FORMAT)
        fmt = found
    if fmt is Format.HL7V2:
        return decode_hl7v2(data, relevant, split=hl7_split)
    if fmt is Format.CANONICAL:
        return decode_canonical(data.lstrip(_LEADING), relevant)
    return decode_fhir(parse_document(data.lstrip(_LEADING)), relevant)
