"""An alert event as the FHIR R4 resources a hospital's EHR takes in: one transaction Bundle.

What the FHIR receiver will send for each event (issue 41), and what `tdm-alerts interpret
--as fhir` prints so an integration engineer can check it without a server. No I/O.

- `DetectedIssue`: the finding (code, severity, the Observation it implicates, the summary as
  its detail; once acknowledged, the decisions as its mitigations), one per incident, updated in
  place: a conditional update (`PUT DetectedIssue?identifier=...`) on an identifier made from
  the incident key, so a re-delivery changes nothing and an update or a resolve replaces it.
- `Flag`: active while the incident is open, inactive once it resolves; same identifier.
- `CommunicationRequest`: this event's message to the clinician (priority from severity, the
  summary and recommendation as payload, `about` the issue); created once per event
  (`ifNoneExist` on the event id).
- `RiskAssessment`: a level's next-trough forecast (the probability that the current regimen's
  trough reaches the target, and that of the least change), when the event carries one.
- `Task`: a follow-up (antibodies not resulted, a page not acknowledged), due when it fired,
  completed when its incident resolves.

The patient is referenced by identifier (`Patient?identifier` semantics, a logical reference):
the EHR holds the patient, this service only knows the identifier the lab feed used.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from consumer.notify.events import AlertEvent
from consumer.settings import Settings
from interpretation.alerts import Action, Severity

INCIDENT_SYSTEM = "urn:tdm-alerts:incident"
EVENT_SYSTEM = "urn:tdm-alerts:event"
CATEGORY_SYSTEM = "urn:tdm-alerts:category"
FINDING_SYSTEM = "urn:tdm-alerts:finding"
RESULT_SYSTEM = "urn:tdm-alerts:result"  # the lab's result id, else its accession, as the feed sent it
# DetectedIssue.severity (high | moderate | low) and CommunicationRequest.priority
# (routine | urgent | asap | stat) for our severities.
ISSUE_SEVERITY = {Severity.CRITICAL: "high", Severity.HIGH: "moderate", Severity.LOW: "low"}
PRIORITY = {Severity.CRITICAL: "stat", Severity.HIGH: "urgent", Severity.LOW: "routine"}
COMMUNICATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
_NAMESPACE = uuid.UUID("6f1c3c2e-8b7a-4f43-9d61-2f3d0c7a5e10")  # this service's: fullUrls are stable


@dataclass(frozen=True, slots=True)
class FhirOptions:
    """What the hospital decides: the system of the patient identifiers the lab feed sends (an
    MRN's `urn:oid:...`), and who the CommunicationRequest is for (a reference such as
    `PractitionerRole/tdm-pharmacist` or `Group/ibd-team`; none: the EHR routes it)."""

    patient_system: str = "urn:tdm-alerts:patient-id"
    recipient: str | None = None


def options_from(settings: Settings) -> FhirOptions:
    return FhirOptions(settings.fhir_patient_system, settings.fhir_recipient)


def transaction(event: AlertEvent, now: datetime, options: FhirOptions = FhirOptions()) -> dict[str, Any]:
    """The transaction Bundle for one alert event (a JSON object, as it is posted)."""
    extra: Mapping[str, Any] = event.model_extra or {}
    patient = _patient(extra, options)
    issue_url = _urn("DetectedIssue", event.incident_key)
    open_ = event.act is not Action.RESOLVE
    entries = [
        _put(
            "DetectedIssue",
            INCIDENT_SYSTEM,
            event.incident_key,
            issue_url,
            _issue(event, extra, patient, now),
        ),
        _put(
            "Flag",
            INCIDENT_SYSTEM,
            event.incident_key,
            _urn("Flag", event.incident_key),
            _flag(event, extra, patient, open_),
        ),
        _create(
            "CommunicationRequest",
            EVENT_SYSTEM,
            event.event_id,
            _communication(event, patient, issue_url, now, options=options, open_=open_),
        ),
    ]
    if (risk := _risk(event, extra, patient, now)) is not None:
        entries.append(_create("RiskAssessment", EVENT_SYSTEM, event.event_id, risk))
    if (task := _task(event, extra, patient, issue_url, open_)) is not None:
        entries.append(
            _put("Task", INCIDENT_SYSTEM, event.incident_key, _urn("Task", event.incident_key), task)
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _urn(kind: str, key: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{kind}/{key}')}"


def _identifier(system: str, value: str) -> dict[str, str]:
    return {"system": system, "value": value}


def _put(kind: str, system: str, value: str, full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    """A conditional update on the identifier: created the first time, replaced after."""
    resource = {"resourceType": kind, "identifier": [_identifier(system, value)], **resource}
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "PUT", "url": f"{kind}?identifier={system}|{value}"},
    }


def _create(kind: str, system: str, value: str, resource: dict[str, Any]) -> dict[str, Any]:
    """A conditional create on the identifier: once, however often the event is delivered."""
    resource = {"resourceType": kind, "identifier": [_identifier(system, value)], **resource}
    return {
        "fullUrl": _urn(kind, value),
        "resource": resource,
        "request": {"method": "POST", "url": kind, "ifNoneExist": f"identifier={system}|{value}"},
    }


def _patient(extra: Mapping[str, Any], options: FhirOptions) -> dict[str, Any]:
    patient_id = extra.get("patient_id")
    if isinstance(patient_id, str) and patient_id:
        return {"type": "Patient", "identifier": _identifier(options.patient_system, patient_id)}
    return {"type": "Patient", "display": "the patient of the lab result (not named in the event)"}


def _observation(extra: Mapping[str, Any]) -> dict[str, Any] | None:
    """The result the event is about, by the identifier the lab gave it."""
    for name in ("result_id", "accession"):
        if isinstance(value := extra.get(name), str) and value:
            return {"type": "Observation", "identifier": _identifier(RESULT_SYSTEM, value)}
    return None


def _code(event: AlertEvent) -> dict[str, Any]:
    codings = [{"system": CATEGORY_SYSTEM, "code": event.category}]
    if event.finding:
        codings.append({"system": FINDING_SYSTEM, "code": event.finding})
    return {"coding": codings, "text": event.category.replace("_", " ")}


def _issue(
    event: AlertEvent, extra: Mapping[str, Any], patient: dict[str, Any], now: datetime
) -> dict[str, Any]:
    issue: dict[str, Any] = {
        "status": _issue_status(event, extra),
        "code": _code(event),
        "severity": ISSUE_SEVERITY[event.level],
        "patient": patient,
        "identifiedDateTime": _when(extra.get("collected_at"), now),
        "detail": event.summary,
    }
    if (observation := _observation(extra)) is not None:
        issue["implicated"] = [observation]
        issue["evidence"] = [{"detail": [observation]}]
    mitigations = [
        {
            "action": {"coding": [{"system": "urn:tdm-alerts:decision", "code": a["decision"]}]},
            "date": a["at"],
            # The role that acknowledged, never a name.
            "author": {"display": a["by"]},
        }
        for a in extra.get("acknowledgements") or ()
        if isinstance(a, dict) and {"decision", "at", "by"} <= a.keys()
    ]
    if mitigations:
        issue["mitigation"] = mitigations
    return issue


def _issue_status(event: AlertEvent, extra: Mapping[str, Any]) -> str:
    """An incident resolved because its result was withdrawn ends as the result did (entered in
    error, or cancelled); any other resolve is the finding's end, which the Flag and the
    mitigations record."""
    if event.act is Action.RESOLVE:
        withdrawn = {"entered_in_error": "entered-in-error", "cancelled": "cancelled"}
        return withdrawn.get(str(extra.get("result_status")), "final")
    return "final"


def _flag(
    event: AlertEvent, extra: Mapping[str, Any], patient: dict[str, Any], open_: bool
) -> dict[str, Any]:
    return {
        "status": "active" if open_ else "inactive",
        "category": [{"coding": [{"system": FLAG_CATEGORY, "code": "clinical"}]}],
        "code": {**_code(event), "text": event.summary},
        "subject": patient,
    }


def _communication(
    event: AlertEvent,
    patient: dict[str, Any],
    issue_url: str,
    now: datetime,
    *,
    options: FhirOptions,
    open_: bool,
) -> dict[str, Any]:
    payload = [{"contentString": event.summary}]
    if event.recommendation:
        payload.append({"contentString": event.recommendation})
    request: dict[str, Any] = {
        "status": "active" if open_ else "completed",
        "category": [{"coding": [{"system": COMMUNICATION_CATEGORY, "code": "alert"}]}],
        "priority": PRIORITY[event.level],
        "subject": patient,
        "about": [{"reference": issue_url}],
        "payload": payload,
        "authoredOn": _iso(now),
    }
    if options.recipient:
        request["recipient"] = [{"reference": options.recipient}]
    return request


def _risk(
    event: AlertEvent, extra: Mapping[str, Any], patient: dict[str, Any], now: datetime
) -> dict[str, Any] | None:
    forecast = extra.get("forecast")
    if not isinstance(forecast, dict) or forecast.get("status") != "forecast":
        return None
    target = forecast.get("target_ug_per_ml")
    predictions = []
    for regimen in [
        forecast.get("current"),
        *(r for r in forecast.get("regimens") or () if r.get("least_change")),
    ]:
        if not isinstance(regimen, dict):
            continue
        low, high = regimen.get("interval_ug_per_ml") or (None, None)
        predictions.append(
            {
                "outcome": {"text": f"trough at or above {target} ug/mL"},
                "probabilityDecimal": regimen["probability_at_target"],
                "rationale": (
                    f"{regimen['mg_per_kg']} mg/kg every {regimen['every_weeks']} weeks: trough "
                    f"{regimen['trough_ug_per_ml']} ug/mL (90%: {low} to {high})"
                ),
            }
        )
    if not predictions:
        return None
    risk: dict[str, Any] = {
        "status": "final",
        "subject": patient,
        "occurrenceDateTime": _iso(now),
        "method": {"text": forecast.get("model", "")},
        "prediction": predictions,
        "note": [{"text": forecast.get("sentence", "")}],
    }
    if (observation := _observation(extra)) is not None:
        risk["basis"] = [observation]
    return risk


def _task(
    event: AlertEvent, extra: Mapping[str, Any], patient: dict[str, Any], issue_url: str, open_: bool
) -> dict[str, Any] | None:
    follow_up = extra.get("follow_up")
    if not isinstance(follow_up, dict):
        return None
    task: dict[str, Any] = {
        "status": "requested" if open_ else "completed",
        "intent": "order",
        "priority": PRIORITY[event.level],
        "code": {"coding": [{"system": "urn:tdm-alerts:follow-up", "code": str(follow_up.get("kind"))}]},
        "description": event.summary,
        "focus": {"reference": issue_url},
        "for": patient,
        "authoredOn": follow_up.get("fired_at"),
        "restriction": {"period": {"end": follow_up.get("due_at")}},
    }
    if open_:
        task["businessStatus"] = {"text": "overdue"}  # it fires when its deadline has passed
    return task


def _when(value: object, now: datetime) -> str:
    """A FHIR dateTime: with a time, a time zone is required, so a draw time the lab sent without
    one (HL7 often does) is given as its date."""
    if not isinstance(value, str) or not value:
        return _iso(now)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return _iso(now)
    return _iso(moment) if moment.tzinfo is not None else moment.date().isoformat()


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
