"""Numbers as labs write them: thousands separators, decimal commas, a unit inside the value.

A value's text can have more than one reading ("1,234" is 1234 with a thousands comma, or
1.234 with a decimal comma). `read_value` returns every reading the text allows; the caller
keeps the ones that are plausible and decides only when they agree (issue 23, class 2). A
performing lab's number style, set in the rule set, leaves one reading.
"""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple

from interpretation.quantities import (
    Comparator,
    Quantity,
    UnreadableValue,
    parse_quantity,
    spelled_comparators,
)


class NumberStyle(StrEnum):
    """Which mark a lab writes before the decimals."""

    DECIMAL_POINT = "decimal_point"  # 1,234.5
    DECIMAL_COMMA = "decimal_comma"  # 1.234,5


class ValueReading(NamedTuple):
    """One reading of a value's text: the number, a unit written in the text, how it was read."""

    quantity: Quantity
    unit: str | None = None
    how: str | None = None  # None for a plain number, read as the service always has


_COMPARATOR = re.compile(r"^\s*(<=|>=|<|>|=)?\s*\^?\s*")
# Digits with the marks labs group and separate them with; a unit, if any, follows.
_NUMBER = re.compile(r"^([+-]?[0-9][0-9.,'\u00a0\u202f ]*[0-9]|[+-]?[0-9]|[+-]?[.,][0-9]+)\s*(.*)$")
_GROUPED = re.compile(r"^[0-9]{1,3}(?:(?P<mark>[.,'\u00a0\u202f ])[0-9]{3})(?:(?P=mark)[0-9]{3})*$")
_UNIT = re.compile(r"^[A-Za-z\u00b5\u03bc%][A-Za-z0-9\u00b5\u03bc/%.\[\] ]*$")


def read_value(text: str, style: NumberStyle | None = None) -> tuple[ValueReading, ...]:
    """Every reading of a numeric value's text; raise `UnreadableValue` when there is none."""
    text = spelled_comparators(text)
    if style is not NumberStyle.DECIMAL_COMMA or "." not in text:
        try:
            return (ValueReading(parse_quantity(text)),)
        except UnreadableValue:
            pass
    found = _COMPARATOR.match(text)
    sign = found.group(1) if found else None
    rest = text[found.end() :] if found else text
    match = _NUMBER.match(rest.strip())
    if match is None:
        raise UnreadableValue("the value is not a number")
    digits, unit = match.group(1), match.group(2).strip() or None
    if unit is not None and not _UNIT.match(unit):
        raise UnreadableValue("the value is not a number")
    comparator = None if sign in (None, "=") else Comparator(sign)
    said = ["unit written in the value"] if unit else []
    readings = []
    for number, how in _numbers(digits, style):
        notes = [n for n in (how, *said) if n]
        readings.append(
            ValueReading(
                Quantity(value=Decimal(number), comparator=comparator), unit, "; ".join(notes) or None
            )
        )
    if not readings:
        raise UnreadableValue("the value is not a number")
    return tuple(readings)


def _numbers(text: str, style: NumberStyle | None) -> list[tuple[str, str | None]]:
    """The plain decimal strings `text` can mean, each with how it was read."""
    sign = text[0] if text[0] in "+-" else ""
    body = text.lstrip("+-")
    if style is NumberStyle.DECIMAL_COMMA and "," not in body and _GROUPED.match(body):
        return [
            (sign + re.sub(r"[.'\u00a0\u202f ]", "", body), "thousands separator (the lab's number style)")
        ]
    if re.fullmatch(r"[0-9]*\.?[0-9]+|[0-9]+\.", body):
        return [(text, None)]
    if re.fullmatch(r"[0-9]*,[0-9]+", body) and (not _GROUPED.match(body) or body.startswith("0,")):
        return [(sign + body.replace(",", "."), "decimal comma")]  # ",5", "2,5", "12,75": no grouping
    if "," in body and "." in body:
        decimal = "," if body.rfind(",") > body.rfind(".") else "."
        whole, _, fraction = body.rpartition(decimal)
        if _GROUPED.match(whole):
            return [
                (sign + whole.translate({ord(c): None for c in ",."}) + "." + fraction, "thousands separator")
            ]
        return []
    if _GROUPED.match(body):
        grouped = sign + re.sub(r"[.,'\u00a0\u202f ]", "", body)
        mark = _GROUPED.match(body).group("mark")  # type: ignore[union-attr]
        if mark == "," and body.count(",") == 1:
            # "1,234": a thousands comma, or a decimal comma with three decimals.
            as_decimal = sign + body.replace(",", ".")
            if style is NumberStyle.DECIMAL_POINT:
                return [(grouped, "thousands separator (the lab's number style)")]
            if style is NumberStyle.DECIMAL_COMMA:
                return [(as_decimal, "decimal comma (the lab's number style)")]
            return [(grouped, "thousands separator"), (as_decimal, "decimal comma")]
        return [(grouped, "thousands separator")]
    return []
