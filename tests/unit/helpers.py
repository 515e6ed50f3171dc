"""Small builders for unit tests of the clinical core."""

from __future__ import annotations

from typing import Any

from interpretation import LabResult, TreatmentContext, default_ruleset, interpret

RULES = default_ruleset()


def level(value: str | None, unit: str | None = "ug/mL", **fields: Any) -> LabResult:
    return LabResult(patient_id="PT-1", accession="ACC-1", code="39803-2", value=value, unit=unit, **fields)


def ati(value: str | None, unit: str | None = "U/mL", code: str = "INXAB", **fields: Any) -> LabResult:
    return LabResult(patient_id="PT-1", accession="ACC-1", code=code, value=value, unit=unit, **fields)


def read(result: LabResult, **context: Any) -> Any:
    found = interpret(result, RULES, TreatmentContext(**context))
    assert found is not None
    return found
