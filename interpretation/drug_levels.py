"""Infliximab trough levels read against the rule set's target for the treatment context."""

from __future__ import annotations

from interpretation.findings import NO_RULE, DrugLevelFinding, DrugLevelInterpretation
from interpretation.lab_result import LabResult, Phase, TreatmentContext
from interpretation.numbers import read_value
from interpretation.qualitative import Reading, read_text
from interpretation.quantities import (
    DRUG_LEVEL_UNIT,
    Comparator,
    Quantity,
    UnknownUnit,
    UnreadableValue,
    to_ug_per_ml,
    unit_key,
)
from interpretation.ruleset import DrugLevelTarget, RuleSet


def classify(level: Quantity, target: DrugLevelTarget, *, with_ceiling: bool = True) -> DrugLevelFinding:
    """Place a level (possibly censored) against a target; bounds are inclusive.

    Without the ceiling the target is a floor: anything at or above `low` is on target.
    """
    high = target.high if with_ceiling else None
    if target.low is not None and level.all_below(target.low):
        return DrugLevelFinding.SUBTHERAPEUTIC
    if high is not None and level.all_above(high):
        return DrugLevelFinding.ABOVE_TARGET
    if (target.low is None or level.all_at_least(target.low)) and (high is None or level.all_at_most(high)):
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


def _read_levels(result: LabResult, ruleset: RuleSet) -> list[tuple[Quantity, str | None]] | str:
    """Each reading of the level in ug/mL with how it was read, or (a string) why none can be."""
    if not result.value:
        return "no value reported"
    try:
        readings = read_value(result.value, ruleset.number_style_for(result.performing_lab))
    except UnreadableValue as err:
        # "Undetectable", "<LOQ": censored below the assay's limit of quantitation, unit or not.
        reading = read_text(result.value)
        if reading is Reading.ABSENT:
            loq = ruleset.assay_limits.limit_of_quantitation_ug_per_ml
            return [(Quantity(value=loq, comparator=Comparator.LT), None)]
        if reading is Reading.NO_RESULT:
            return "the lab reports no valid result"
        return str(err)
    levels: list[tuple[Quantity, str | None]] = []
    for found in readings:
        unit = result.unit
        if found.unit is not None:
            if unit and unit_key(unit) != unit_key(found.unit):
                return "the value's text names another unit than the result's unit field"
            unit = found.unit
        if not unit:
            return "no unit reported; a level is never guessed without one"
        try:
            levels.append((to_ug_per_ml(found.quantity, unit), found.how))
        except UnknownUnit as err:
            return str(err)
    return levels


def interpret_drug_level(
    result: LabResult, context: TreatmentContext, ruleset: RuleSet
) -> DrugLevelInterpretation:
    """Read one infliximab level; anything that cannot be read safely is `uninterpretable`.

    A value with more than one reading ("1,234": a thousands comma or a decimal comma) is decided
    only when every plausible reading gives the same finding; `reason` says how it was read.
    """
    if result.status.is_withdrawn:
        return _uninterpretable(result, context, ruleset, f"result is {result.status.value}")
    levels = _read_levels(result, ruleset)
    if isinstance(levels, str):
        return _uninterpretable(result, context, ruleset, levels)
    ceiling = ruleset.plausibility.max_drug_level_ug_per_ml
    plausible = [(level, how) for level, how in levels if 0 <= level.value <= ceiling] or levels[:1]
    readings = [_with_how(_interpret_level(result, context, ruleset, level), how) for level, how in plausible]
    first = readings[0]
    if len(readings) == 1:
        if len(levels) > 1:
            other = ", ".join(f"{level.value}" for level, _ in levels if (level, _) not in plausible)
            return first.model_copy(
                update={"reason": f"{first.reason}; the other reading ({other}) is implausible"}
            )
        return first
    if all((r.finding, r.alert) == (first.finding, first.alert) for r in readings):
        shown = " or ".join(f"{r.value} {DRUG_LEVEL_UNIT}" for r in readings)
        return first.model_copy(
            update={
                "reason": f"{first.finding.value} whichever way the value is read ({shown}): {first.reason}"
            }
        )
    shown = "; ".join(
        f"{r.value} {DRUG_LEVEL_UNIT} ({h}): {r.finding.value}"
        for r, (_, h) in zip(readings, plausible, strict=True)
    )
    return _uninterpretable(
        result,
        context,
        ruleset,
        f"the value reads more than one way and the readings disagree ({shown}); set the performing "
        "lab's number style in the rule set (number_styles)",
    )


def _with_how(found: DrugLevelInterpretation, how: str | None) -> DrugLevelInterpretation:
    return (
        found
        if how is None
        else found.model_copy(update={"reason": f"{found.reason}; value read with {how}"})
    )


def _interpret_level(
    result: LabResult, context: TreatmentContext, ruleset: RuleSet, level: Quantity
) -> DrugLevelInterpretation:
    """One reading of the level against the target for the context."""
    known = {"value": level.value, "comparator": level.comparator, "unit": DRUG_LEVEL_UNIT}
    if level.value < 0:
        return _uninterpretable(result, context, ruleset, "negative level", **known)
    ceiling = ruleset.plausibility.max_drug_level_ug_per_ml
    if level.value > ceiling:
        reason = f"level {level.value} {DRUG_LEVEL_UNIT} is above the plausible maximum {ceiling}"
        return _uninterpretable(result, context, ruleset, reason, **known)

    target = ruleset.target_for(context)
    if target is None:
        return _without_target(result, context, ruleset, level)
    # A goal's threshold is a floor; a range borrowed from another context must not call a
    # level above it off target.
    with_ceiling = context.goal is None or target.when.goal is not None
    finding = classify(level, target, with_ceiling=with_ceiling)
    shown_range = target.describe_range() if with_ceiling else f">= {target.low} {target.unit}"
    if finding is DrugLevelFinding.UNINTERPRETABLE:
        reason = (
            f"censored level {level.comparator}{level.value} {DRUG_LEVEL_UNIT} could lie on "
            f"either side of the target {shown_range}"
        )
        return _uninterpretable(result, context, ruleset, reason, target=target, **known)
    early = _early_sample(context, ruleset)
    if early is not None and finding is not DrugLevelFinding.SUBTHERAPEUTIC:
        return _uninterpretable(
            result, context, ruleset, f"not a trough sample: {early}", target=target, **known
        )
    advice_key = finding.value
    if finding is DrugLevelFinding.ABOVE_TARGET and target.advice_above is not None:
        advice_key = target.advice_above
    reason = f"{finding.value}: target {shown_range} ({target.description})"
    if not with_ceiling and target.high is not None:
        reason += f"; goal {context.goal} sets a floor, so the {target.high} upper bound is not applied"
    if early is not None:
        reason += f"; {early}, and a level this low before the trough will be lower at it"
    return _decided(
        result, context, ruleset, level, target=target, finding=finding, reason=reason, advice_key=advice_key
    )


def _early_sample(context: TreatmentContext, ruleset: RuleSet) -> str | None:
    """Why a maintenance sample is too early in the dosing interval to be a trough, if it is."""
    timing = ruleset.trough_timing
    if timing is None or context.days_since_last_dose is None or context.phase is not Phase.MAINTENANCE:
        return None
    interval = context.dosing_interval_days or (
        timing.default_interval_days.get(context.route) if context.route else None
    )
    if interval is None or context.days_since_last_dose >= timing.earliest_fraction_of_interval * interval:
        return None
    return (
        f"drawn {context.days_since_last_dose} days after the last dose of a {interval}-day interval, "
        f"before {timing.earliest_fraction_of_interval:.0%} of it had passed"
    )


def _without_target(
    result: LabResult, context: TreatmentContext, ruleset: RuleSet, level: Quantity
) -> DrugLevelInterpretation:
    """No published target fits this context; a level below every one that could fit is still low."""
    known = {"value": level.value, "comparator": level.comparator, "unit": DRUG_LEVEL_UNIT}
    known_context = context.describe_set_fields() or "unknown"
    floor = ruleset.lowest_target_that_could_apply(context)
    loq = ruleset.assay_limits.limit_of_quantitation_ug_per_ml
    if floor is not None and floor.low is not None and level.all_below(floor.low):
        reason = (
            f"subtherapeutic: no target in rule set {ruleset.version} for context ({known_context}), "
            f"but the level is below {floor.low} {DRUG_LEVEL_UNIT}, the lowest target that could apply "
            f"({floor.description})"
        )
        return _decided(
            result,
            context,
            ruleset,
            level,
            target=floor,
            finding=DrugLevelFinding.SUBTHERAPEUTIC,
            reason=reason,
        )
    if level.all_below(loq):
        reason = f"subtherapeutic: below the assay's limit of quantitation ({loq} {DRUG_LEVEL_UNIT})"
        return _decided(
            result,
            context,
            ruleset,
            level,
            target=None,
            finding=DrugLevelFinding.SUBTHERAPEUTIC,
            reason=reason,
        )
    reason = f"no target in rule set {ruleset.version} for context ({known_context})"
    return _uninterpretable(result, context, ruleset, reason, **known)


def _decided(
    result: LabResult,
    context: TreatmentContext,
    ruleset: RuleSet,
    level: Quantity,
    *,
    target: DrugLevelTarget | None,
    finding: DrugLevelFinding,
    reason: str,
    advice_key: str | None = None,
) -> DrugLevelInterpretation:
    recommendation = ruleset.advice(advice_key or finding.value)
    cited = (
        *((target.citation,) if target else (ruleset.assay_limits.citation,)),
        *(recommendation.citations if recommendation else ()),
    )
    return DrugLevelInterpretation(
        result=result,
        context=context,
        finding=finding,
        alert=finding is DrugLevelFinding.SUBTHERAPEUTIC and result.status.may_page,
        reason=reason,
        value=level.value,
        comparator=level.comparator,
        unit=DRUG_LEVEL_UNIT,
        target=target,
        rule_id=target.id if target else "ifx-below-limit-of-quantitation",
        ruleset_version=ruleset.version,
        recommendation=recommendation.text if recommendation else None,
        citations=tuple(ruleset.citation(c) for c in dict.fromkeys(cited)),
    )
