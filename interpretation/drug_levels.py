"""Infliximab trough levels read against the rule set's target for the treatment context."""

from __future__ import annotations

from interpretation.findings import NO_RULE, DrugLevelFinding, DrugLevelInterpretation
from interpretation.lab_result import LabResult, TreatmentContext
from interpretation.quantities import (
    DRUG_LEVEL_UNIT,
    Quantity,
    UnknownUnit,
    UnreadableValue,
    parse_quantity,
    to_ug_per_ml,
)
from interpretation.ruleset import DrugLevelTarget, RuleSet


def classify(level: Quantity, target: DrugLevelTarget) -> DrugLevelFinding:
    """Place a level (possibly censored) against a target; bounds are inclusive."""
    if target.low is not None and level.all_below(target.low):
        return DrugLevelFinding.SUBTHERAPEUTIC
    if target.high is not None and level.all_above(target.high):
        return DrugLevelFinding.SUPRATHERAPEUTIC
    if (target.low is None or level.all_at_least(target.low)) and (
        target.high is None or level.all_at_most(target.high)
    ):
        return DrugLevelFinding.THERAPEUTIC
    return DrugLevelFinding.UNINTERPRETABLE


def _uninterpretable(
    result: LabResult, context: TreatmentContext, ruleset: RuleSet, reason: str, **known: object
) -> DrugLevelInterpretation:
    return DrugLevelInterpretation.model_validate(
        {
            "result": result,
            "context": context,
            "finding": DrugLevelFinding.UNINTERPRETABLE,
            "alert": False,
            "reason": reason,
            "rule_id": NO_RULE,
            "ruleset_version": ruleset.version,
            **known,
        }
    )


def interpret_drug_level(
    result: LabResult, context: TreatmentContext, ruleset: RuleSet
) -> DrugLevelInterpretation:
    """Read one infliximab level; anything that cannot be read safely is `uninterpretable`."""
    if result.status.is_withdrawn:
        return _uninterpretable(result, context, ruleset, f"result is {result.status.value}")
    if not result.value:
        return _uninterpretable(result, context, ruleset, "no value reported")
    try:
        reported = parse_quantity(result.value)
    except UnreadableValue as err:
        return _uninterpretable(result, context, ruleset, str(err))
    if not result.unit:
        return _uninterpretable(
            result, context, ruleset, "no unit reported; a level is never guessed without one"
        )
    try:
        level = to_ug_per_ml(reported, result.unit)
    except UnknownUnit as err:
        return _uninterpretable(result, context, ruleset, str(err))
    known = {"value": level.value, "comparator": level.comparator, "unit": DRUG_LEVEL_UNIT}
    if level.value < 0:
        return _uninterpretable(result, context, ruleset, "negative level", **known)
    ceiling = ruleset.plausibility.max_drug_level_ug_per_ml
    if level.value > ceiling:
        reason = f"level {level.value} {DRUG_LEVEL_UNIT} is above the plausible maximum {ceiling}"
        return _uninterpretable(result, context, ruleset, reason, **known)

    target = ruleset.target_for(context)
    if target is None:
        known_context = context.describe_set_fields() or "unknown"
        reason = f"no target in rule set {ruleset.version} for context ({known_context})"
        return _uninterpretable(result, context, ruleset, reason, **known)
    finding = classify(level, target)
    if finding is DrugLevelFinding.UNINTERPRETABLE:
        reason = (
            f"censored level {level.comparator}{level.value} {DRUG_LEVEL_UNIT} could lie on "
            f"either side of the target {target.describe_range()}"
        )
        return _uninterpretable(result, context, ruleset, reason, target=target, **known)

    recommendation = ruleset.advice(finding.value)
    return DrugLevelInterpretation(
        result=result,
        context=context,
        finding=finding,
        alert=finding is DrugLevelFinding.SUBTHERAPEUTIC and result.status.may_page,
        reason=f"{finding.value}: target {target.describe_range()} ({target.description})",
        value=level.value,
        comparator=level.comparator,
        unit=DRUG_LEVEL_UNIT,
        target=target,
        rule_id=target.id,
        ruleset_version=ruleset.version,
        recommendation=recommendation.text if recommendation else None,
        citations=tuple(
            ruleset.citation(c)
            for c in dict.fromkeys((target.citation, *(recommendation.citations if recommendation else ())))
        ),
    )
