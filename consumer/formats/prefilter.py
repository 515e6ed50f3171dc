"""Telling, from a message's raw bytes, that it cannot hold an infliximab result.

Nearly every message in a lab feed is about something else, and parsing one (python-hl7
for an HL7 panel costs about half a millisecond) to find that out would cap the service
far below what Kafka delivers. A result is recognised by its code or by a drug name in its
display text (`interpretation.recognition`); if no such code and no such name occur
anywhere in the bytes, no decoder could find one either, so the message is skipped.

The test is one-sided by construction: it may say "maybe" for a message that turns out
irrelevant (a code inside another identifier), never "no" for one that is relevant. The
only way a name could hide from a byte search is an escape sequence that spells letters
(JSON \\uXXXX, HL7 \\Xhh\\ and the like), so a message holding one is always decoded.

`scan` answers everything a skipped message is asked in one look at its bytes (about 2 us for
a 1 kB message): whether it may hold an infliximab result or names an albumin or weight code,
and, only if it does, whether it holds a control byte (binary).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ahocorasick_rs import BytesAhoCorasick, Implementation, MatchKind

from interpretation.ruleset import Recognition

_HL7_HEADERS = (b"MSH", b"FHS", b"BHS")
LEADING = b" \t\r\n\x0b\xef\xbb\xbf"  # whitespace, an MLLP start byte, a UTF-8 byte-order mark
# JSON \u escapes; HL7 hex (X), local (Z), charset (C, M) and highlight (H, N) escapes.
_LETTER_ESCAPES = [b"\\" + bytes([c]) for c in b"uXZCMHN"]
_ESCAPE_STARTS = frozenset(bytes([c]) for c in b"uXZCMHN")
# Control bytes that no text format we read may contain (tab, LF, CR and the MLLP frame
# bytes VT and FS are allowed): their presence means binary data, which is not parsed. Turned
# into NUL by one translation, which a byte search then finds (a regex over the control bytes
# cost 5 us a message). Only a message that may be ours is looked at for them: one that names
# nothing we read is skipped on its first bytes, binary or not (README, "What is read").
_CONTROL = bytes(b for b in [*range(32), 127] if b not in (0x09, 0x0A, 0x0B, 0x0D, 0x1C))
_CONTROL_TO_NUL = bytes.maketrans(_CONTROL, b"\x00" * len(_CONTROL))


class Scan(NamedTuple):
    """What a message's bytes say before any decoder reads them."""

    binary_at: int  # the first control byte's position, -1 when there is none (or not looked at)
    maybe: bool  # may hold an infliximab result (`Prefilter.may_be_relevant`)
    covariate: bool  # names an albumin or weight code (only when the forecast reads them)
    head: bytes  # the first bytes, leading whitespace, MLLP start and byte-order mark left out


def _searcher(patterns: list[bytes]) -> BytesAhoCorasick | None:
    """One pass over the bytes for any of `patterns`. Leftmost-first matching lets the automaton
    skip ahead with its SIMD prefilter (0.5 us for 1 kB against 4 for the standard, overlapping
    kind); it may report fewer matches where patterns overlap, never none where one occurs,
    which is all a yes-or-no question needs."""
    if not patterns:
        return None
    return BytesAhoCorasick(patterns, matchkind=MatchKind.LeftmostFirst, implementation=Implementation.DFA)


def _found(searcher: BytesAhoCorasick | None, data: bytes) -> bool:
    return searcher is not None and bool(searcher.find_matches_as_indexes(data))


class Prefilter:
    def __init__(self, recognition: Recognition, covariates: bool = False) -> None:
        self._codes = tuple(c.encode() for c in {*recognition.drug_level_codes, *recognition.antibody_codes})
        # A drug name's words, in order, separated by anything that is not a letter or digit,
        # which is how recognition compares display names ("CT-P13" is "ct p13").
        words = [re.findall(r"[a-z0-9]+", name.lower()) for name in recognition.drug_names]
        names = [rb"[^a-z0-9]+".join(re.escape(w.encode()) for w in ws) for ws in words if ws]
        self._names = re.compile(b"|".join(names)) if names else None
        # Python's re tries every alternative at every position (tens of microseconds on a
        # 1 kB message); a substring test per name's longest word rules out almost every
        # message first, and the expression only confirms the rare candidate.
        self._anchors = tuple({max(ws, key=len).encode() for ws in words if ws})
        # Every code and anchor in one pass over the case-folded bytes (Aho-Corasick, a DFA in
        # Rust). Case-folding makes it one-sided like the rest: a code found only in another
        # case is checked exactly below, and nothing the exact checks would find can be missed.
        self._any_word = _searcher(sorted({*(c.lower() for c in self._codes if c), *self._anchors}))
        self._escape = _searcher(_LETTER_ESCAPES)
        # Albumin and weight codes, when the forecast reads them from the lab feed. They never
        # page, so a code hidden behind an escape may go unread.
        codes = recognition.covariates
        covariate_codes = sorted(codes.every_code) if covariates and codes else []
        self._covariate_code = _searcher([c.encode() for c in covariate_codes])

    def scan(self, data: bytes) -> Scan:
        head = data[:24].lstrip(LEADING)
        maybe = self._may_be_relevant(data, data.lower(), head)
        named = self._covariate_code
        covariate = named is not None and bool(named.find_matches_as_indexes(data))
        binary_at = data.translate(_CONTROL_TO_NUL).find(0) if maybe or covariate else -1
        return Scan(binary_at, maybe, covariate and binary_at < 0, head)

    def mentions_covariate(self, data: bytes) -> bool:
        """Whether an albumin or weight code occurs in `data` (always False unless asked for)."""
        return _found(self._covariate_code, data)

    def names_drug(self, data: bytes) -> bool:
        """True when a drug name occurs in the bytes (not just a code that may be coincidence)."""
        return self._names_drug(data.lower())

    def _names_drug(self, lowered: bytes) -> bool:
        if self._names is None:
            return False
        return any(a in lowered for a in self._anchors) and self._names.search(lowered) is not None

    def may_be_relevant(self, data: bytes) -> bool:
        """False only if no decoder could find an infliximab result in `data`."""
        return self._may_be_relevant(data, data.lower(), data[:24].lstrip(LEADING))

    def _may_be_relevant(self, data: bytes, lowered: bytes, head: bytes) -> bool:
        # `lowered`: the bytes with case folded.
        words = self._any_word
        if (
            words is not None
            and words.find_matches_as_indexes(lowered)
            and (any(code in data for code in self._codes) or self._names_drug(lowered))
        ):
            return True
        # Most messages hold one backslash (HL7's MSH-2 declares it) or none (JSON without
        # escapes): looking at it is cheaper than searching the whole message again.
        at = data.find(b"\\")
        if at >= 0 and (
            data[at + 1 : at + 2] in _ESCAPE_STARTS
            or (data.find(b"\\", at + 1) >= 0 and _found(self._escape, data))
        ):
            return True
        # An HL7 message may declare another escape character (MSH-2); then we cannot tell.
        return head[:3] in _HL7_HEADERS and head[6:7] != b"\\"
