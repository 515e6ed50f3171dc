"""Telling infliximab drug-level and antibody results apart from every other analyte.

This runs on every result in the feed, almost none of which are infliximab, so it is a set
lookup on the code first and a word scan of the display name only when the code is unknown.

Three pieces of evidence can name the analyte: the code, the display name and the unit. The
code (else the name) decides; the others may only agree. When they disagree the result is
read as `uninterpretable` with the reason, because a level read as an antibody result (or the
reverse) turns a page into "nothing to report".
"""

from __future__ import annotations

import re
from enum import Enum
from functools import cache
from typing import NamedTuple

from interpretation.findings import Analyte
from interpretation.quantities import unit_key
from interpretation.ruleset import Recognition

_WORD = re.compile(r"[a-z0-9]+")


def phrase_text(text: str) -> str:
    """Lower-cased words joined by single spaces and padded, so ` phrase ` matches whole words."""
    return " " + " ".join(_WORD.findall(text.lower())) + " "


class _NameSays(Enum):
    NOT_INFLIXIMAB = "not infliximab"
    LEVEL = "level"
    ANTIBODY = "antibody"
    PANEL = "panel"  # names both a level and antibodies: an orderable, not one analyte


class Recognised(NamedTuple):
    """The analyte a result reports; `conflict` says why code, name and unit disagree, if they do."""

    analyte: Analyte
    conflict: str | None = None


class _Vocabulary(NamedTuple):
    drug_codes: frozenset[str]
    antibody_codes: frozenset[str]
    names: tuple[str, ...]
    markers: tuple[str, ...]
    reflex: tuple[str, ...]
    panel: tuple[str, ...]
    level_units: frozenset[str]
    antibody_units: frozenset[str]


@cache
def _compiled(recognition: Recognition) -> _Vocabulary:
    return _Vocabulary(
        drug_codes=frozenset(recognition.drug_level_codes),
        antibody_codes=frozenset(recognition.antibody_codes),
        names=tuple(phrase_text(n) for n in recognition.drug_names),
        markers=tuple(phrase_text(m) for m in recognition.antibody_markers),
        reflex=tuple(phrase_text(m) for m in recognition.reflex_markers),
        panel=tuple(phrase_text(m) for m in recognition.panel_markers),
        level_units=frozenset(unit_key(u) for u in recognition.drug_level_units),
        antibody_units=frozenset(unit_key(u) for u in recognition.antibody_units),
    )


def _name_says(display: str, vocabulary: _Vocabulary) -> _NameSays:
    words = phrase_text(display)
    if not any(name in words for name in vocabulary.names):
        return _NameSays.NOT_INFLIXIMAB
    # "Infliximab QN with Reflex to Ab": what follows a reflex marker is another test the lab
    # may add, not what this result measures.
    head = words
    for marker in vocabulary.reflex:
        at = head.find(marker)
        if at >= 0:
            head = head[: at + 1]
    if not any(marker in head for marker in vocabulary.markers):
        return _NameSays.LEVEL
    if any(joiner in head for joiner in vocabulary.panel):
        return _NameSays.PANEL
    return _NameSays.ANTIBODY


_FROM_NAME = {_NameSays.LEVEL: Analyte.INFLIXIMAB, _NameSays.ANTIBODY: Analyte.ANTI_INFLIXIMAB_ANTIBODY}
_SAID = {Analyte.INFLIXIMAB: "a drug level", Analyte.ANTI_INFLIXIMAB_ANTIBODY: "an antibody result"}


def mentions_infliximab(code: str, display: str | None, recognition: Recognition) -> bool:
    """True when the code or the name points at infliximab at all (decoders validate these)."""
    vocabulary = _compiled(recognition)
    if code in vocabulary.drug_codes or code in vocabulary.antibody_codes:
        return True
    return bool(display) and _name_says(display or "", vocabulary) is not _NameSays.NOT_INFLIXIMAB


def recognise(
    code: str, display: str | None, recognition: Recognition, unit: str | None = None
) -> Recognised | None:
    """The analyte a result reports, or None when it is not (recognisably) an infliximab result.

    Codes decide first; the display name is a last resort and must name infliximab (or a
    biosimilar) as a whole word, so adalimumab and other drugs never match. A name for a
    panel ("Infliximab and antibodies") decides nothing by itself; the unit may then decide.
    """
    vocabulary = _compiled(recognition)
    from_code = (
        Analyte.INFLIXIMAB
        if code in vocabulary.drug_codes
        else Analyte.ANTI_INFLIXIMAB_ANTIBODY
        if code in vocabulary.antibody_codes
        else None
    )
    name = _name_says(display, vocabulary) if display else _NameSays.NOT_INFLIXIMAB
    if from_code is None and name is _NameSays.NOT_INFLIXIMAB:
        return None
    from_unit = None
    if unit:
        key = unit_key(unit)
        if key in vocabulary.level_units:
            from_unit = Analyte.INFLIXIMAB
        elif key in vocabulary.antibody_units:
            from_unit = Analyte.ANTI_INFLIXIMAB_ANTIBODY
    from_name = _FROM_NAME.get(name)
    analyte = from_code or from_name or from_unit
    if analyte is None:
        return None  # a panel name with nothing else to go on: a recognition gap, counted upstream
    disagreeing = [
        f"the {source} says {_SAID[said]}"
        for source, said in (("code", from_code), ("display name", from_name), ("unit", from_unit))
        if said is not None and said is not analyte
    ]
    if not disagreeing:
        return Recognised(analyte)
    decided_by = "code" if from_code else "display name"
    return Recognised(analyte, f"the {decided_by} says {_SAID[analyte]} but {' and '.join(disagreeing)}")
