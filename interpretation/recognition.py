"""Telling infliximab drug-level and antibody results apart from every other analyte.

This runs on every result in the feed, almost none of which are infliximab, so it is a set
lookup on the code first and a word scan of the display name only when the code is unknown.
"""

from __future__ import annotations

import re
from functools import cache

from interpretation.findings import Analyte
from interpretation.ruleset import Recognition

_WORD = re.compile(r"[a-z0-9]+")


def _phrase_text(text: str) -> str:
    """Lower-cased words joined by single spaces and padded, so ` phrase ` matches whole words."""
    return " " + " ".join(_WORD.findall(text.lower())) + " "


@cache
def _compiled(
    recognition: Recognition,
) -> tuple[frozenset[str], frozenset[str], tuple[str, ...], tuple[str, ...]]:
    return (
        frozenset(recognition.drug_level_codes),
        frozenset(recognition.antibody_codes),
        tuple(_phrase_text(n) for n in recognition.drug_names),
        tuple(_phrase_text(m) for m in recognition.antibody_markers),
    )


def recognise(code: str, display: str | None, recognition: Recognition) -> Analyte | None:
    """The analyte a result reports, or None when it is not an infliximab result.

    Codes decide first; the display name is a last resort and must name infliximab (or a
    biosimilar) as a whole word, so adalimumab and other drugs never match.
    """
    drug_codes, antibody_codes, names, markers = _compiled(recognition)
    if code in drug_codes:
        return Analyte.INFLIXIMAB
    if code in antibody_codes:
        return Analyte.ANTI_INFLIXIMAB_ANTIBODY
    if not display:
        return None
    words = _phrase_text(display)
    if not any(name in words for name in names):
        return None
    if any(marker in words for marker in markers):
        return Analyte.ANTI_INFLIXIMAB_ANTIBODY
    return Analyte.INFLIXIMAB
