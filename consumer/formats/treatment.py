"""Records of the treatment-context topic: compacted, keyed by patient id, a tombstone deletes.

Two shapes are read:

- our canonical record (`{"phase": "induction", "induction_start": "2026-09-01", "route": ...}`),
  the patient's whole treatment context: it replaces what was known;
- a FHIR R4 MedicationAdministration (an infliximab dose given: last dose time, route) or
  MedicationRequest (the regimen: route, dosing interval), which update the fields they carry.

Medications other than infliximab and its biosimilars are skipped; a brand that exists only as
a subcutaneous product (Zymfentra, Remsima SC) sets the route.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consumer.dead_letters import Reason
from consumer.formats.errors import DecodeError, describe_validation_error
from interpretation.lab_result import Route
from interpretation.recognition import mentions_infliximab, phrase_text
from interpretation.ruleset import Recognition
from interpretation.treatment import TreatmentRecord

# SNOMED CT route codes (FHIR's route value set) for the two ways infliximab is given.
_ROUTES = {"47625008": Route.INTRAVENOUS, "34206005": Route.SUBCUTANEOUS}
_PERIOD_DAYS = {"d": 1, "wk": 7}


@dataclass(frozen=True)
class TreatmentUpdate:
    patient_id: str
    record: TreatmentRecord | None  # None: delete what is known
    replace: bool  # True: the whole context; False: only the fields set


class _Coding(BaseModel):
    model_config = ConfigDict(extra="ignore")
    system: str | None = None
    code: str | None = None
    display: str | None = None


class _Concept(BaseModel):
    model_config = ConfigDict(extra="ignore")
    coding: list[_Coding] = Field(default_factory=list)
    text: str | None = None

    def words(self) -> str:
        """The concept's text and displays as recognition compares names (" word word ")."""
        return phrase_text(" ".join([self.text or "", *(c.display or "" for c in self.coding)]))


class _Repeat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    period: float | None = None
    periodUnit: str | None = None  # noqa: N815 - FHIR's own name


class _Timing(BaseModel):
    model_config = ConfigDict(extra="ignore")
    repeat: _Repeat | None = None


class _Dosage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    route: _Concept | None = None
    timing: _Timing | None = None


class _Period(BaseModel):
    model_config = ConfigDict(extra="ignore")
    start: datetime | None = None


class _Medication(BaseModel):
    model_config = ConfigDict(extra="ignore")
    resourceType: str  # noqa: N815
    status: str
    medicationCodeableConcept: _Concept | None = None  # noqa: N815
    effectiveDateTime: datetime | None = None  # noqa: N815
    effectivePeriod: _Period | None = None  # noqa: N815
    dosage: _Dosage | None = None
    dosageInstruction: list[_Dosage] = Field(default_factory=list)  # noqa: N815


def decode_treatment(
    key: bytes | None, value: bytes | None, recognition: Recognition
) -> TreatmentUpdate | None:
    """The update a record makes, or None when it is about another medication (or not yet given)."""
    if not key:
        raise DecodeError(Reason.INVALID, "a treatment-context record needs the patient id as its key")
    patient_id = key.decode("utf-8", errors="replace")
    if value is None:
        return TreatmentUpdate(patient_id, None, replace=True)
    try:
        document = pydantic_core.from_json(value)
    except ValueError as err:
        raise DecodeError(Reason.UNDECODABLE, "not valid JSON") from err
    if not isinstance(document, dict):
        raise DecodeError(Reason.INVALID, "a treatment-context record is a JSON object")
    if "resourceType" in document:
        return _from_fhir(patient_id, document, recognition)
    canonical = {k: v for k, v in document.items() if k != "patient_id"}
    try:
        return TreatmentUpdate(patient_id, TreatmentRecord.model_validate(canonical), replace=True)
    except ValidationError as err:
        raise DecodeError(Reason.INVALID, describe_validation_error(err)) from err


def _from_fhir(patient_id: str, document: dict[str, Any], recognition: Recognition) -> TreatmentUpdate | None:
    try:
        med = _Medication.model_validate(document)
    except ValidationError as err:
        raise DecodeError(Reason.INVALID, describe_validation_error(err)) from err
    if med.resourceType not in ("MedicationAdministration", "MedicationRequest"):
        raise DecodeError(
            Reason.UNSUPPORTED_FORMAT,
            "FHIR resourceType: expected MedicationAdministration or MedicationRequest",
        )
    words = med.medicationCodeableConcept.words() if med.medicationCodeableConcept else " "
    if not mentions_infliximab("", words, recognition):
        return None  # another medication
    given = med.resourceType == "MedicationAdministration"
    if (given and med.status != "completed") or (not given and med.status != "active"):
        return None  # not given, or not the current regimen
    dosage = med.dosage if given else (med.dosageInstruction[0] if med.dosageInstruction else None)
    route = _route(dosage.route if dosage else None) or _route_of_brand(words, recognition)
    fields: dict[str, object] = {"route": route}
    if given:
        fields["last_dose_at"] = med.effectiveDateTime or (
            med.effectivePeriod.start if med.effectivePeriod else None
        )
    elif dosage and dosage.timing and dosage.timing.repeat:
        repeat = dosage.timing.repeat
        if repeat.period and repeat.periodUnit in _PERIOD_DAYS:
            fields["dosing_interval_days"] = round(repeat.period * _PERIOD_DAYS[repeat.periodUnit])
    try:
        record = TreatmentRecord.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as err:
        raise DecodeError(Reason.INVALID, describe_validation_error(err)) from err
    return TreatmentUpdate(patient_id, record, replace=False)


def _route(concept: _Concept | None) -> Route | None:
    if concept is None:
        return None
    for coding in concept.coding:
        if coding.code in _ROUTES:
            return _ROUTES[coding.code]
    words = concept.words()
    if " subcutaneous " in words or " sc " in words:
        return Route.SUBCUTANEOUS
    if " intravenous " in words or " iv " in words:
        return Route.INTRAVENOUS
    return None


def _route_of_brand(words: str, recognition: Recognition) -> Route | None:
    for brand in recognition.subcutaneous_brands:
        if phrase_text(brand) in words:
            return Route.SUBCUTANEOUS
    return None
