"""The engine's entry point: lab results in, interpretations out, pure and deterministic."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from interpretation.antibodies import interpret_antibody
from interpretation.drug_levels import interpret_drug_level
from interpretation.findings import (
    NO_RULE,
    Analyte,
    AntibodyFinding,
    AntibodyInterpretation,
    DrugLevelFinding,
    DrugLevelInterpretation,
    Interpretation,
    Pattern,
    Titre,
)
from interpretation.lab_result import LabResult, TreatmentContext
from interpretation.recognition import Recognised, recognise
from interpretation.ruleset import RuleSet
from interpretation.treatment import resolve_context

_NO_OVERRIDE = TreatmentContext()


def interpret(
    result: LabResult,
    ruleset: RuleSet,
    override: TreatmentContext = _NO_OVERRIDE,
    record: TreatmentContext | None = None,
) -> Interpretation | None:
    """Interpret one result, or return None when it is not about infliximab.

    Each context field comes from `override` (an operator's explicit choice, such as
    `interpret --phase induction`), else the message, else the patient's treatment `record`,
    else the rule set's defaults; the interpretation says which (`context_source`).
    """
    recognised = recognise(result.code, result.display, ruleset.recognition, result.unit)
    if recognised is None:
        return None
    context, sources = resolve_context(ruleset.defaults, record, result.context, override)
    found = _interpret(result, ruleset, recognised, context)
    return found.model_copy(update={"context_source": sources})


def recognised(results: Iterable[LabResult], ruleset: RuleSet) -> list[LabResult]:
    """The results `interpret` would read: the ones recognisably about infliximab.

    For a stage that forwards results to be interpreted later, with the patient's state.
    """
    return [r for r in results if recognise(r.code, r.display, ruleset.recognition, r.unit) is not None]


def report_order(interpretations: Iterable[Interpretation]) -> list[Interpretation]:
    """A report's results as the patient's state takes them: its antibody results before its
    levels, so a level's forecast is decided with the whole report known (antibodies detected in
    the same report withhold it; issue 37). Otherwise as reported."""
    return sorted(interpretations, key=lambda i: i.analyte is Analyte.INFLIXIMAB)


def levels_last(results: Iterable[LabResult], ruleset: RuleSet) -> list[LabResult]:
    """`report_order` for results not yet interpreted (the stage that forwards them)."""

    def is_level(r: LabResult) -> bool:
        seen = recognise(r.code, r.display, ruleset.recognition, r.unit)
        return seen is not None and seen.analyte is Analyte.INFLIXIMAB

    return sorted(results, key=is_level)


def _interpret(
    result: LabResult, ruleset: RuleSet, recognised: Recognised, context: TreatmentContext
) -> Interpretation:
    if recognised.conflict is not None:
        kind = DrugLevelInterpretation if recognised.analyte is Analyte.INFLIXIMAB else AntibodyInterpretation
        return kind.model_validate(
            {
                "result": result,
                "context": context,
                "finding": "uninterpretable",
                "alert": False,
                "reason": f"not read: {recognised.conflict}",
                "rule_id": NO_RULE,
                "ruleset_version": ruleset.version,
            }
        )
    if recognised.analyte is Analyte.INFLIXIMAB:
        return interpret_drug_level(result, context, ruleset)
    return interpret_antibody(result, context, ruleset)


def interpret_all(
    results: Iterable[LabResult], ruleset: RuleSet, override: TreatmentContext = _NO_OVERRIDE
) -> list[Interpretation]:
    """Interpret the results of one message and pair levels with antibodies from the same specimen."""
    found = [i for r in results if (i := interpret(r, ruleset, override)) is not None]
    return pair(found, ruleset) if len(found) > 1 else found


def _specimen_key(result: LabResult) -> tuple[str, str | None]:
    return result.patient_id, result.specimen_id or result.accession


def pattern_of(
    level: DrugLevelFinding, antibodies: AntibodyFinding, titre: Titre | None = None
) -> Pattern | None:
    """The combined reading of a trough and an antibody result; None if either is undecided."""
    if level is DrugLevelFinding.UNINTERPRETABLE or antibodies is AntibodyFinding.UNINTERPRETABLE:
        return None
    low = level is DrugLevelFinding.SUBTHERAPEUTIC
    detected = antibodies is AntibodyFinding.ANTIBODIES_DETECTED
    if low:
        if not detected:
            return Pattern.NON_IMMUNE_LOW_LEVEL
        # Ungraded antibodies (no cited high titre) with a low level are read as the failure.
        low_titre = titre is Titre.LOW
        return Pattern.LOW_LEVEL_WITH_LOW_TITRE_ANTIBODIES if low_titre else Pattern.IMMUNOGENIC_FAILURE
    return Pattern.ANTIBODIES_WITH_ADEQUATE_LEVEL if detected else Pattern.ADEQUATE_WITHOUT_ANTIBODIES


def pair(interpretations: Sequence[Interpretation], ruleset: RuleSet) -> list[Interpretation]:
    """Add a `pattern` (and its recommendation) to a level and an antibody result on one specimen.

    Only an unambiguous pair is read together: one level and one antibody result per specimen.
    """
    groups: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for index, item in enumerate(interpretations):
        groups[_specimen_key(item.result)].append(index)
    paired = list(interpretations)
    for indexes in groups.values():
        levels = [(i, x) for i in indexes if isinstance(x := paired[i], DrugLevelInterpretation)]
        antibodies = [(i, x) for i in indexes if isinstance(x := paired[i], AntibodyInterpretation)]
        if len(levels) != 1 or len(antibodies) != 1:
            continue
        (level_at, level), (antibody_at, antibody) = levels[0], antibodies[0]
        pattern = pattern_of(level.finding, antibody.finding, antibody.titre)
        if pattern is None:
            continue
        advice = ruleset.advice(pattern.value)
        for i in (level_at, antibody_at):
            update: dict[str, object] = {"pattern": pattern}
            if advice is not None:
                update["recommendation"] = advice.text
                update["citations"] = tuple(
                    dict.fromkeys((*paired[i].citations, *(ruleset.citation(c) for c in advice.citations)))
                )
            paired[i] = paired[i].model_copy(update=update)
    return paired
