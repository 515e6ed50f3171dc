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
"""

from __future__ import annotations

import re

from ahocorasick_rs import BytesAhoCorasick, Implementation

from interpretation.ruleset import Recognition

_HL7_HEADERS = (b"MSH", b"FHS", b"BHS")
# JSON \u escapes; HL7 hex (X), local (Z), charset (C, M) and highlight (H, N) escapes.
_LETTER_ESCAPES = re.compile(rb"\\[uXZCMHN]")


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
        # Rust): 17 substring searches cost ~20 us of a skipped message's ~40, pyahocorasick's
        # per-character trie about as much, this pass ~4 us (best of 5, 1.5 kB FHIR messages).
        # Case-folding makes it one-sided like the rest: a code found only in another case is
        # checked exactly below, and nothing the exact checks would find can be missed.
        words_in_bytes = sorted({*(c.lower() for c in self._codes if c), *self._anchors})
        self._any_word = (
            BytesAhoCorasick(words_in_bytes, implementation=Implementation.DFA) if words_in_bytes else None
        )
        # Albumin and weight codes, when the forecast reads them from the lab feed. They never
        # page, so a code hidden behind an escape may go unread.
        codes = recognition.covariates
        covariate_codes = sorted(codes.every_code) if covariates and codes else []
        self._covariate_code = (
            BytesAhoCorasick([c.encode() for c in covariate_codes], implementation=Implementation.DFA)
            if covariate_codes
            else None
        )

    def _mentions_a_word(self, data: bytes) -> bool:
        """Whether a code or a name's anchor occurs in `data`, ignoring case."""
        return self._any_word is not None and bool(self._any_word.find_matches_as_indexes(data.lower()))

    def mentions_covariate(self, data: bytes) -> bool:
        """Whether an albumin or weight code occurs in `data` (always False unless asked for)."""
        return self._covariate_code is not None and bool(self._covariate_code.find_matches_as_indexes(data))

    def names_drug(self, data: bytes) -> bool:
        """True when a drug name occurs in the bytes (not just a code that may be coincidence)."""
        if self._names is None:
            return False
        lowered = data.lower()
        return any(a in lowered for a in self._anchors) and self._names.search(lowered) is not None

    def may_be_relevant(self, data: bytes) -> bool:
        """False only if no decoder could find an infliximab result in `data`."""
        if self._mentions_a_word(data):
            if any(code in data for code in self._codes):
                return True
            if self.names_drug(data):
                return True
        if _LETTER_ESCAPES.search(data):
            return True
        head = data[:16].lstrip(b" \t\r\n\x0b")
        # An HL7 message may declare another escape character (MSH-2); then we cannot tell.
        return head[:3] in _HL7_HEADERS and head[6:7] != b"\\"
