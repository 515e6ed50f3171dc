"""Reading what a lab wrote in words instead of a number: by words and negation, not prefixes.

"No antibodies detected" starts with neither "negative" nor "positive", and "Possible
interference, please recollect" starts with "pos": a prefix match gets both wrong. Here the
text is split into words; words that say the test did not give a result win; then a negation
("no", "not", "none", ...) turns the presence word that follows it into absence.
"""

from __future__ import annotations

import re
from enum import StrEnum

_WORD = re.compile(r"[a-z]+")


class Reading(StrEnum):
    PRESENT = "present"
    ABSENT = "absent"  # includes "below the limit of quantitation" for a drug level
    NO_RESULT = "no_result"  # the lab says the test did not give a valid result
    UNCLEAR = "unclear"


# The lab reports that there is no valid result: never read as either answer.
_NO_RESULT = frozenset(
    {
        "interference",
        "recollect",
        "redraw",
        "invalid",
        "inconclusive",
        "indeterminate",
        "equivocal",
        "borderline",
        "unable",
        "error",
        "cancelled",
        "canceled",
        "qns",
        "insufficient",
        "haemolysed",
        "hemolyzed",
        "hemolysed",
        "lipemic",
        "pending",
    }
)
# Words that on their own mean absent (or below the limit of quantitation).
_ABSENT = frozenset(
    {
        "negative",
        "neg",
        "undetectable",
        "undetected",
        "absent",
        "nonreactive",
        "loq",
        "lloq",
        "blq",
        "bloq",
        "bql",
        "nd",
    }
)
_NEGATIONS = frozenset({"no", "not", "none", "non", "without", "nil", "below", "less", "under"})
# "Below (the) lower limit of quantitation", "under the reportable range", "less than LOD": a
# limit or range the value falls beneath, which for a drug level means below the assay's limit.
_BENEATH = frozenset({"below", "under", "less"})
_LIMITS = frozenset(
    {"limit", "limits", "quantitation", "quantification", "detection", "range", "lod", "reportable"}
)
# Said of a drug level only when negated: "not quantifiable", "not measurable".
_NEGATED_PRESENCE = frozenset({"quantifiable", "quantified", "quantitated", "measurable"})
_PRESENT = frozenset({"positive", "pos", "detected", "detectable", "present", "reactive", "seen", "found"})
_NEGATION_REACH = 3  # a negation governs a presence word at most this many words later
_LIMIT_REACH = 4  # "below the lower limit": the limit at most this many words after "below"


def read_text(text: str) -> Reading:
    """What a qualitative lab value says about presence."""
    if text.lstrip().startswith(">"):
        return Reading.UNCLEAR  # ">LOQ" and the like: above some limit, but by how much is unsaid
    words = _WORD.findall(text.lower())
    if not words:
        return Reading.UNCLEAR
    if any(w in _NO_RESULT for w in words):
        return Reading.NO_RESULT
    absent = any(w in _ABSENT for w in words) or any(
        w in _BENEATH and any(x in _LIMITS for x in words[at + 1 : at + 1 + _LIMIT_REACH])
        for at, w in enumerate(words)
    )
    present = False
    for at, word in enumerate(words):
        if word in _NEGATED_PRESENCE and any(
            w in _NEGATIONS for w in words[max(0, at - _NEGATION_REACH) : at]
        ):
            absent = True
            continue
        if word not in _PRESENT:
            continue
        if any(w in _NEGATIONS for w in words[max(0, at - _NEGATION_REACH) : at]):
            absent = True
        else:
            present = True
    if absent and present:
        return Reading.UNCLEAR
    if absent:
        return Reading.ABSENT
    if present:
        return Reading.PRESENT
    # "None", "Nil": a bare negation answers the question "any antibodies?".
    if all(w in _NEGATIONS for w in words):
        return Reading.ABSENT
    return Reading.UNCLEAR
