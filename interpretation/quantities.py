"""Reading lab values as labs send them: numbers, censored values and unit spellings.

Arithmetic is in `Decimal` so conversions are exact (2400 ng/mL is 2.4 ug/mL, not
2.4000000000000004), and a value either reads cleanly or is refused with a reason.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from enum import StrEnum

from interpretation.lab_result import Frozen

DRUG_LEVEL_UNIT = "ug/mL"


class Comparator(StrEnum):
    """How a censored value relates to the number the lab printed ("<1.0" means below 1.0)."""

    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="


class Quantity(Frozen):
    """A reported number with its comparator; `comparator` is None for an exact value."""

    value: Decimal
    comparator: Comparator | None = None

    def scaled(self, factor: Decimal) -> Quantity:
        return Quantity(value=plain(self.value * factor), comparator=self.comparator)

    # Each test below asks whether *every* true value the report allows passes, so a
    # censored "<5" is not called below 3: it could be 4. Undecided cases stay undecided.

    def all_below(self, bound: Decimal) -> bool:
        match self.comparator:
            case None | Comparator.LE:
                return self.value < bound
            case Comparator.LT:
                return self.value <= bound
            case _:
                return False

    def all_at_most(self, bound: Decimal) -> bool:
        return self.comparator in (None, Comparator.LT, Comparator.LE) and self.value <= bound

    def all_above(self, bound: Decimal) -> bool:
        match self.comparator:
            case None | Comparator.GE:
                return self.value > bound
            case Comparator.GT:
                return self.value >= bound
            case _:
                return False

    def all_at_least(self, bound: Decimal) -> bool:
        return self.comparator in (None, Comparator.GT, Comparator.GE) and self.value >= bound


def plain(value: Decimal) -> Decimal:
    """The same number without trailing zeros or an exponent (2.400 -> 2.4, 1E+1 -> 10)."""
    normal = value.normalize()
    return normal.quantize(Decimal(1)) if normal.as_tuple().exponent > 0 else normal  # type: ignore[operator]


class UnreadableValue(ValueError):
    """The value text is not a number a clinician could act on (e.g. "TNP", "see comment")."""


# "<1.0", "< 2.5", ">=50", "<^1.0" (HL7 v2 structured numeric, comparator^number).
_NUMERIC = re.compile(r"^\s*(<=|>=|<|>|=)?\s*\^?\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*$")
# Other ways labs write a comparator (README "How a result is read"), as the four above.
COMPARATOR_SPELLINGS = (
    ("\u2264", "<="),  # ≤
    ("\u2a7d", "<="),  # ⩽
    ("\u2265", ">="),  # ≥
    ("\u2a7e", ">="),  # ⩾
    ("=<", "<="),
    ("=>", ">="),
    ("&lt;", "<"),  # HTML-escaped text in a FHIR valueString or an HL7 NTE
    ("&gt;", ">"),
)


def spelled_comparators(text: str) -> str:
    """`text` with each comparator spelled as `<`, `<=`, `>` or `>=`."""
    for spelling, plain_form in COMPARATOR_SPELLINGS:
        if spelling in text:
            text = text.replace(spelling, plain_form)
    return text


def parse_quantity(text: str) -> Quantity:
    """Read a numeric lab value, censored or not; raise `UnreadableValue` for anything else."""
    match = _NUMERIC.match(spelled_comparators(text))
    if match is None:
        raise UnreadableValue("the value is not a number")
    sign, number = match.groups()
    try:
        value = Decimal(number)
    except InvalidOperation as err:  # pragma: no cover - the pattern admits only decimals
        raise UnreadableValue("the value is not a number") from err
    comparator = None if sign in (None, "=") else Comparator(sign)
    return Quantity(value=value, comparator=comparator)


# Spellings labs use for mass concentration, folded to one key: lower case, micro sign (U+00B5)
# and Greek mu (U+03BC) read as "u", "mcg" as "ug", spaces dropped.
_TO_UG_PER_ML: dict[str, Decimal] = {
    "ug/ml": Decimal(1),
    "mg/l": Decimal(1),
    "ng/ml": Decimal("0.001"),
    "ug/l": Decimal("0.001"),
    "mg/dl": Decimal(10),
    "ng/l": Decimal("0.000001"),
}


# Units written out in words (OBX-6 "microgram/mL"), each folded to its symbol; longest first.
_UNIT_WORDS = (
    ("micrograms", "ug"),
    ("microgram", "ug"),
    ("microg", "ug"),
    ("kilograms", "kg"),
    ("kilogram", "kg"),
    ("milligrams", "mg"),
    ("milligram", "mg"),
    ("nanograms", "ng"),
    ("nanogram", "ng"),
    ("grams", "g"),
    ("gram", "g"),
    ("millilitres", "ml"),
    ("millilitre", "ml"),
    ("milliliters", "ml"),
    ("milliliter", "ml"),
    ("decilitres", "dl"),
    ("decilitre", "dl"),
    ("deciliters", "dl"),
    ("deciliter", "dl"),
    ("litres", "l"),
    ("litre", "l"),
    ("liters", "l"),
    ("liter", "l"),
)


def unit_key(unit: str) -> str:
    """A unit spelling folded so that equivalent spellings compare equal: case, the micro sign
    and Greek mu, "mcg", spaces, and units written out in words ("microgram/mL")."""
    folded = unit.strip().lower().replace("\u00b5", "u").replace("\u03bc", "u").replace(" ", "")
    if len(folded) > 4:  # "ug/ml" and shorter are symbols already
        for word, symbol in _UNIT_WORDS:
            folded = folded.replace(word, symbol)
    return folded.replace("mcg", "ug").replace("[iu]", "iu")


def to_ug_per_ml(quantity: Quantity, unit: str) -> Quantity:
    """Convert a drug-level quantity to ug/mL; raise `UnknownUnit` when the unit is not mass/volume."""
    factor = _TO_UG_PER_ML.get(unit_key(unit))
    if factor is None:
        # The unit is free text from the sender: it is described, never repeated.
        raise UnknownUnit("the unit is not a mass concentration this service converts")
    return quantity.scaled(factor)


class UnknownUnit(ValueError):
    """The unit is missing or not one the conversion table knows; never guessed."""
