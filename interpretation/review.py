"""Why a result needs a person: the reasons a final infliximab or antibody result is not read.

A review incident carries one of these codes, so operations can count reviews by reason (a lab
that changes its number format shows as a rise in `not_a_number`), without free text in a
metric label.
"""

from __future__ import annotations

from enum import StrEnum

from interpretation.findings import Interpretation


class ReviewReason(StrEnum):
    NO_VALUE = "no_value"
    NO_VALID_RESULT = "no_valid_result"  # indeterminate, QNS, interference
    NOT_A_NUMBER = "not_a_number"
    AMBIGUOUS_NUMBER = "ambiguous_number"  # "1,234" whose readings disagree
    UNIT = "unit"  # missing, unknown, or two that disagree
    IMPLAUSIBLE = "implausible"  # negative, or beyond the plausible maximum
    NO_TARGET = "no_target"
    CENSORED_NEAR_TARGET = "censored_near_target"  # "<5" against a floor of 3
    NOT_A_TROUGH = "not_a_trough"
    CONFLICTING_RECOGNITION = "conflicting_recognition"  # code, name and unit disagree
    NO_CUTOFF = "no_cutoff"  # an antibody value nothing settles
    # Read as a new patient: correlating with the patient's history failed (issue 37).
    HISTORY_NOT_APPLIED = "history_not_applied"
    OTHER = "other"


# The engine's reasons begin with these words (drug_levels.py, antibodies.py, engine.py).
_BY_OPENING: tuple[tuple[str, ReviewReason], ...] = (
    ("no value reported", ReviewReason.NO_VALUE),
    ("the lab reports no valid result", ReviewReason.NO_VALID_RESULT),
    ("the value is not a number", ReviewReason.NOT_A_NUMBER),
    ("the value reads", ReviewReason.AMBIGUOUS_NUMBER),
    ("no unit reported", ReviewReason.UNIT),
    ("the unit is not", ReviewReason.UNIT),
    ("the value's text names another unit", ReviewReason.UNIT),
    ("negative", ReviewReason.IMPLAUSIBLE),
    ("level ", ReviewReason.IMPLAUSIBLE),  # "level 900 ug/mL is above the plausible maximum"
    ("no target", ReviewReason.NO_TARGET),
    ("censored level", ReviewReason.CENSORED_NEAR_TARGET),
    ("not a trough sample", ReviewReason.NOT_A_TROUGH),
    ("not read:", ReviewReason.CONFLICTING_RECOGNITION),
    ("no cut-off", ReviewReason.NO_CUTOFF),
)


def review_reason(interpretation: Interpretation) -> ReviewReason:
    """The code for why this interpretation could not decide."""
    said = interpretation.reason.lower()
    return next((code for opening, code in _BY_OPENING if said.startswith(opening)), ReviewReason.OTHER)
