"""Anti-infliximab antibody (ATI) results: detected or not, and which evidence decided it.

Assays report in units that do not convert into one another (U/mL, ng/mL, AU/mL), so the
engine never compares across assays. It consults, in order: the rule set's cut-off for this
assay, the reference range the lab printed, the lab's abnormal flag, then qualitative text.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import NamedTuple

from interpretation.findings import NO_RULE, AntibodyFinding, AntibodyInterpretation, DecidedBy
from interpretation.lab_result import LabResult, TreatmentContext
from interpretation.quantities import Quantity, UnreadableValue, parse_quantity
from interpretation.ruleset import RuleSet

Verdict = AntibodyFinding | None  # None: this evidence does not settle it

# HL7 v2 table 0078 abnormal flags that speak to antibody presence.
_POSITIVE_FLAGS = frozenset({"H", "HH", "A", "AA", "POS", "+"})
_NEGATIVE_FLAGS = frozenset({"N", "NEG", "-"})
_NEGATIVE_TEXT = (
    "not detected",
    "none detected",
    "undetectable",
    "negative",
    "neg",
    "absent",
    "non reactive",
    "nonreactive",
    "not present",
)
_POSITIVE_TEXT = ("positive", "pos", "detected", "present", "reactive")
_RANGE_BELOW = re.compile(r"^\s*(<=|<)\s*([0-9]*\.?[0-9]+)")
_RANGE_SPAN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*-\s*([0-9]*\.?[0-9]+)")


def _against_cutoff(level: Quantity, cutoff: Decimal) -> Verdict:
    if level.all_at_least(cutoff):
        return AntibodyFinding.ANTIBODIES_DETECTED
    if level.all_below(cutoff):
        return AntibodyFinding.ANTIBODIES_NOT_DETECTED
    return None


def _against_reference_range(level: Quantity, reference_range: str) -> Verdict:
    """A normal range like "<50" (positive from 50) or "0-49" / "<=49" (positive above 49)."""
    if match := _RANGE_BELOW.match(reference_range):
        sign, number = match.groups()
        limit = Decimal(number)
        if sign == "<":
            return _against_cutoff(level, limit)
    elif match := _RANGE_SPAN.match(reference_range):
        limit = Decimal(match.group(2))
    else:
        return None
    if level.all_above(limit):
        return AntibodyFinding.ANTIBODIES_DETECTED
    if level.all_at_most(limit):
        return AntibodyFinding.ANTIBODIES_NOT_DETECTED
    return None


def _from_flags(flags: tuple[str, ...]) -> Verdict:
    normalised = {f.strip().upper() for f in flags if f.strip()}
    if normalised & _POSITIVE_FLAGS:
        return AntibodyFinding.ANTIBODIES_DETECTED
    if normalised & _NEGATIVE_FLAGS:
        return AntibodyFinding.ANTIBODIES_NOT_DETECTED
    return None


def _from_text(text: str) -> Verdict:
    words = " ".join(re.findall(r"[a-z]+", text.lower()))
    if words.startswith(_NEGATIVE_TEXT):
        return AntibodyFinding.ANTIBODIES_NOT_DETECTED
    if words.startswith(_POSITIVE_TEXT):
        return AntibodyFinding.ANTIBODIES_DETECTED
    return None


class _Decision(NamedTuple):
    """The evidence that settled positivity, and the rule it came from."""

    finding: AntibodyFinding
    decided_by: DecidedBy
    rule_id: str
    citation: str | None


def _decide(result: LabResult, level: Quantity | None, ruleset: RuleSet) -> _Decision | str:
    """Walk the evidence in the documented order; a string is the reason nothing decided."""
    if result.status.is_withdrawn:
        return f"result is {result.status.value}"
    if level is not None and level.value < 0:
        return "negative antibody value"
    if level is not None:
        assay = next((a for a in ruleset.antibody_assays if a.applies_to(result.code, result.unit)), None)
        if assay is not None and (verdict := _against_cutoff(level, assay.positive_at_or_above)):
            return _Decision(verdict, DecidedBy.ASSAY_CUTOFF, assay.id, assay.citation)
        if result.reference_range and (verdict := _against_reference_range(level, result.reference_range)):
            return _Decision(verdict, DecidedBy.REFERENCE_RANGE, "ati-reference-range", None)
    if verdict := _from_flags(result.abnormal_flags):
        return _Decision(verdict, DecidedBy.ABNORMAL_FLAG, "ati-abnormal-flag", None)
    if level is None and result.value and (verdict := _from_text(result.value)):
        return _Decision(verdict, DecidedBy.QUALITATIVE_TEXT, "ati-qualitative-text", None)
    return f"no cut-off, reference range, flag or text settles value {result.value!r}"


def interpret_antibody(
    result: LabResult, context: TreatmentContext, ruleset: RuleSet
) -> AntibodyInterpretation:
    """Decide antibody presence from the best evidence the report carries."""
    level: Quantity | None = None
    if result.value:
        try:
            level = parse_quantity(result.value)
        except UnreadableValue:
            level = None
    common = {
        "result": result,
        "context": context,
        "ruleset_version": ruleset.version,
        "value": level.value if level else None,
        "comparator": level.comparator if level else None,
        "unit": result.unit or None,
    }
    decision = _decide(result, level, ruleset)
    if isinstance(decision, str):
        return AntibodyInterpretation.model_validate(
            {
                **common,
                "finding": AntibodyFinding.UNINTERPRETABLE,
                "alert": False,
                "reason": decision,
                "rule_id": NO_RULE,
            }
        )
    recommendation = ruleset.advice(decision.finding.value)
    citation_ids = [c for c in (decision.citation,) if c] + list(
        recommendation.citations if recommendation else ()
    )
    return AntibodyInterpretation.model_validate(
        {
            **common,
            "finding": decision.finding,
            "decided_by": decision.decided_by,
            "alert": decision.finding is AntibodyFinding.ANTIBODIES_DETECTED and result.status.may_page,
            "reason": f"{decision.finding.value}, decided by {decision.decided_by.value.replace('_', ' ')}",
            "rule_id": decision.rule_id,
            "ruleset_version": ruleset.version,
            "recommendation": recommendation.text if recommendation else None,
            "citations": tuple(ruleset.citation(c) for c in dict.fromkeys(citation_ids)),
        }
    )
