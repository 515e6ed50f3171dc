"""FHIR R4 lab results: an Observation, or a Bundle of Observations with the resources they cite.

The models below cover only the elements this service reads and ignore the rest. A full
FHIR model library (fhir.resources, R4B) validates a one-Observation Bundle in about 250 us
on our benchmark machine, some 10x the cost of these models, and a lab feed is 99% results
we only need to skip; see docs/benchmarks.md.

Where things come from (first non-empty wins):
    patient_id   the subject Patient's MR identifier (or its first), the subject reference's
                 identifier, then the id in the subject reference
    accession    the Specimen's accessionIdentifier, then the identifier of a DiagnosticReport
                 listing the Observation
    specimen_id  the Specimen's first identifier, then the id in the specimen reference
    collected_at effectiveDateTime, effectivePeriod.start, effectiveInstant, Specimen
                 collection.collectedDateTime
    result_id    the Observation's first identifier, then its id
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from consumer.dead_letters import Reason
from consumer.formats.errors import (
    DecodeError,
    Relevance,
    describe_validation_error,
    json_refusal,
    lab_result,
    truncated,
)
from interpretation import LabResult, ResultStatus
from interpretation.lab_result import COMMENT_MAX_CHARS

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
MAX_RESOURCES = 5000
M = TypeVar("M", bound=BaseModel)

_STATUS = {
    "registered": ResultStatus.PRELIMINARY,
    "preliminary": ResultStatus.PRELIMINARY,
    "final": ResultStatus.FINAL,
    "amended": ResultStatus.CORRECTED,
    "corrected": ResultStatus.CORRECTED,
    "cancelled": ResultStatus.CANCELLED,
    "entered-in-error": ResultStatus.ENTERED_IN_ERROR,
    "unknown": ResultStatus.PRELIMINARY,  # nobody vouches for it, so it must not page
}


class _Element(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Coding(_Element):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class CodeableConcept(_Element):
    coding: list[Coding] = Field(default_factory=list)
    text: str | None = None


class Identifier(_Element):
    system: str | None = None
    value: str | None = None
    type: CodeableConcept | None = None


class Reference(_Element):
    reference: str | None = None
    identifier: Identifier | None = None
    display: str | None = None


class Quantity(_Element):
    value: Decimal | None = None
    comparator: Literal["<", "<=", ">=", ">"] | None = None
    unit: str | None = None
    system: str | None = None
    code: str | None = None


class ReferenceRange(_Element):
    low: Quantity | None = None
    high: Quantity | None = None
    text: str | None = None


class Period(_Element):
    start: datetime | None = None


class Annotation(_Element):
    text: str | None = None


class Observation(_Element):
    resourceType: Literal["Observation"]
    id: str | None = None
    identifier: list[Identifier] = Field(default_factory=list)
    status: str
    code: CodeableConcept
    subject: Reference | None = None
    specimen: Reference | None = None
    effectiveDateTime: datetime | None = None
    effectivePeriod: Period | None = None
    effectiveInstant: datetime | None = None
    valueQuantity: Quantity | None = None
    valueString: str | None = None
    valueCodeableConcept: CodeableConcept | None = None
    interpretation: list[CodeableConcept] = Field(default_factory=list)
    referenceRange: list[ReferenceRange] = Field(default_factory=list)
    note: list[Annotation] = Field(default_factory=list)
    performer: list[Reference] = Field(default_factory=list)


class _ObservationCode(_Element):
    """Just enough of an Observation to decide whether it is ours before reading the rest."""

    code: CodeableConcept


class Patient(_Element):
    identifier: list[Identifier] = Field(default_factory=list)


class SpecimenCollection(_Element):
    collectedDateTime: datetime | None = None


class Specimen(_Element):
    identifier: list[Identifier] = Field(default_factory=list)
    accessionIdentifier: Identifier | None = None
    collection: SpecimenCollection | None = None


class DiagnosticReport(_Element):
    identifier: list[Identifier] = Field(default_factory=list)
    result: list[Reference] = Field(default_factory=list)


class _Entry(_Element):
    fullUrl: str | None = None
    resource: dict[str, Any] | None = None


class _Bundle(_Element):
    type: str
    entry: list[_Entry] = Field(default_factory=list, max_length=MAX_RESOURCES)


def decode_fhir(document: dict[str, Any], relevant: Relevance) -> list[LabResult]:
    """The relevant results in a parsed FHIR JSON document (an Observation or a Bundle)."""
    if resource_type(document) == "Observation":
        return _Resolver({}).results([(None, document)], relevant)
    bundle = _validated(_Bundle, document, "Bundle")
    resources = [(e.fullUrl, e.resource) for e in bundle.entry if e.resource is not None]
    return _Resolver(_index(resources)).results(resources, relevant)


ResourceType = Literal["Observation", "Bundle"]


def resource_type(document: dict[str, Any]) -> ResourceType:
    """The document's resourceType, if it is one this service reads; else DecodeError."""
    return _known_resource(document.get("resourceType"))


def _known_resource(kind: object) -> ResourceType:
    if kind in ("Observation", "Bundle"):
        return kind  # narrowed to the Literal by `in`; no cast to evaluate at run time
    # The value is the sender's free text (it could be anything, a name included): never echoed.
    shown = "is not one this service reads" if isinstance(kind, str) else "is missing"
    raise DecodeError(Reason.UNSUPPORTED_FORMAT, f"FHIR resourceType {shown}: expected Observation or Bundle")


_DOCUMENT = TypeAdapter(dict[str, Any])


def parse_document(data: bytes) -> dict[str, Any]:
    """A FHIR message's JSON object, whole (for a message that may hold our results)."""
    try:
        return _DOCUMENT.validate_json(data)
    except ValidationError as err:
        raise json_refusal(err, "fhir") from err


def _validated(model: type[M], raw: Any, where: str) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise DecodeError(Reason.INVALID, f"{where}: {describe_validation_error(err)}") from err


def _index(resources: list[tuple[str | None, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Resources by every name a reference may use: fullUrl and `Type/id`."""
    found: dict[str, dict[str, Any]] = {}
    for full_url, resource in resources:
        if full_url:
            found[full_url] = resource
        kind, rid = resource.get("resourceType"), resource.get("id")
        if isinstance(kind, str) and isinstance(rid, str):
            found[f"{kind}/{rid}"] = resource
    return found


class _Resolver:
    def __init__(self, by_reference: dict[str, dict[str, Any]]) -> None:
        self.by_reference = by_reference
        self._reports: list[tuple[DiagnosticReport, set[str]]] | None = None

    def results(
        self, resources: list[tuple[str | None, dict[str, Any]]], relevant: Relevance
    ) -> list[LabResult]:
        found: list[LabResult] = []
        for position, (full_url, resource) in enumerate(resources):
            if resource.get("resourceType") != "Observation":
                continue
            where = (
                f"Observation {position}" if full_url is None else f"Bundle entry {position} (Observation)"
            )
            code = _validated(_ObservationCode, resource, where).code
            chosen = _relevant_coding(code, relevant)
            if chosen is None:
                continue
            observation = _validated(Observation, resource, where)
            found.append(self._result(observation, chosen, full_url, where))
        return found

    def _result(self, obs: Observation, coding: Coding, full_url: str | None, where: str) -> LabResult:
        if (status := _STATUS.get(obs.status)) is None:
            raise DecodeError(
                Reason.INVALID,
                f"{where}: status is not an Observation status (one of {', '.join(sorted(_STATUS))})",
            )
        specimen = self._resolve(obs.specimen, "Specimen", Specimen)
        value, unit = _value(obs)
        return lab_result(
            where,
            patient_id=self._patient_id(obs, where),
            accession=_value_of(specimen.accessionIdentifier if specimen else None)
            or self._report_accession(obs, full_url),
            specimen_id=(_first_identifier(specimen.identifier) if specimen else None)
            or _reference_id(obs.specimen),
            result_id=_first_identifier(obs.identifier) or obs.id,
            collected_at=obs.effectiveDateTime
            or (obs.effectivePeriod.start if obs.effectivePeriod else None)
            or obs.effectiveInstant
            or (specimen.collection.collectedDateTime if specimen and specimen.collection else None),
            code=coding.code or "",
            code_system=_system_name(coding.system),
            display=coding.display or obs.code.text,
            value=value,
            unit=unit,
            reference_range=_reference_range(obs.referenceRange),
            abnormal_flags=tuple(
                c.code for i in obs.interpretation for c in i.coding if c.code and len(c.code) <= 10
            ),
            status=status,
            # The performing lab names the assay, which decides whose antibody cut-off applies.
            performing_lab=next((truncated(p.display, 200) for p in obs.performer if p.display), None),
            comments=tuple(truncated(n.text, COMMENT_MAX_CHARS) for n in obs.note[:20] if n.text),
        )

    def _resolve(self, ref: Reference | None, kind: str, model: type[M]) -> M | None:
        if ref is None or not ref.reference:
            return None
        raw = self.by_reference.get(ref.reference)
        if raw is None or raw.get("resourceType") != kind:
            return None  # not in this message; the reference alone must do
        return _validated(model, raw, f"the {kind} it refers to")  # never the reference: it may be an MRN

    def _patient_id(self, obs: Observation, where: str) -> str:
        patient = self._resolve(obs.subject, "Patient", Patient)
        if patient is not None:
            for identifier in patient.identifier:
                if (
                    identifier.value
                    and identifier.type
                    and any(c.code == "MR" for c in identifier.type.coding)
                ):
                    return identifier.value
            if found := _first_identifier(patient.identifier):
                return found
        if obs.subject is not None and (
            found := _value_of(obs.subject.identifier) or _reference_id(obs.subject)
        ):
            return found
        raise DecodeError(Reason.INVALID, f"{where}: subject names no patient")

    def _report_accession(self, obs: Observation, full_url: str | None) -> str | None:
        names = {n for n in (full_url, f"Observation/{obs.id}" if obs.id else None) if n}
        if not names:
            return None
        if self._reports is None:  # built once per Bundle, and only if an Observation needs it
            self._reports = [
                (report, {r.reference for r in report.result if r.reference})
                for raw in self.by_reference.values()
                if raw.get("resourceType") == "DiagnosticReport"
                for report in [_validated(DiagnosticReport, raw, "DiagnosticReport")]
            ]
        for report, results in self._reports:
            if names & results:
                return _first_identifier(report.identifier)
        return None


def _relevant_coding(code: CodeableConcept, relevant: Relevance) -> Coding | None:
    """The first coding that is ours, LOINC first; code.text alone may also name the test."""
    codings = sorted(code.coding, key=lambda c: c.system != LOINC)
    for coding in codings:
        if (coding.code or coding.display) and relevant(coding.code or "", coding.display or code.text):
            return coding
    if code.text and relevant("", code.text):
        # Only the text names the test, so the text stands in as its (local) code.
        return Coding(code=code.text[:200], display=code.text)
    return None


def _value(obs: Observation) -> tuple[str | None, str | None]:
    if (q := obs.valueQuantity) is not None:
        if q.value is None:
            return None, q.unit
        unit = q.code if q.system == UCUM and q.code else q.unit or q.code
        return f"{q.comparator or ''}{q.value}", unit
    if obs.valueString is not None:
        return truncated(obs.valueString.strip(), 200), None
    if (cc := obs.valueCodeableConcept) is not None:
        text = cc.text or next((c.display or c.code for c in cc.coding if c.display or c.code), None)
        return text, None
    return None, None


def _reference_range(ranges: list[ReferenceRange]) -> str | None:
    if not ranges:
        return None
    first = ranges[0]
    if first.text:
        return truncated(first.text, 100)
    low = first.low.value if first.low else None
    high = first.high.value if first.high else None
    if low is not None and high is not None:
        return f"{low}-{high}"
    if high is not None:
        return f"<={high}"
    if low is not None:
        return f">={low}"
    return None


def _system_name(system: str | None) -> str | None:
    return "LN" if system == LOINC else system


def _value_of(identifier: Identifier | None) -> str | None:
    return identifier.value if identifier is not None and identifier.value else None


def _first_identifier(identifiers: list[Identifier]) -> str | None:
    return next((i.value for i in identifiers if i.value), None)


def _reference_id(ref: Reference | None) -> str | None:
    """`Patient/123` gives 123; a urn:uuid reference is no identifier a person could use."""
    if ref is None or not ref.reference or ref.reference.startswith("urn:"):
        return None
    return ref.reference.rsplit("/", 1)[-1] or None
