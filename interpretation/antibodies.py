"""Anti-infliximab antibody (ATI) results: detected or not, and which evidence decided it.

Assays report in units that do not convert into one another (U/mL, ng/mL, AU/mL), so the
engine never compares across assays. Evidence, in rank order: the configured cut-off of an
assay the rule set names by performing lab, code and unit; the reporting lab's own reference
interval; the lab's abnormal flag; a configured cut-off by code and unit alone; the lab's
words. Every piece present is read. When they disagree the result is read as detected and the
reason says so: a silent "not detected" against the lab's own positive flag is the dangerous
error, a second look at a false "detected" is not.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import NamedTuple

from interpretation.findings import NO_RULE, AntibodyFinding, AntibodyInterpretation, DecidedBy, Titre
from interpretation.lab_result import LabResult, TreatmentContext
from interpretation.numbers import ValueReading, read_value
from interpretation.qualitative import Reading, read_text
from interpretation.quantities import Comparator, Quantity, UnreadableValue, unit_key
from interpretation.ruleset import AntibodyAssay, RuleSet

Verdict = AntibodyFinding | None  # None: this evidence does not settle it

# HL7 v2 table 0078 abnormal flags that speak to antibody presence.
_POSITIVE_FLAGS = frozenset({"H", "HH", "A", "AA", "POS", "+"})
_NEGATIVE_FLAGS = frozenset({"N", "NEG", "-"})
_RANGE_BELOW = re.compile(r"^\s*(<=|<)\s*([0-9]*\.?[0-9]+)")
_RANGE_SPAN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*-\s*([0-9]*\.?[0-9]+)")
_FROM_TEXT = {
    Reading.PRESENT: AntibodyFinding.ANTIBODIES_DETECTED,
    Reading.ABSENT: AntibodyFinding.ANTIBODIES_NOT_DETECTED,
}


def _against_cutoff(level: Quantity, cutoff: Decimal) -> Verdict:
    if level.all_at_least(cutoff):
        return AntibodyFinding.ANTIBODIES_DETECTED
    if level.all_below(cutoff):
        return AntibodyFinding.ANTIBODIES_NOT_DETECTED
    return None


# A titre is a dilution, 1:N; stronger antibodies stay detectable at a larger N, so titres are
# compared by N ("1:40" is above a "<1:10" normal range).
_TITRE = re.compile(r"(<=|>=|<|>)?\s*\^?\s*1\s*:\s*([0-9]+)(?![0-9])")
_RANGE_TITRE = re.compile(r"^\s*(<=|<)\s*1\s*:\s*([0-9]+)\s*$")
TITRE_UNIT = "titre (1:N)"  # how a titre's value (its N) is labelled in interpretations and alerts
# "Drug activity: not detected" speaks of the drug, not of the antibodies.
_DRUG_ACTIVITY = re.compile(r"\b(?:drug|infliximab|ifx)\s+activity\b", re.IGNORECASE)


def _titre(text: str) -> Quantity | None:
    """The titre (as its N) in a value or comment, if it gives one."""
    match = _TITRE.search(text)
    if match is None:
        return None
    sign, number = match.groups()
    return Quantity(value=Decimal(number), comparator=Comparator(sign) if sign else None)


def _against_reference_range(level: Quantity, reference_range: str, *, titre: bool) -> Verdict:
    """A normal range like "<50" (positive from 50) or "0-49" / "<=49" (positive above 49); for a
    titre, "<1:10" (positive from 1:10). A titre is never read against a range of units."""
    if titre != bool(_RANGE_TITRE.match(reference_range)):
        return None
    if match := _RANGE_TITRE.match(reference_range):
        sign, number = match.groups()
        limit = Decimal(number)
        if sign == "<":
            return _against_cutoff(level, limit)
        return (
            AntibodyFinding.ANTIBODIES_DETECTED
            if level.all_above(limit)
            else (AntibodyFinding.ANTIBODIES_NOT_DETECTED if level.all_at_most(limit) else None)
        )
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


class _Evidence(NamedTuple):
    """One piece of evidence that settled positivity, and the rule it came from."""

    finding: AntibodyFinding
    decided_by: DecidedBy
    rule_id: str
    citation: str | None


def _assays(
    result: LabResult, ruleset: RuleSet, unit: str | None
) -> tuple[AntibodyAssay | None, AntibodyAssay | None]:
    """The first configured assay for this result naming its performing lab, and the first not."""
    named = unnamed = None
    for assay in ruleset.antibody_assays:
        if assay.applies_to(result.code, unit, result.performing_lab):
            if assay.performing_lab is not None:
                named = named or assay
            else:
                unnamed = unnamed or assay
    return named, unnamed


def _titre_grade(
    result: LabResult, level: Quantity | None, ruleset: RuleSet, unit: str | None
) -> tuple[Titre, str, str] | None:
    """Detected antibodies graded against the high titre of the assay that reported them (the
    named one first), with the reason's words and the citation; None where no assay defines
    one or the value straddles it."""
    named, unnamed = _assays(result, ruleset, unit)
    assay = named or unnamed
    if level is None or assay is None or assay.high_titre_citation is None:
        return None
    high, cited = assay.high_titre_at_or_above, assay.high_titre_citation
    if high is None:
        return None
    if level.all_at_least(high):
        return Titre.HIGH, f"high titre (at or above {high} {assay.unit}, {assay.id})", cited
    if level.all_below(high):
        return (
            Titre.LOW,
            f"low titre (below the assay's high titre of {high} {assay.unit}, {assay.id})",
            cited,
        )
    return None


def _evidence(
    result: LabResult, level: Quantity | None, ruleset: RuleSet, unit: str | None
) -> list[_Evidence]:
    """Every piece of evidence the report carries that settles positivity, in rank order."""
    found: list[_Evidence] = []
    named, unnamed = _assays(result, ruleset, unit)
    if (
        level is not None
        and named is not None
        and (verdict := _against_cutoff(level, named.positive_at_or_above))
    ):
        found.append(_Evidence(verdict, DecidedBy.ASSAY_CUTOFF, named.id, named.citation))
    if (
        level is not None
        and result.reference_range
        and (verdict := _against_reference_range(level, result.reference_range, titre=unit == TITRE_UNIT))
    ):
        found.append(_Evidence(verdict, DecidedBy.REFERENCE_RANGE, "ati-reference-range", None))
    if verdict := _from_flags(result.abnormal_flags):
        found.append(_Evidence(verdict, DecidedBy.ABNORMAL_FLAG, "ati-abnormal-flag", None))
    if (
        level is not None
        and unnamed is not None
        and (verdict := _against_cutoff(level, unnamed.positive_at_or_above))
    ):
        found.append(_Evidence(verdict, DecidedBy.ASSAY_CUTOFF, unnamed.id, unnamed.citation))
    if (
        level is None
        and result.value
        and not _DRUG_ACTIVITY.search(result.value)
        and (verdict := _FROM_TEXT.get(read_text(result.value)))
    ):
        found.append(_Evidence(verdict, DecidedBy.QUALITATIVE_TEXT, "ati-qualitative-text", None))
    return found


_BY_THE_NUMBER = frozenset({DecidedBy.ASSAY_CUTOFF, DecidedBy.REFERENCE_RANGE})
_FLAGS_ONLY = frozenset({DecidedBy.ABNORMAL_FLAG})


def _described(decided_by: DecidedBy) -> str:
    return decided_by.value.replace("_", " ")


def _decide(
    result: LabResult, level: Quantity | None, ruleset: RuleSet, unit: str | None
) -> tuple[_Evidence, str] | str:
    """The deciding evidence and the reason, or (a string) why nothing decided."""
    if result.status.is_withdrawn:
        return f"result is {result.status.value}"
    if level is not None and level.value < 0:
        return "negative antibody value"
    if level is None and result.value and read_text(result.value) is Reading.NO_RESULT:
        return "the lab reports no valid result (for example interference or a request to recollect)"
    found = _evidence(result, level, ruleset, unit)
    if not found:
        return "no cut-off, reference range, flag or text settles the reported value"
    numbers = [e for e in found if e.decided_by in _BY_THE_NUMBER]
    detected = [e for e in found if e.finding is AntibodyFinding.ANTIBODIES_DETECTED]
    if numbers and all(e.finding is AntibodyFinding.ANTIBODIES_NOT_DETECTED for e in numbers):
        # The value under the assay's own cut-off (or the lab's range) settles it: a flag alone
        # that says otherwise is a stale one (issue 37), never read as detected.
        detected = [e for e in detected if e.decided_by not in _FLAGS_ONLY]
    chosen = detected[0] if detected else found[0]
    reason = f"{chosen.finding.value}, decided by {_described(chosen.decided_by)}"
    dissent = [e for e in found if e.finding is not chosen.finding]
    if dissent:
        said = ", ".join(_described(e.decided_by) for e in dissent)
        if chosen.finding is AntibodyFinding.ANTIBODIES_DETECTED:
            reason += f"; the evidence disagrees ({said}: not detected), so it is read as detected"
        else:
            reason += f"; the {said} says detected, but the value is below the cut-off"
    return chosen, reason


def interpret_antibody(
    result: LabResult, context: TreatmentContext, ruleset: RuleSet
) -> AntibodyInterpretation:
    """Decide antibody presence from the best evidence the report carries."""
    readings: tuple[ValueReading, ...] = ()
    if result.value:
        try:
            readings = read_value(result.value, ruleset.number_style_for(result.performing_lab))
        except UnreadableValue:
            readings = ()
    level = readings[0].quantity if readings else None
    unit = result.unit or (readings[0].unit if readings else None)
    if level is None and result.value:
        # A titre ("1:40"), in the value or, when the value speaks of drug activity, in a comment
        # ("neutralising antibody titre 1:40"): read against the lab's titre cut-off.
        lines = (result.value, *(result.comments if _DRUG_ACTIVITY.search(result.value) else ()))
        level = next((t for line in lines if (t := _titre(line)) is not None), None)
        unit = TITRE_UNIT if level is not None else unit
    if readings and readings[0].unit and result.unit and unit_key(readings[0].unit) != unit_key(result.unit):
        level, unit = None, None  # two units for one value: neither is trusted
    common = {
        "result": result,
        "context": context,
        "ruleset_version": ruleset.version,
        "value": level.value if level else None,
        "comparator": level.comparator if level else None,
        "unit": TITRE_UNIT if unit == TITRE_UNIT else ruleset.recognition.known_unit(unit),
    }
    decision = _decide(result, level, ruleset, unit)
    if len(readings) > 1 and level is not None:
        # "1,234": decided only when every reading gives the same answer.
        others = [_decide(result, r.quantity, ruleset, unit) for r in readings[1:]]
        if any(
            isinstance(d, str) or isinstance(decision, str) or d[0].finding is not decision[0].finding
            for d in others
        ):
            shown = " or ".join(str(r.quantity.value) for r in readings)
            decision = (
                f"the value reads as {shown} and the readings disagree; set the performing lab's "
                "number style in the rule set (number_styles)"
            )
    if not isinstance(decision, str) and readings and readings[0].how:
        decision = (decision[0], f"{decision[1]}; value read with {readings[0].how}")
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
    evidence, reason = decision
    recommendation = ruleset.advice(evidence.finding.value)
    citation_ids = [c for c in (evidence.citation,) if c] + list(
        recommendation.citations if recommendation else ()
    )
    titre = None
    if evidence.finding is AntibodyFinding.ANTIBODIES_DETECTED and (
        graded := _titre_grade(result, level, ruleset, unit)
    ):
        titre, said, cited = graded
        reason = f"{reason}; {said}"
        citation_ids.append(cited)
    return AntibodyInterpretation.model_validate(
        {
            **common,
            "finding": evidence.finding,
            "decided_by": evidence.decided_by,
            "titre": titre,
            "alert": evidence.finding is AntibodyFinding.ANTIBODIES_DETECTED and result.status.may_page,
            "reason": reason,
            "rule_id": evidence.rule_id,
            "ruleset_version": ruleset.version,
            "recommendation": recommendation.text if recommendation else None,
            "citations": tuple(ruleset.citation(c) for c in dict.fromkeys(citation_ids)),
        }
    )
