"""HL7 v2 RAS^O17 pharmacy administration messages on the treatment-context topic (python-hl7).

Many hospitals' medication feeds are v2. Each RXA for infliximab (or a biosimilar) that was
completed is one infusion: RXA-3 its start, RXA-6 and RXA-7 its amount and unit (mg or mg/kg),
and the RXR that follows it the route; an OBX with a body-weight code (LOINC 29463-7 and the
rule set's others) gives the body weight and OBX-14 when it was measured. They update the
patient's record (a dose joins the doses), as a FHIR MedicationAdministration does.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

import hl7  # type: ignore[import-untyped]  # python-hl7 ships no type hints
from pydantic import ValidationError

from consumer.dead_letters import Reason
from consumer.formats.errors import DecodeError, describe_validation_error
from consumer.formats.hl7v2 import hl7_text, split_messages
from interpretation.covariates import Covariate, Unusable, covariate_of, measured
from interpretation.lab_result import Route
from interpretation.recognition import mentions_infliximab, phrase_text
from interpretation.ruleset import Recognition
from interpretation.treatment import DoseGiven, TreatmentRecord

# HL7 table 0162 (route of administration) and the NCI thesaurus codes some feeds send.
_ROUTES = {
    "IV": Route.INTRAVENOUS,
    "C38276": Route.INTRAVENOUS,
    "SC": Route.SUBCUTANEOUS,
    "C38299": Route.SUBCUTANEOUS,
}
_DOSE_UNITS = {"mg": ("mg", Decimal(1)), "g": ("mg", Decimal(1000)), "mg/kg": ("mg/kg", Decimal(1))}
_GIVEN = {"", "CP", "PA"}  # complete, partially administered; RE refused and NA not given are not doses


def is_administration(data: bytes) -> bool:
    """An HL7 v2 message of type RAS (MSH-9)."""
    head = data[:300].lstrip()
    if not head.startswith(b"MSH") or len(head) < 4:
        return False
    fields = head.split(b"\r", 1)[0].split(b"\n", 1)[0].split(head[3:4])
    return len(fields) > 8 and fields[8][:3] == b"RAS"


def patient_of(data: bytes) -> str | None:
    """PID-3's first identifier: where no record key names the patient (a file for `interpret`)."""
    for text in split_messages(hl7_text(data)):
        for segment in text.split("\r"):
            if segment.startswith("PID"):
                fields = segment.split(segment[3:4] if len(segment) > 3 else "|")
                first = fields[3].split("~")[0].split("^")[0] if len(fields) > 3 else ""
                return first or None
    return None


def decode_administration(data: bytes, recognition: Recognition) -> TreatmentRecord | None:
    """The infusions (and weight) of infliximab the message records, or None if it holds none."""
    doses: list[DoseGiven] = []
    route: Route | None = None
    weight: TreatmentRecord | None = None
    for number, text in enumerate(split_messages(hl7_text(data)), start=1):
        try:
            message = hl7.parse(text)
        # python-hl7 raises what its slicing hits on untrusted bytes; each means "not parseable".
        except Exception as err:
            raise DecodeError(Reason.UNDECODABLE, f"message {number}: not parseable as HL7 v2") from err
        ours = False  # the RXA just read was infliximab: its RXR is ours too
        for segment in message:
            kind = str(segment[0])
            if kind == "RXA":
                ours = False
                dose = _dose(segment, number, recognition)
                if dose is not None:
                    ours = True
                    doses.append(dose)
            elif kind == "RXR" and ours:
                route = _ROUTES.get(_part(segment, 1, 0).upper(), route)
            elif kind == "OBX" and covariate_of({_part(segment, 3, 0)}, recognition) is Covariate.BODY_WEIGHT:
                weight = _weight(segment, number)
    if not doses and weight is None:
        return None
    try:
        given = TreatmentRecord(doses=tuple(doses), route=route)
    except ValidationError as err:
        raise DecodeError(Reason.INVALID, describe_validation_error(err)) from err
    return given.merged_with(weight) if weight is not None else given


def _dose(rxa: Any, number: int, recognition: Recognition) -> DoseGiven | None:
    code, name = _part(rxa, 5, 0), _part(rxa, 5, 1)
    if not mentions_infliximab(code, phrase_text(name), recognition):
        return None  # another medication
    if _part(rxa, 20, 0).upper() not in _GIVEN:
        return None  # refused or not given
    where = f"message {number}: RXA"
    found = _DOSE_UNITS.get(_part(rxa, 7, 0).lower()) or _DOSE_UNITS.get(_part(rxa, 7, 1).lower())
    if found is None:
        raise DecodeError(Reason.INVALID, f"{where}-7: the dose unit must be mg, g or mg/kg")
    unit, factor = found
    try:
        amount = Decimal(_part(rxa, 6, 0))
        start = hl7.parse_datetime(_part(rxa, 3, 0))
    except (InvalidOperation, ValueError, TypeError) as err:
        raise DecodeError(Reason.INVALID, f"{where}-3 or RXA-6: not a time and an amount") from err
    if start is None:
        raise DecodeError(Reason.INVALID, f"{where}-3: the start of the infusion is missing")
    try:
        return DoseGiven(at=_plain(start), amount=amount * factor, unit=unit)
    except ValidationError as err:
        raise DecodeError(Reason.INVALID, f"{where}: {describe_validation_error(err)}") from err


def _weight(obx: Any, number: int) -> TreatmentRecord:
    where = f"message {number}: OBX"
    try:
        value = Decimal(_part(obx, 5, 0))
        at = hl7.parse_datetime(_part(obx, 14, 0))
    except (InvalidOperation, ValueError, TypeError) as err:
        raise DecodeError(
            Reason.INVALID, f"{where}-5 body weight is not a number, or OBX-14 no time"
        ) from err
    try:
        # A pharmacy system's weight with no unit is in kilograms, as its dosing is per kg.
        return measured(Covariate.BODY_WEIGHT, value, _part(obx, 6, 0) or "kg", _plain(at) if at else None)
    except Unusable as err:
        raise DecodeError(Reason.INVALID, f"{where}: {err}") from err


def _plain(moment: datetime) -> datetime:
    """python-hl7's own offset class as a plain timezone, so the time serialises as ISO."""
    offset = moment.utcoffset()
    return moment.replace(tzinfo=timezone(offset)) if offset is not None else moment


def _part(segment: Any, field: int, component: int) -> str:
    node: Any = segment[field] if field < len(segment) else ""
    for index in (0, component, 0):  # first repetition, the component, its first subcomponent
        if isinstance(node, str):
            node = node if index == 0 else ""
        else:
            node = node[index] if index < len(node) else ""
    return str(node).strip()
