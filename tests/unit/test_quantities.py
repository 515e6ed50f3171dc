from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interpretation.quantities import (
    Comparator,
    Quantity,
    UnknownUnit,
    UnreadableValue,
    parse_quantity,
    to_ug_per_ml,
)


@pytest.mark.parametrize(
    ("text", "value", "comparator"),
    [
        ("2.4", "2.4", None),
        ("  3 ", "3", None),
        ("=3", "3", None),
        ("<1.0", "1.0", Comparator.LT),
        ("< 2.5", "2.5", Comparator.LT),
        (">125", "125", Comparator.GT),
        ("<^1.0", "1.0", Comparator.LT),
        (">=50", "50", Comparator.GE),
        ("<= 49", "49", Comparator.LE),
        (".5", "0.5", None),
        ("-1", "-1", None),
    ],
)
def test_reads_numbers_and_censored_values(text, value, comparator):
    q = parse_quantity(text)
    assert q.value == Decimal(value)
    assert q.comparator is comparator


@pytest.mark.parametrize("text", ["TNP", "see comment", "", "1.2.3", "Positive", "<", "1e5", "NaN"])
def test_refuses_text_that_is_not_a_number(text):
    with pytest.raises(UnreadableValue):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("unit", "factor"),
    [
        ("ug/mL", "1"),
        ("UG/ML", "1"),
        ("mcg/mL", "1"),
        ("\u00b5g/mL", "1"),
        ("\u03bcg/mL", "1"),
        ("mg/L", "1"),
        ("ng/mL", "0.001"),
        ("ug/L", "0.001"),
        ("\u00b5g/L", "0.001"),
        (" ug / mL ", "1"),
    ],
)
def test_unit_spellings_convert_to_ug_per_ml(unit, factor):
    assert to_ug_per_ml(Quantity(value=Decimal(10)), unit).value == Decimal(10) * Decimal(factor)


def test_conversion_is_exact():
    assert to_ug_per_ml(Quantity(value=Decimal(2400)), "ng/mL").value == Decimal("2.4")
    assert str(to_ug_per_ml(Quantity(value=Decimal(2400)), "ng/mL").value) == "2.4"


def test_conversion_keeps_the_comparator():
    assert to_ug_per_ml(parse_quantity("<1000"), "ng/mL") == Quantity(
        value=Decimal(1), comparator=Comparator.LT
    )


@pytest.mark.parametrize("unit", ["mmol/L", "U/mL", "", "%", "ug"])
def test_unknown_units_are_refused(unit):
    with pytest.raises(UnknownUnit):
        to_ug_per_ml(Quantity(value=Decimal(1)), unit)


@given(st.decimals(min_value=0, max_value=10_000, places=3, allow_nan=False, allow_infinity=False))
def test_ng_round_trip_is_exact(ug):
    ng = Quantity(value=ug * 1000)
    assert to_ug_per_ml(ng, "ng/mL").value == ug


@given(
    st.decimals(min_value=0, max_value=1000, places=2),
    st.decimals(min_value=0, max_value=1000, places=2),
)
def test_exact_values_compare_like_numbers(v, bound):
    q = Quantity(value=v)
    assert q.all_below(bound) == (v < bound)
    assert q.all_at_most(bound) == (v <= bound)
    assert q.all_above(bound) == (v > bound)
    assert q.all_at_least(bound) == (v >= bound)


@given(
    st.decimals(min_value=0, max_value=1000, places=2),
    st.decimals(min_value=0, max_value=1000, places=2),
    st.sampled_from(list(Comparator)),
)
def test_censored_tests_are_never_both_true(v, bound, comparator):
    q = Quantity(value=v, comparator=comparator)
    assert not (q.all_below(bound) and q.all_at_least(bound))
    assert not (q.all_above(bound) and q.all_at_most(bound))
