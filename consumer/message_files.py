"""Splitting a file of lab messages into messages, for `tdm-alerts interpret`.

A file is an HL7 v2 batch (or a single message), one JSON document (a FHIR Bundle or
Observation, or a canonical message), or JSON Lines with one message per line.
"""

from __future__ import annotations

from collections.abc import Iterator

import pydantic_core

from consumer.formats import DecodeError, Format, detect
from consumer.formats.hl7v2 import hl7_text, split_messages
from interpretation import SourceRef


def messages_in(data: bytes, name: str, fmt: Format = Format.AUTO) -> Iterator[tuple[SourceRef, bytes]]:
    """Each message in `data` with where it sits in the file called `name`."""
    kind = detect(data) if fmt is Format.AUTO else fmt
    if kind is Format.HL7V2:
        try:
            messages = split_messages(hl7_text(data))
        except DecodeError:
            messages = []
        if messages:
            for number, text in enumerate(messages, start=1):
                yield SourceRef(file=name, message=number), text.encode()
            return
        # Not splittable: hand the whole file to the decoder, which explains what is wrong.
        yield SourceRef(file=name, message=1), data
        return
    if data.strip() and b"\n" in data.strip():
        try:
            pydantic_core.from_json(data)
        except ValueError:
            pass  # not one document, so JSON Lines
        else:
            yield SourceRef(file=name, message=1), data
            return
    for number, line in enumerate(data.splitlines(), start=1):
        if line.strip():
            yield SourceRef(file=name, line=number), line
