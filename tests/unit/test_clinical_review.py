"""The failure classes a clinical pharmacist found (issue 13), each tested from the clinical reasoning.

Every expectation here is what a TDM pharmacist would conclude from the cited guidance, not
an output copied from the engine.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest

from consumer.pipeline import Pipeline
from interpretation import (
    Analyte,
    AntibodyFinding,
    DecidedBy,
    DrugLevelFinding,
    LabResult,
    SourceRef,
    alert_for,
    interpret,
)
from interpretation.qualitative import Reading, read_text
from interpretation.ruleset import PACKAGED_RULESETS, packaged_ruleset, parse_ruleset
from tests.unit.helpers import RULES, ati, level, read

SUB, OK, ABOVE, UNINT = (
    DrugLevelFinding.SUBTHERAPEUTIC,
    DrugLevelFinding.THERAPEUTIC,
    DrugLevelFinding.ABOVE_TARGET,
    DrugLevelFinding.UNINTERPRETABLE,
)
POS, NEG, ATI_UNINT = (
    AntibodyFinding.ANTIBODIES_DETECTED,
    AntibodyFinding.ANTIBODIES_NOT_DETECTED,
    AntibodyFinding.UNINTERPRETABLE,
)


def local(
    display: str, value: str | None, unit: str | None, code: str = "LOCAL-1", **fields: object
) -> LabResult:
    return LabResult(patient_id="PT-1", code=code, display=display, value=value, unit=unit, **fields)  # type: ignore[arg-type]


# -- 4. Recognition that cannot be fooled by a name -------------------------------------------


@pytest.mark.parametrize(
    "display",
    [
        "Infliximab QN with Reflex to Ab, S",
        "Infliximab Quantitation with Reflex to Antibodies, Serum",
        "INFLIXIMAB LVL W/ REFLEX ATI",
        "Infliximab level, reflexive anti-infliximab antibody",
    ],
)
def test_a_level_orderable_that_reflexes_to_antibodies_is_read_as_a_level(display):
    # The words after "reflex" name a test the lab may add later, not this result: a low
    # level must still page.
    got = interpret(local(display, "1.8", "ug/mL"), RULES)
    assert got is not None
    assert got.analyte is Analyte.INFLIXIMAB
    assert got.finding is SUB and got.alert


def test_a_panel_name_is_decided_by_the_unit():
    name = "Infliximab and Anti-Infliximab Antibody Panel"
    as_level = interpret(local(name, "2.0", "ug/mL"), RULES)
    as_antibody = interpret(local(name, "80", "U/mL"), RULES)
    assert as_level is not None and as_level.analyte is Analyte.INFLIXIMAB
    assert as_antibody is not None and as_antibody.analyte is Analyte.ANTI_INFLIXIMAB_ANTIBODY


def test_a_panel_name_with_nothing_else_to_go_on_is_not_silently_one_analyte():
    assert interpret(local("Infliximab and antibodies", "12", None), RULES) is None


@pytest.mark.parametrize(
    ("code", "display", "unit", "disagreeing"),
    [
        ("39803-2", None, "U/mL", "unit"),  # a level code reported in antibody units
        ("INXAB", None, "ug/mL", "unit"),  # an antibody code reported as a mass concentration
        ("INXAB", "Infliximab trough level", "U/mL", "display name"),
        ("39803-2", "Anti-infliximab antibodies", None, "display name"),
        ("LOCAL-9", "Antibodies to infliximab", "mg/L", "unit"),
    ],
)
def test_code_name_and_unit_that_disagree_make_the_result_uninterpretable(code, display, unit, disagreeing):
    got = interpret(local(display or "", "1.0", unit, code=code), RULES)
    assert got is not None
    assert got.finding.value == "uninterpretable"
    assert not got.alert
    assert f"the {disagreeing} says" in got.reason


@pytest.mark.parametrize(
    "brand",
    [
        "Remicade",
        "Inflectra",
        "Remsima",
        "Zymfentra",
        "Renflexis",
        "Flixabi",
        "Avsola",
        "Ixifi",
        "Zessly",
        "Flammegis",
        "infliximab-dyyb",
        "CT-P13",
    ],
)
def test_every_current_brand_and_biosimilar_is_recognised(brand):
    got = interpret(local(f"{brand} trough", "1.5", "ug/mL"), RULES)
    assert got is not None and got.analyte is Analyte.INFLIXIMAB and got.alert


@pytest.mark.parametrize(
    "display",
    ["Adalimumab level with reflex to antibodies", "Vedolizumab and antibodies", "Ustekinumab trough"],
)
def test_other_biologics_stay_unrecognised(display):
    assert interpret(local(display, "1.0", "ug/mL"), RULES) is None


def _canonical(results: list[dict[str, object]]) -> bytes:
    return json.dumps({"patient_id": "PT-9", "results": results}).encode()


def test_a_message_naming_infliximab_with_an_unknown_code_is_a_counted_recognition_gap():
    pipeline = Pipeline(RULES, 1 << 20)
    # A lab introduced a new local trough code and a name that does not say infliximab; only
    # its note does. Nothing can be interpreted, and that must not pass unnoticed.
    unknown = _canonical(
        [{"code": "IFXTRNEW", "display": "Trough level", "value": "1.2", "comments": ["infliximab trough"]}]
    )
    processed = pipeline.process(unknown, SourceRef(topic="lab.results"))
    assert processed.interpretations == [] and processed.recognition_gap
    unrelated = _canonical([{"code": "2345-7", "display": "Glucose", "value": "98", "unit": "mg/dL"}])
    assert not pipeline.process(unrelated, SourceRef(topic="lab.results")).recognition_gap
    recognised = _canonical([{"code": "39803-2", "display": "Infliximab", "value": "4", "unit": "ug/mL"}])
    assert not pipeline.process(recognised, SourceRef(topic="lab.results")).recognition_gap


# -- 5. Antibody results -----------------------------------------------------------------------


def test_the_labs_reference_interval_outranks_a_cutoff_that_does_not_name_the_lab():
    # 30 U/mL is below the configured 50 U/mL, but the reporting lab's own interval (<20)
    # calls it positive: another lab's assay, another cut-off.
    got = read(ati("30", reference_range="<20"))
    assert (got.finding, got.decided_by) == (POS, DecidedBy.REFERENCE_RANGE)
    assert got.alert and "disagrees" in got.reason


def _with_named_assay(lab: str):
    data = json.loads(json.dumps(RULES.model_dump(mode="json")))
    data["antibody_assays"][0]["performing_lab"] = lab
    return parse_ruleset(json.dumps(data), "named-assay rule set")


def test_a_cutoff_that_names_the_performing_lab_is_the_first_evidence_for_that_labs_results():
    rules = _with_named_assay("Reference Lab A")
    from_that_lab = interpret(ati("60", reference_range="<20", performing_lab="Reference Lab A"), rules)
    assert from_that_lab is not None
    assert (from_that_lab.finding, from_that_lab.decided_by) == (POS, DecidedBy.ASSAY_CUTOFF)
    # The same numbers from another lab: that lab's own interval decides; our cut-off is not its.
    from_elsewhere = interpret(ati("60", reference_range="<20", performing_lab="Other Lab"), rules)
    assert from_elsewhere is not None
    assert (from_elsewhere.finding, from_elsewhere.decided_by) == (POS, DecidedBy.REFERENCE_RANGE)
    alone = interpret(ati("30", performing_lab="Other Lab"), rules)
    assert alone is not None and alone.finding is ATI_UNINT  # nothing of that lab's own to go on


def test_a_value_under_the_assays_cutoff_is_not_detected_whatever_a_stale_flag_says():
    """Issue 37 (reversing issue 23's choice): the value under the assay's own cut-off settles
    it; an H flag left from an earlier report does not make it 'detected'. The reason says so."""
    rules = _with_named_assay("Reference Lab A")
    got = interpret(ati("30", abnormal_flags=("H",), performing_lab="Reference Lab A"), rules)
    assert got is not None and got.finding is NEG and not got.alert
    assert "says detected, but the value is below the cut-off" in got.reason
    # A flag still decides where no number does.
    alone = interpret(ati("see report", abnormal_flags=("H",), performing_lab="Reference Lab A"), rules)
    assert alone is not None and alone.finding is POS


@pytest.mark.parametrize(
    ("text", "finding"),
    [
        ("Possible interference, please recollect", ATI_UNINT),
        ("Indeterminate", ATI_UNINT),
        ("No antibodies detected", NEG),
        ("Antibodies not detected", NEG),
        ("None detected", NEG),
        ("Non-reactive", NEG),
        ("Weakly positive", POS),
        ("Low positive", POS),
        ("Detected", POS),
        ("Positive for antibodies to infliximab", POS),
        ("See comment", ATI_UNINT),
    ],
)
def test_qualitative_antibody_text_is_read_by_words_and_negation(text, finding):
    got = read(ati(text, unit=None))
    assert got.finding is finding
    assert got.alert == (finding is POS)


def test_an_unknown_unit_is_never_echoed_but_the_labs_flag_still_decides():
    planted = "Jane Q Patient"
    got = read(ati("80", unit=planted, abnormal_flags=("H",)))
    assert (got.finding, got.decided_by) == (POS, DecidedBy.ABNORMAL_FLAG)
    assert got.unit is None
    alert = alert_for(got, SourceRef(topic="lab.results"))
    assert alert is not None
    assert planted not in alert.model_dump_json()


@pytest.mark.parametrize(
    "text", ["Undetectable", "Not detected", "below LOQ", "<LOQ", "None detected", "BLQ"]
)
def test_a_level_reported_as_text_below_quantitation_is_subtherapeutic_in_any_context(text):
    loq = RULES.assay_limits.limit_of_quantitation_ug_per_ml
    for context in ({}, {"phase": "induction", "week": 6}, {"route": "subcutaneous"}):
        got = read(level(text, unit=None), **context)
        assert got.finding is SUB and got.alert, context
        assert got.value == loq and got.comparator is not None and got.comparator.value == "<"


@pytest.mark.parametrize("text", ["Detected", "Possible interference, please recollect", ">LOQ", "QNS"])
def test_a_level_as_text_that_gives_no_number_below_quantitation_is_not_guessed(text):
    got = read(level(text, unit=None))
    assert got.finding is UNINT and not got.alert


@pytest.mark.parametrize(
    ("text", "reading"),
    [
        ("not   DETECTED", Reading.ABSENT),
        ("negative", Reading.ABSENT),
        ("positive", Reading.PRESENT),
        ("positive, see note; negative control ok", Reading.UNCLEAR),
        ("", Reading.UNCLEAR),
        ("nil", Reading.ABSENT),
        ("sample haemolysed", Reading.NO_RESULT),
    ],
)
def test_text_reader(text, reading):
    assert read_text(text) is reading


# -- 3. Context targets that cannot apply must not mislead ------------------------------------


@pytest.mark.parametrize("context", [{"phase": "induction", "week": 10}, {"phase": "induction"}, {"week": 3}])
def test_a_level_below_every_target_that_could_apply_pages_even_without_a_target(context):
    # The lowest floor that could apply (2.2 ug/mL in maintenance, 4.0 in induction) is above
    # 1.5: it is below every target the patient's real context could select.
    got = read(level("1.5"), **context)
    assert got.finding is SUB and got.alert
    assert got.target is not None and got.target.low is not None and Decimal("1.5") < got.target.low


@pytest.mark.parametrize("week", [None, 10])
def test_an_induction_level_below_every_induction_threshold_pages_whatever_the_week(week):
    # Issue 23, class 3: every induction threshold is at least 4.0 ug/mL (week 14; week 6 is
    # 4.5); the maintenance goal thresholds (2.2 / 9.7 / 9.8) are not induction floors.
    got = read(level("3.0"), phase="induction", week=week)
    assert got.finding is SUB and got.alert
    assert got.target is not None and got.target.low == Decimal("4.0")
    assert got.target.when.phase is not None and got.target.when.phase.value == "induction"


def test_week_2_of_induction_has_its_own_consensus_threshold():
    """Issue 37: week 2 has its own consensus threshold (Papamichael 2019, Table 1: >= 20)."""
    got = read(level("15"), phase="induction", week=2)
    assert got.finding is SUB and got.alert and got.target is not None
    assert got.target.low == Decimal("20") and got.target.citation == "papamichael-2019-table"


def test_an_induction_level_above_the_lowest_induction_threshold_still_has_no_target():
    got = read(level("4.2"), phase="induction", week=10)
    assert got.finding is UNINT and not got.alert and "no target" in got.reason


def test_goal_thresholds_are_maintenance_thresholds():
    # Papamichael et al. 2018 measured them during maintenance: in induction they do not apply.
    assert read(level("5.0"), phase="maintenance", goal="endoscopic_remission").finding is SUB
    got = read(level("5.0"), phase="induction", week=10, goal="endoscopic_remission")
    assert got.finding is UNINT and not got.alert


def test_an_undetectable_induction_level_pages():
    got = read(level("<0.4"), phase="induction", week=2)
    assert got.finding is SUB and got.alert


@pytest.mark.parametrize(("value", "finding"), [("9", OK), ("25", OK), ("2", SUB)])
def test_a_goal_without_a_rule_of_its_own_on_intravenous_dosing_is_a_floor(value, finding):
    # Mucosal healing has a published threshold only for subcutaneous dosing; on IV it falls
    # back to the 3-7 range, whose 7 is a maintenance ceiling, not a goal's.
    got = read(level(value), goal="mucosal_healing")
    assert got.finding is finding
    assert got.finding is not ABOVE


def test_above_the_maintenance_range_says_above_target_and_keeps_de_escalation_to_maintenance():
    got = read(level("9"))
    assert got.finding is ABOVE and not got.alert
    assert "supratherapeutic" not in (got.reason + (got.recommendation or "")).lower()
    assert "de-escalation" in (got.recommendation or "")
    subcutaneous = read(level("40"), route="subcutaneous")
    assert subcutaneous.finding is OK  # a floor: nothing is "too high" on SC


def test_reactive_monitoring_in_active_disease_uses_the_aga_floor_of_5():
    reactive = read(level("4"), monitoring="reactive")
    proactive = read(level("4"), monitoring="proactive")
    assert reactive.finding is SUB and reactive.alert
    assert "aga-2017" in [c.id for c in reactive.citations]
    assert proactive.finding is OK


def test_the_packaged_reactive_rule_set_reads_unstated_context_as_reactive():
    assert {"default", "reactive"} <= PACKAGED_RULESETS
    got = interpret(level("4"), packaged_ruleset("reactive"))
    assert got is not None and got.finding is SUB


# -- 6. Citations that stand alone -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PACKAGED_RULESETS))
def test_every_citation_is_bibliographic_and_names_no_file(name):
    for citation in packaged_ruleset(name).citations:
        text = citation.model_dump_json()
        assert not re.search(r"\.txt|clinical-guidance|issue \d", text, re.I), citation.id
        assert citation.authors and citation.title and citation.published_in and citation.year
        assert citation.reference().startswith(citation.authors)


def test_the_journal_studies_carry_a_doi_or_pmid_where_one_was_verified():
    by_id = {c.id: c for c in RULES.citations}
    for cid in ("bsg-2019", "taxit-2015", "hong-2025", "aga-2017"):
        assert by_id[cid].doi or by_id[cid].pmid, cid


# -- issue 23, class 6: goals by indication -----------------------------------------------------


@pytest.mark.parametrize(
    ("indication", "goal", "value", "finding"),
    [
        ("ulcerative_colitis", "endoscopic_remission", "8.0", OK),  # >= 7.5 in UC
        ("crohns_disease", "endoscopic_remission", "8.0", SUB),  # >= 9.7 in Crohn's disease
        ("ulcerative_colitis", "histologic_remission", "10.0", SUB),  # >= 10.5 in UC
        ("crohns_disease", "histologic_remission", "10.0", OK),  # >= 9.8 in Crohn's disease
    ],
)
def test_goal_thresholds_follow_the_indication(indication, goal, value, finding):
    got = read(level(value), phase="maintenance", goal=goal, indication=indication)
    assert got.finding is finding
    assert got.target is not None and got.target.when.indication is not None
    assert got.target.when.indication.value == indication


def test_an_assumed_indication_is_said_where_it_chose_the_threshold():
    from interpretation import SourceRef
    from interpretation.alerts import Action, Category, event_for, incident_key

    got = read(level("8.0"), phase="maintenance", goal="endoscopic_remission")
    key = incident_key(got.result, Category.SUBTHERAPEUTIC_LEVEL)
    where = SourceRef(topic="lab.results", partition=0, offset=0)
    event = event_for(got, where, action=Action.TRIGGER, incident=key, category=Category.SUBTHERAPEUTIC_LEVEL)
    assert "crohns_disease" in event.summary  # assumed, and said
