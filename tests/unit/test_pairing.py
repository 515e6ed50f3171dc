import pytest

from interpretation import Pattern, interpret_all
from tests.unit.helpers import RULES, ati, level


@pytest.mark.parametrize(
    ("trough", "antibody", "pattern"),
    [
        ("1.0", "180", Pattern.IMMUNOGENIC_FAILURE),
        ("1.0", "10", Pattern.NON_IMMUNE_LOW_LEVEL),
        ("5.0", "180", Pattern.ANTIBODIES_WITH_ADEQUATE_LEVEL),
        ("5.0", "10", Pattern.ADEQUATE_WITHOUT_ANTIBODIES),
        ("9.0", "10", Pattern.ADEQUATE_WITHOUT_ANTIBODIES),
    ],
)
def test_level_and_antibodies_on_one_specimen_are_read_together(trough, antibody, pattern):
    found = interpret_all([level(trough), ati(antibody)], RULES)
    assert [i.pattern for i in found] == [pattern, pattern]
    assert found[0].recommendation == found[1].recommendation == RULES.advice(pattern.value).text


def test_results_from_different_specimens_are_not_paired():
    found = interpret_all([level("1.0", specimen_id="S1"), ati("180", specimen_id="S2")], RULES)
    assert [i.pattern for i in found] == [None, None]


def test_an_undecided_member_leaves_the_pair_unread():
    found = interpret_all([level("<5"), ati("180")], RULES)
    assert [i.pattern for i in found] == [None, None]


def test_other_analytes_are_ignored():
    from interpretation import LabResult

    glucose = LabResult(patient_id="PT-1", code="2345-7", display="Glucose", value="98", unit="mg/dL")
    assert interpret_all([glucose], RULES) == []
