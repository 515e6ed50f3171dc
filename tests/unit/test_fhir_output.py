"""The FHIR R4 transaction Bundle of an alert event (`consumer.notify.fhir`, `interpret --as fhir`):
every resource validated by fhir.resources (R4B structures), the incident's resources updated in
place by their identifier, the event's created once, and the file's events one Bundle each."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from consumer.cli import main
from consumer.notify.events import AlertEvent
from consumer.notify.fhir import INCIDENT_SYSTEM, FhirOptions, transaction
from interpretation import default_ruleset
from interpretation.alerts import FollowUpKind
from tests.conftest import DATA

NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
DRAWN = "2026-11-02T08:00:00+00:00"


# FHIR R4's required bindings for the codes we set (fhir.resources checks a code's form, not
# its value set): request-status, request-priority, observation-status (DetectedIssue,
# RiskAssessment), detectedissue-severity, flag-status, task-status and task-intent.
REQUIRED = {
    ("DetectedIssue", "status"): {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    },
    ("DetectedIssue", "severity"): {"high", "moderate", "low"},
    ("Flag", "status"): {"active", "inactive", "entered-in-error"},
    ("CommunicationRequest", "status"): {
        "draft",
        "active",
        "on-hold",
        "revoked",
        "completed",
        "entered-in-error",
        "unknown",
    },
    ("CommunicationRequest", "priority"): {"routine", "urgent", "asap", "stat"},
    ("RiskAssessment", "status"): {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    },
    ("Task", "status"): {
        "draft",
        "requested",
        "received",
        "accepted",
        "rejected",
        "ready",
        "cancelled",
        "in-progress",
        "on-hold",
        "failed",
        "completed",
        "entered-in-error",
    },
    ("Task", "intent"): {
        "unknown",
        "proposal",
        "plan",
        "order",
        "original-order",
        "reflex-order",
        "filler-order",
        "instance-order",
        "option",
    },
    ("Task", "priority"): {"routine", "urgent", "asap", "stat"},
}


def valid(bundle: dict) -> dict[str, dict]:
    """The bundle validated whole and resource by resource; its resources by type."""
    Bundle.model_validate(bundle)
    found: dict[str, dict] = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        for (kind, name), allowed in REQUIRED.items():
            if kind == resource["resourceType"] and name in resource:
                assert resource[name] in allowed, (kind, name, resource[name])
        assert entry["request"]["method"] in {"PUT", "POST"}
        found[resource["resourceType"]] = entry
    return found


def bundles(capsys, *argv: str) -> list[dict]:
    main(["interpret", *argv, "--as", "fhir"])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def events(capsys, *argv: str) -> list[dict]:
    main(["interpret", *argv])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return [event for line in lines for event in line.get("events", ())]


def test_every_event_of_the_sample_feed_is_one_valid_bundle(capsys):
    expected = events(capsys, str(DATA / "sample-feed.jsonl"))
    found = bundles(capsys, str(DATA / "sample-feed.jsonl"))
    assert len(found) == len(expected) > 0
    for bundle, event in zip(found, expected, strict=True):
        resources = valid(bundle)
        issue = resources["DetectedIssue"]
        assert (
            issue["request"]["url"] == f"DetectedIssue?identifier={INCIDENT_SYSTEM}|{event['incident_key']}"
        )
        flag = resources["Flag"]["resource"]
        assert flag["status"] == ("inactive" if event["action"] == "resolve" else "active")
        communication = resources["CommunicationRequest"]
        assert communication["request"]["ifNoneExist"].endswith(f"|{event['event_id']}")


def test_an_incident_is_one_detected_issue_and_one_flag_from_trigger_to_resolve(tmp_path, capsys):
    def line(value: str, status: str = "final") -> str:
        result = {"code": "39803-2", "value": value, "unit": "ug/mL", "status": status}
        return json.dumps(
            {"patient_id": "PT-F", "specimen_id": "S-1", "collected_at": DRAWN, "results": [result]}
        )

    feed = tmp_path / "life.jsonl"
    feed.write_text("\n".join([line("1.2"), line("0.9", "corrected"), line("5.1", "corrected")]))
    found = [valid(b) for b in bundles(capsys, str(feed))]
    assert len(found) == 3  # trigger, update (worse), resolve (corrected into range)
    urls = {r["DetectedIssue"]["request"]["url"] for r in found}
    flags = {r["Flag"]["request"]["url"] for r in found}
    assert len(urls) == len(flags) == 1  # one resource each, updated in place
    assert [r["Flag"]["resource"]["status"] for r in found] == ["active", "active", "inactive"]
    creates = [r["CommunicationRequest"]["request"]["ifNoneExist"] for r in found]
    assert len(set(creates)) == 3  # one message per event, each created once
    again = [valid(b) for b in bundles(capsys, str(feed))]
    assert again == found  # the same events give the same bundles: a re-delivery changes nothing


def test_a_forecast_is_a_risk_assessment_and_a_follow_up_a_task(tmp_path, capsys):
    rule = default_ruleset().follow_up(FollowUpKind.ANTIBODIES_NOT_RESULTED)
    assert rule is not None
    records = [
        {"patient_id": "PT-R", "weight_kg": 70, "route": "intravenous"},
        *(
            {
                "resourceType": "MedicationAdministration",
                "status": "completed",
                "subject": {"reference": "Patient/PT-R"},
                "medicationCodeableConcept": {"text": "Infliximab"},
                "effectiveDateTime": (datetime.fromisoformat(DRAWN) - timedelta(days=d)).isoformat(),
                "dosage": {"dose": {"value": 5, "unit": "mg/kg"}},
            }
            for d in (56, 112, 168)
        ),
        {
            "patient_id": "PT-R",
            "specimen_id": "S-R",
            "collected_at": DRAWN,
            "results": [{"code": "39803-2", "value": "1.6", "unit": "ug/mL", "status": "final"}],
        },
    ]
    feed = tmp_path / "forecast.jsonl"
    feed.write_text("\n".join(json.dumps(r) for r in records))
    due = datetime.fromisoformat(DRAWN) + timedelta(hours=float(rule.due_after_hours))
    found = [valid(b) for b in bundles(capsys, str(feed), "--now", (due + timedelta(days=1)).isoformat())]
    risks = [r["RiskAssessment"]["resource"] for r in found if "RiskAssessment" in r]
    assert risks and all(0 <= p["probabilityDecimal"] <= 1 for p in risks[0]["prediction"])
    tasks = [r["Task"]["resource"] for r in found if "Task" in r]
    assert len(tasks) == 1 and tasks[0]["status"] == "requested"
    assert tasks[0]["restriction"]["period"]["end"].startswith(due.date().isoformat())


def test_acknowledgements_are_mitigations_by_role_and_no_patient_is_named_when_there_is_none():
    event = AlertEvent.model_validate(
        {
            "action": "update",
            "incident_key": "a" * 32,
            "event_id": "b" * 32,
            "severity": "critical",
            "category": "antibodies",
            "summary": "Antibodies to infliximab",
            "collected_at": "2026-11-02T08:00:00",  # no offset: given as its date
            "acknowledgements": [
                {"by": "pharmacist", "at": "2026-11-03T09:00:00Z", "decision": "switched", "via": "cli"}
            ],
        }
    )
    resources = valid(transaction(event, NOW, FhirOptions(recipient="PractitionerRole/tdm-pharmacist")))
    issue = resources["DetectedIssue"]["resource"]
    assert issue["mitigation"][0]["action"]["coding"][0]["code"] == "switched"
    assert issue["mitigation"][0]["author"] == {"display": "pharmacist"}
    assert issue["identifiedDateTime"] == "2026-11-02" and issue["severity"] == "high"
    assert "identifier" not in issue["patient"]
    communication = resources["CommunicationRequest"]["resource"]
    assert communication["priority"] == "stat"
    assert communication["recipient"] == [{"reference": "PractitionerRole/tdm-pharmacist"}]


@pytest.mark.parametrize("severity", ["critical", "high", "low", "newer-than-this-version"])
def test_every_severity_maps_to_a_valid_priority(severity):
    event = AlertEvent.model_validate(
        {
            "action": "trigger",
            "incident_key": "c" * 32,
            "event_id": "d" * 32,
            "severity": severity,
            "category": "subtherapeutic_level",
            "summary": "low",
            "patient_id": "PT-1",
        }
    )
    valid(transaction(event, NOW))


@pytest.mark.parametrize(
    ("result_status", "issue_status"),
    [("entered_in_error", "entered-in-error"), ("cancelled", "cancelled"), ("corrected", "final")],
)
def test_an_incident_resolved_by_its_withdrawn_result_ends_as_the_result_did(result_status, issue_status):
    event = AlertEvent.model_validate(
        {
            "action": "resolve",
            "incident_key": "e" * 32,
            "event_id": "f" * 32,
            "severity": "high",
            "category": "subtherapeutic_level",
            "summary": "resolved",
            "patient_id": "PT-1",
            "result_status": result_status,
        }
    )
    resources = valid(transaction(event, NOW))
    assert resources["DetectedIssue"]["resource"]["status"] == issue_status
    assert resources["Flag"]["resource"]["status"] == "inactive"
