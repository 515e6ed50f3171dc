"""Numbers as labs write them (issue 23, class 2): read where the reading is unambiguous, or where
every plausible reading gives the same finding; otherwise not decided, with the readings named."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interpretation import default_ruleset, interpret
from interpretation.findings import AntibodyFinding, DrugLevelFinding
from interpretation.numbers import NumberStyle, read_value
from interpretation.quantities import UnreadableValue
from interpretation.ruleset import RuleSet
from tests.unit.helpers import ati, level, read


def values(text: str, style: NumberStyle | None = None) -> list[Decimal]:
    return [r.quantity.value for r in read_value(text, style)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2,5", [Decimal("2.5")]),
        ("0,123", [Decimal("0.123")]),
        ("1.234,5", [Decimal("1234.5")]),
        ("1,234.5", [Decimal("1234.5")]),
        ("1 234", [Decimal("1234")]),
        ("1,234,567", [Decimal("1234567")]),
        ("1,234", [Decimal("1234"), Decimal("1.234")]),  # both readings, for the caller to weigh
        ("2.5 ug/mL", [Decimal("2.5")]),
    ],
)
def test_lab_number_writing(text, expected):
    assert values(text) == expected


@pytest.mark.parametrize("text", ["1,23,4", "TNP", "2.5 (see comment)", "1..2", "12,3456,7"])
def test_what_is_not_a_number_stays_unread(text):
    with pytest.raises(UnreadableValue):
        read_value(text)


def test_a_labs_number_style_leaves_one_reading():
    assert values("1,234", NumberStyle.DECIMAL_COMMA) == [Decimal("1.234")]
    assert values("1,234", NumberStyle.DECIMAL_POINT) == [Decimal("1234")]
    assert values("1.234", NumberStyle.DECIMAL_COMMA) == [Decimal("1234")]
    assert values("1.234") == [Decimal("1.234")]  # a point is a decimal point unless the lab says not
    assert values("1 234", NumberStyle.DECIMAL_COMMA) == [Decimal("1234")]
    assert values("1'234", NumberStyle.DECIMAL_POINT) == [Decimal("1234")]


@given(
    st.text(alphabet="0123456789.,' \u00a0<>=^", min_size=1, max_size=12),
    st.sampled_from([None, *NumberStyle]),
)
def test_any_text_of_digits_and_marks_reads_or_is_refused_never_crashes(text, style):
    try:
        readings = read_value(text, style)
    except UnreadableValue:
        return
    assert readings and all(r.quantity.value.is_finite() for r in readings)


@given(st.decimals(min_value=Decimal("1000"), max_value=Decimal("9999999"), places=2, allow_nan=False))
def test_any_grouped_number_reads_back_to_itself(number):
    grouped_point = f"{number:,.2f}"  # 1,234.50
    grouped_comma = grouped_point.replace(",", "_").replace(".", ",").replace("_", ".")  # 1.234,50
    assert number in values(grouped_point)
    assert number in values(grouped_comma)


@given(st.decimals(min_value=Decimal("0.01"), max_value=Decimal("99.99"), places=2, allow_nan=False))
def test_a_decimal_comma_reads_as_the_decimal(number):
    assert values(f"{number:.2f}".replace(".", ",")) == [number]


# -- drug levels ----------------------------------------------------------------------------


def test_a_decimal_comma_level_pages_and_says_how_it_was_read():
    got = read(level("2,1"))
    assert got.finding is DrugLevelFinding.SUBTHERAPEUTIC and got.alert
    assert "decimal comma" in got.reason


def test_a_unit_in_the_value_with_an_empty_unit_field_is_read():
    got = read(level("1.8 ug/mL", unit=None))
    assert got.finding is DrugLevelFinding.SUBTHERAPEUTIC and got.alert
    assert "unit written in the value" in got.reason
    assert read(level("1.8 ug/mL", unit="ng/mL")).finding is DrugLevelFinding.UNINTERPRETABLE


def test_every_plausible_reading_low_pages():
    # 1,500 ug/mL is beyond the plausible maximum; 1.5 is the only reading left.
    got = read(level("1,500"))
    assert got.finding is DrugLevelFinding.SUBTHERAPEUTIC and got.value == Decimal("1.5")
    # 1,200 ng/mL is 1.2 ug/mL (thousands) or 0.0012 (decimal comma): low either way.
    got = read(level("1,200", unit="ng/mL"))
    assert got.finding is DrugLevelFinding.SUBTHERAPEUTIC and got.alert
    assert "whichever way" in got.reason


def test_readings_that_disagree_are_not_decided_and_name_the_way_out():
    got = read(level("4,500", unit="ng/mL"))  # 4.5 ug/mL (in range) or 0.0045 (low)
    assert got.finding is DrugLevelFinding.UNINTERPRETABLE and not got.alert
    assert "number_styles" in got.reason


def test_the_rule_set_settles_a_labs_style():
    data = default_ruleset().model_dump(mode="json")
    data["number_styles"] = {"Labor Nord": "decimal_point"}
    rules = RuleSet.model_validate(data)
    got = interpret(level("4,500", unit="ng/mL", performing_lab="labor nord"), rules)
    assert got is not None and got.finding is DrugLevelFinding.THERAPEUTIC


# -- antibodies -----------------------------------------------------------------------------


def test_an_antibody_value_with_a_decimal_comma_is_read_against_the_cutoff():
    got = read(ati("180,5"))
    assert got.finding is AntibodyFinding.ANTIBODIES_DETECTED and got.alert
    assert "decimal comma" in got.reason


def test_an_antibody_value_whose_readings_disagree_is_not_decided():
    got = read(ati("1,200"))  # 1200 U/mL (positive) or 1.2 (negative)
    assert got.finding is AntibodyFinding.UNINTERPRETABLE
