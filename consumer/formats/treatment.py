"""Records of the treatment-context topic: compacted, keyed by patient id, a tombstone deletes.

These shapes are read:

- our canonical record (`{"phase": "induction", "induction_start": "2026-09-01", "route": ...,
  "doses": [{"at": ..., "amount": 400, "unit": "mg"}], "weight_kg": 78}`), the patient's whole
  treatment context: it replaces what was known;
- a FHIR R4 MedicationAdministration (an infliximab dose given: its time, amount, route) or
  MedicationRequest (the regimen: route, dosing interval), which update the fields they carry;
- a FHIR R4 Observation of body weight (LOINC 29463-7) or serum albumin (1751-7), or another
  code the rule set lists for them: covariates of the next-trough forecast;
- an HL7 v2 RAS^O17 administration message (`consumer.formats.administration`).

Medications other than infliximab and its biosimilars are skipped; a brand that exists only as
a subcutaneous product (Zymfentra, Remsima SC) sets the route.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consumer.dead_letters import Reason
from consumer.formats.administration import decode_administration, is_administration
from consumer.formats.administration import patient_of as administration_patient
from consumer.formats.errors import DecodeError, describe_validation_error
from interpretation.covariates import Unusable, covariate_of, measured
from interpretation.lab_result import Route
from interpretation.recognition import mentions_infliximab, phrase_text
from interpretation.ruleset import Recognition
from interpretation.treatment import TreatmentRecord

# SNOMED CT route codes (FHIR's route value set) for the two ways infliximab is given.
_ROUTES = {"47625008": Route.INTRAVENOUS, "34206005": Route.SUBCUTANEOUS}
_PERIOD_DAYS = {"d": 1, "wk": 7}
# Dose units as UCUM codes or unit text, to mg or mg/kg and the factor that takes them there.
_DOSE_UNITS: dict[str, tuple[str, Decimal]] = {
    "mg": ("mg", Decimal(1)),
    "g": ("mg", Decimal(1000)),
    "mg/kg": ("mg/kg", Decimal(1)),
}
# MedicationAdministration statuses (FHIR R4): an infusion begun is a dose (a stopped one was
# given in part; its time counts); one entered in error or not done is withdrawn.
_GIVEN_STATUSES = frozenset({"completed", "in-progress", "stopped"})
_WITHDRAWN_STATUSES = frozenset({"entered-in-error", "not-done"})


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


class _Quantity(BaseModel):
    model_config = ConfigDict(extra="ignore")
    value: Decimal | None = None
    unit: str | None = None
    code: str | None = None

    def unit_key(self) -> str:
        return (self.code or self.unit or "").strip().lower()


class _Dosage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    route: _Concept | None = None
    timing: _Timing | None = None
    dose: _Quantity | None = None


class _Observation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    resourceType: str  # noqa: N815
    status: str
    code: _Concept
    valueQuantity: _Quantity | None = None  # noqa: N815
    effectiveDateTime: datetime | None = None  # noqa: N815


class _Period(BaseModel):
    model_config = ConfigDict(extra="ignore")
    start: datetime | None = None


class _Reference(BaseModel):
    model_config = ConfigDict(extra="ignore")
    reference: str | None = None
    display: str | None = None


class _Contained(BaseModel):
    model_config = ConfigDict(extra="ignore")
    resourceType: str | None = None  # noqa: N815
    id: str | None = None
    code: _Concept | None = None


class _Medication(BaseModel):
    model_config = ConfigDict(extra="ignore")
    resourceType: str  # noqa: N815
    id: str | None = None
    status: str
    medicationCodeableConcept: _Concept | None = None  # noqa: N815
    medicationReference: _Reference | None = None  # noqa: N815
    contained: list[_Contained] = Field(default_factory=list)
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
    if value.lstrip()[:3] == b"MSH":
        if not is_administration(value):
            raise DecodeError(Reason.UNSUPPORTED_FORMAT, "HL7 v2 on the context topic: expected RAS^O17")
        given = decode_administration(value, recognition)
        return TreatmentUpdate(patient_id, given, replace=False) if given is not None else None
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
    if document.get("resourceType") == "Observation":
        return _from_observation(patient_id, document, recognition)
    if document.get("resourceType") == "Patient":
        return _from_patient(patient_id, document)
    return _from_medication(patient_id, document, recognition)


def _from_medication(
    patient_id: str, document: dict[str, Any], recognition: Recognition
) -> TreatmentUpdate | None:
    try:
        med = _Medication.model_validate(document)
    except ValidationError as err:
        raise DecodeError(Reason.INVALID, describe_validation_error(err)) from err
    if med.resourceType not in ("MedicationAdministration", "MedicationRequest"):
        raise DecodeError(
            Reason.UNSUPPORTED_FORMAT,
            "FHIR resourceType: expected MedicationAdministration, MedicationRequest, Observation or Patient",
        )
    words = _medication_words(med)
    if not mentions_infliximab("", words, recognition):
        return None  # another medication
    given = med.resourceType == "MedicationAdministration"
    if given and med.status in _WITHDRAWN_STATUSES:
        if med.id is None:
            return None  # nothing known to withdraw
        return TreatmentUpdate(patient_id, TreatmentRecord(withdrawn=(med.id,)), replace=False)
    if (given and med.status not in _GIVEN_STATUSES) or (not given and med.status != "active"):
        return None  # not given, or not the current regimen
    dosage = med.dosage if given else (med.dosageInstruction[0] if med.dosageInstruction else None)
    route = _route(dosage.route if dosage else None) or _route_of_brand(words, recognition)
    fields: dict[str, object] = {"route": route}
    if given:
        at = med.effectiveDateTime or (med.effectivePeriod.start if med.effectivePeriod else None)
        if at is None:
            raise DecodeError(
                Reason.INVALID, "MedicationAdministration: effectiveDateTime or effectivePeriod.start"
            )
        fields["last_dose_at"] = at
        fields["doses"] = [{"at": at, "id": med.id, **_amount(dosage.dose if dosage else None)}]
    elif dosage and dosage.timing and dosage.timing.repeat:
        repeat = dosage.timing.repeat
        if repeat.period and repeat.periodUnit in _PERIOD_DAYS:
            fields["dosing_interval_days"] = round(repeat.period * _PERIOD_DAYS[repeat.periodUnit])
    try:
        record = TreatmentRecord.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as err:
        raise DecodeError(Reason.INVALID, describe_validation_error(err)) from err
    return TreatmentUpdate(patient_id, record, replace=False)


def _from_observation(
    patient_id: str, document: dict[str, Any], recognition: Recognition
) -> TreatmentUpdate | None:
    """Body weight or serum albumin; other observations are not the context topic's."""
    try:
        obs = _Observation.model_validate(document)
    except ValidationError as err:
        raise DecodeError(Reason.INVALID, describe_validation_error(err)) from err
    codes = {c.code for c in obs.code.coding if c.system in (None, "http://loinc.org") and c.code}
    covariate = covariate_of(codes, recognition)
    quantity = obs.valueQuantity
    if covariate is None or obs.status not in ("final", "amended", "corrected"):
        return None
    if quantity is None or quantity.value is None:
        return None
    try:
        record = measured(covariate, quantity.value, quantity.code or quantity.unit, obs.effectiveDateTime)
    except Unusable as err:
        raise DecodeError(Reason.INVALID, f"valueQuantity: {err}") from err
    return TreatmentUpdate(patient_id, record, replace=False)


class _Patient(BaseModel):
    model_config = ConfigDict(extra="ignore")
    gender: str | None = None
    birthDate: date | None = None  # noqa: N815


def _from_patient(patient_id: str, document: dict[str, Any]) -> TreatmentUpdate | None:
    """A FHIR Patient: the sex and birth date the forecast's model takes (female clearance and
    central volume are lower; the model's population sets an age range). Administrative gender
    `other` or `unknown` says nothing the model can use."""
    try:
        patient = _Patient.model_validate(document)
    except ValidationError as err:
        raise DecodeError(Reason.INVALID, describe_validation_error(err)) from err
    sex = patient.gender if patient.gender in ("female", "male") else None
    if sex is None and patient.birthDate is None:
        return None
    record = TreatmentRecord(sex=sex, birth_date=patient.birthDate)
    return TreatmentUpdate(patient_id, record, replace=False)


def _medication_words(med: _Medication) -> str:
    """The medication's names: its code, or the Medication it references (contained, or the
    reference's display)."""
    if med.medicationCodeableConcept is not None:
        return med.medicationCodeableConcept.words()
    reference = med.medicationReference
    if reference is None:
        return " "
    if reference.reference and reference.reference.startswith("#"):
        wanted = reference.reference[1:]
        for resource in med.contained:
            if resource.resourceType == "Medication" and resource.id == wanted and resource.code:
                return resource.code.words()
    return phrase_text(reference.display or "")


def _amount(dose: _Quantity | None) -> dict[str, object]:
    """The dose in mg or mg/kg; none when the record gives no amount or a unit we cannot convert
    (the infusion's time still counts; a forecast says the dose is unknown)."""
    if dose is None or dose.value is None:
        return {"amount": None}
    found = _DOSE_UNITS.get(dose.unit_key())
    if found is None:
        raise DecodeError(
            Reason.INVALID, "MedicationAdministration dosage.dose: the unit must be mg, g or mg/kg"
        )
    unit, factor = found
    return {"amount": dose.value * factor, "unit": unit}


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


_CONTEXT_FIELDS = frozenset(TreatmentRecord.model_fields)
_CONTEXT_RESOURCES = frozenset({"MedicationAdministration", "MedicationRequest", "Patient"})


def context_in_file(message: bytes, recognition: Recognition) -> tuple[list[TreatmentUpdate], bytes | None]:
    """For `interpret`, which reads a patient's whole history from one file: the treatment-context
    records in `message`, and what is left of it for the lab pipeline (None: nothing). With no
    record key, the patient comes from the record (patient_id, subject, PID-3). A FHIR Bundle
    may hold both: its context resources are taken out, its lab results left."""
    if is_administration(message):
        return _updates([decode_treatment(_key(administration_patient(message)), message, recognition)]), None
    try:
        document = pydantic_core.from_json(message)
    except ValueError:
        return [], message
    if not isinstance(document, dict):
        return [], message
    if document.get("resourceType") == "Bundle" and isinstance(document.get("entry"), list):
        found, rest = [], []
        for entry in document["entry"]:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and _is_context(resource, recognition):
                found.append(_from_resource(resource, recognition))
                if resource.get("resourceType") == "Patient":
                    rest.append(entry)  # the lab results name their patient through it too
            else:
                rest.append(entry)
        if not found:
            return [], message
        left = json.dumps({**document, "entry": rest}).encode() if rest else None
        return _updates(found), left
    if _is_context(document, recognition):
        return _updates([_from_resource(document, recognition)]), None
    if "resourceType" not in document and "results" not in document and _CONTEXT_FIELDS & document.keys():
        return _updates([decode_treatment(_key(document.get("patient_id")), message, recognition)]), None
    return [], message


def _is_context(resource: dict[str, Any], recognition: Recognition) -> bool:
    kind = resource.get("resourceType")
    return kind in _CONTEXT_RESOURCES or (kind == "Observation" and _covariate_codes(resource, recognition))


def _from_resource(resource: dict[str, Any], recognition: Recognition) -> TreatmentUpdate | None:
    subject = resource.get("subject") or {}
    reference = subject.get("reference", "") if isinstance(subject, dict) else ""
    if resource.get("resourceType") == "Patient":
        reference = str(resource.get("id") or "")
    patient = _key(str(reference).rpartition("/")[2])
    return decode_treatment(patient, json.dumps(resource).encode(), recognition)


def _updates(found: list[TreatmentUpdate | None]) -> list[TreatmentUpdate]:
    return [u for u in found if u is not None]  # None: another medication, or a dose not given


def _key(patient: object) -> bytes | None:
    return str(patient).encode() if patient else None


def _covariate_codes(document: dict[str, Any], recognition: Recognition) -> bool:
    code = document.get("code")
    codings = code.get("coding", []) if isinstance(code, dict) else []
    codes = {str(c.get("code")) for c in codings if isinstance(c, dict)}
    return covariate_of(codes, recognition) is not None
