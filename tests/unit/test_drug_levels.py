from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interpretation import DrugLevelFinding, ResultStatus
from tests.unit.helpers import RULES, level, read

SUB, THER, SUPRA, UNINT = (
    DrugLevelFinding.SUBTHERAPEUTIC,
    DrugLevelFinding.THERAPEUTIC,
    DrugLevelFinding.ABOVE_TARGET,
    DrugLevelFinding.UNINTERPRETABLE,
)


@pytest.mark.parametrize(
    ("value", "finding", "alert"),
    [
        ("2.99", SUB, True),
        ("3", THER, False),
        ("3.0", THER, False),
        ("5", THER, False),
        ("7", THER, False),
        ("7.01", SUPRA, False),
        ("0", SUB, True),
    ],
)
def test_maintenance_boundaries_are_inclusive(value, finding, alert):
    got = read(level(value))
    assert (got.finding, got.alert, got.rule_id) == (finding, alert, "ifx-maintenance-iv")


# (context, threshold from clinical-guidance.txt, rule id)
THRESHOLDS = [
    ({"route": "subcutaneous"}, "17.5", "ifx-sc-mucosal-healing"),
    ({"route": "subcutaneous", "goal": "mucosal_healing"}, "17.5", "ifx-sc-mucosal-healing"),
    ({"route": "subcutaneous", "goal": "transmural_healing"}, "30.3", "ifx-sc-transmural-healing"),
    ({"phase": "induction", "week": 6}, "4.5", "ifx-induction-week-6"),
    ({"phase": "induction", "week": 14}, "4.0", "ifx-induction-week-14"),
    ({"goal": "biochemical_remission"}, "2.2", "ifx-goal-biochemical-remission"),
    ({"goal": "endoscopic_remission"}, "9.7", "ifx-goal-endoscopic-remission"),
    ({"goal": "histologic_remission"}, "9.8", "ifx-goal-histologic-remission"),
    ({}, "3", "ifx-maintenance-iv"),
]


@pytest.mark.parametrize(("context", "threshold", "rule_id"), THRESHOLDS)
def test_every_threshold_exactly_at_and_just_below(context, threshold, rule_id):
    at = read(level(threshold), **context)
    below = read(level(str(Decimal(threshold) - Decimal("0.01"))), **context)
    assert at.rule_id == below.rule_id == rule_id
    assert at.finding is THER and not at.alert
    assert below.finding is SUB and below.alert


def test_context_from_the_message_is_used():
    from interpretation import TreatmentContext

    got = read(level("4.2", context=TreatmentContext(phase="induction", week=6)))
    assert (got.rule_id, got.finding) == ("ifx-induction-week-6", SUB)


def test_command_line_context_overrides_the_message():
    from interpretation import TreatmentContext

    got = read(level("4.2", context=TreatmentContext(phase="induction", week=6)), phase="maintenance")
    assert (got.rule_id, got.finding) == ("ifx-maintenance-iv", THER)


def test_induction_without_an_established_target_is_not_guessed_above_every_floor():
    got = read(level("6.0"), phase="induction", week=10)  # week 2 has its own (>= 20)
    assert got.finding is UNINT and not got.alert
    assert "no target" in got.reason


@pytest.mark.parametrize(
    ("value", "unit", "finding"),
    [
        ("<1.0", "mcg/mL", SUB),
        ("<^1.0", "ug/mL", SUB),
        ("<3", "ug/mL", SUB),
        ("<=3", "ug/mL", UNINT),
        ("<5", "ug/mL", UNINT),
        (">125", "ug/mL", SUPRA),
        (">7", "ug/mL", SUPRA),
        (">=7", "ug/mL", UNINT),
        (">2", "ug/mL", UNINT),
        ("<1000", "ng/mL", SUB),
    ],
)
def test_censored_values(value, unit, finding):
    assert read(level(value, unit)).finding is finding


def test_units_convert_before_judging():
    got = read(level("2400", "ng/mL"))
    assert (got.value, got.unit, got.finding) == (Decimal("2.4"), "ug/mL", SUB)
    assert read(level("5", "mg/L")).finding is THER


@pytest.mark.parametrize(
    ("value", "unit", "why"),
    [
        ("TNP", "ug/mL", "not a number"),
        ("see comment", "ug/mL", "not a number"),
        (None, "ug/mL", "no value"),
        ("2.0", None, "no unit"),
        ("2.0", "mmol/L", "not a mass concentration"),
        ("-1", "ug/mL", "negative"),
        ("900", "ug/mL", "plausible maximum"),
    ],
)
def test_uninterpretable_values_say_why_and_never_alert(value, unit, why):
    got = read(level(value, unit))
    assert got.finding is UNINT and not got.alert
    assert why in got.reason


@pytest.mark.parametrize(
    ("status", "alert", "finding"),
    [
        (ResultStatus.FINAL, True, SUB),
        (ResultStatus.CORRECTED, True, SUB),
        (ResultStatus.PRELIMINARY, False, SUB),
        (ResultStatus.CANCELLED, False, UNINT),
        (ResultStatus.ENTERED_IN_ERROR, False, UNINT),
    ],
)
def test_only_released_results_page(status, alert, finding):
    got = read(level("1.5", status=status))
    assert (got.alert, got.finding) == (alert, finding)


def test_alerting_interpretation_cites_the_rule_and_recommends_intensification():
    got = read(level("2.0"))
    assert "taxit-2015" in [c.id for c in got.citations]
    assert "dose intensification" in got.recommendation
    assert got.ruleset_version == RULES.version


_RANK = {SUB: 0, THER: 1, SUPRA: 2}
contexts = st.sampled_from([c for c, _, _ in THRESHOLDS])
levels = st.decimals(min_value=0, max_value=500, places=2)


@given(levels, levels, contexts)
def test_a_lower_level_never_gets_a_better_finding(a, b, context):
    low, high = sorted((a, b))
    f_low, f_high = read(level(str(low)), **context).finding, read(level(str(high)), **context).finding
    assert _RANK[f_low] <= _RANK[f_high]


@given(st.text(max_size=30), st.one_of(st.none(), st.text(max_size=12)))
def test_no_value_or_unit_makes_the_engine_raise(value, unit):
    got = read(level(value.strip() or None, unit.strip() if unit else None))
    assert got.finding in DrugLevelFinding
    assert got.alert == (got.finding is SUB)
