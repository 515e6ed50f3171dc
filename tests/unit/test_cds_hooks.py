"""The CDS Hooks service over HTTP (a real local server): discovery, a card per open incident on
patient-view, order-sign only for an infliximab order, the patient found by the lab feed's
identifier, and feedback recorded as acknowledgements."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from consumer.cds_auth import TokenCheck
from consumer.cds_hooks import (
    ORDER_SIGN,
    PATIENT_VIEW,
    CdsHooksServer,
    OpenIncidents,
    card_id,
)
from interpretation import default_ruleset
from interpretation.acknowledgement import Acknowledgement
from tests.cds_client import ISSUER, CdsClient

SYSTEM = "urn:oid:1.2.3.4"


def event(action: str, key: str = "a" * 32, patient: str = "PT-9", severity: str = "high", **extra) -> dict:
    return {
        "action": action,
        "incident_key": key,
        "event_id": f"{action}-{key}"[:32],
        "severity": severity,
        "category": "subtherapeutic_level",
        "summary": "Infliximab trough 2.1 ug/mL below target 3-7 ug/mL",
        "recommendation": "Consider dose intensification.",
        "patient_id": patient,
        **extra,
    }


class Written:
    """The acknowledgements the server writes (the producer seam; Kafka is the integration test's)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def send(self, topic, key, value, headers, *, partition=None, timestamp_ms=None):
        self.sent.append((topic, key, value))

    def flush(self, timeout_s: float) -> None:
        pass


@pytest.fixture
def served() -> Iterator[tuple[str, OpenIncidents, Written]]:
    incidents, written = OpenIncidents(), Written()
    server = CdsHooksServer(
        "127.0.0.1",
        0,
        incidents=incidents,
        recognition=default_ruleset().recognition,
        patient_system=SYSTEM,
        ack_topic="acks",
        producer=written,  # type: ignore[arg-type]
        auth=None,  # who may ask: below
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}", incidents, written
    finally:
        server.shutdown()


def call(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def view(patient_id: str = "EHR-1", identifier: str | None = "PT-9") -> dict:
    request: dict = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/123", "patientId": patient_id},
    }
    if identifier is not None:
        request["prefetch"] = {
            "patient": {
                "resourceType": "Patient",
                "id": patient_id,
                "identifier": [
                    {"system": "urn:other", "value": "X"},
                    {"system": SYSTEM, "value": identifier},
                ],
            }
        }
    return request


def test_discovery_names_both_hooks(served):
    url, _, _ = served
    status, answer = call(f"{url}/cds-services")
    assert status == 200
    assert {(s["hook"], s["id"]) for s in answer["services"]} == {
        ("patient-view", PATIENT_VIEW),
        ("order-sign", ORDER_SIGN),
    }


def test_a_card_per_open_incident_found_by_the_lab_feeds_identifier_until_it_resolves(served):
    url, incidents, _ = served
    incidents.apply(event("trigger"))
    incidents.apply(event("trigger", key="b" * 32, severity="critical"))
    incidents.apply(event("trigger", key="c" * 32, patient="PT-OTHER"))
    status, answer = call(f"{url}/cds-services/{PATIENT_VIEW}", view())
    assert status == 200
    assert [c["indicator"] for c in answer["cards"]] == ["critical", "warning"]  # most severe first
    assert all(len(c["summary"]) <= 140 and c["source"]["label"] for c in answer["cards"])
    incidents.apply(event("resolve", key="b" * 32))
    assert len(call(f"{url}/cds-services/{PATIENT_VIEW}", view())[1]["cards"]) == 1
    # Without a prefetched Patient, the EHR's id is taken as the identifier.
    assert call(f"{url}/cds-services/{PATIENT_VIEW}", view("PT-9", identifier=None))[1]["cards"]
    assert call(f"{url}/cds-services/{PATIENT_VIEW}", view("NOBODY", identifier=None))[1] == {"cards": []}


def test_the_forecasts_least_change_is_the_cards_suggestion():
    forecast = {
        "status": "forecast",
        "regimens": [
            {"mg_per_kg": 5, "every_weeks": 8, "trough_ug_per_ml": 1.9, "probability_at_target": 0.2},
            {
                "mg_per_kg": 10,
                "every_weeks": 8,
                "trough_ug_per_ml": 4.1,
                "probability_at_target": 0.71,
                "least_change": True,
            },
        ],
    }
    incidents = OpenIncidents()
    incidents.apply(event("trigger", forecast=forecast))
    from consumer.cds_hooks import cards

    (card,) = cards(incidents.of("PT-9"))
    assert card["suggestions"][0]["label"].startswith("Least change: 10 mg/kg every 8 weeks")
    assert "71% likely" in card["suggestions"][0]["label"]


def test_order_sign_answers_only_for_an_infliximab_order(served):
    url, incidents, _ = served
    incidents.apply(event("trigger"))

    def order(text: str) -> dict:
        return {
            **view(),
            "hook": "order-sign",
            "context": {
                "userId": "Practitioner/123",
                "patientId": "EHR-1",
                "draftOrders": {
                    "resourceType": "Bundle",
                    "entry": [
                        {
                            "resource": {
                                "resourceType": "MedicationRequest",
                                "medicationCodeableConcept": {"text": text},
                            }
                        }
                    ],
                },
            },
        }

    assert call(f"{url}/cds-services/{ORDER_SIGN}", order("Infliximab-dyyb (Inflectra) 500 mg IV"))[1][
        "cards"
    ]
    assert call(f"{url}/cds-services/{ORDER_SIGN}", order("Vedolizumab 300 mg IV"))[1] == {"cards": []}
    assert call(f"{url}/cds-services/{ORDER_SIGN}", view())[0] == 400  # a patient-view request to order-sign


def test_feedback_is_recorded_as_an_acknowledgement_of_the_cards_incident(served):
    url, incidents, written = served
    incidents.apply(event("trigger"))
    (incident,) = incidents.of("PT-9")
    feedback = {
        "feedback": [
            {
                "card": card_id(incident),
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": "repeat_level", "system": "urn:tdm-alerts:override-reason"}
                },
                "outcomeTimestamp": "2026-12-08T09:00:00Z",
            },
            {"card": "not-a-card-of-ours", "outcome": "accepted", "outcomeTimestamp": "2026-12-08T09:00:00Z"},
        ]
    }
    assert call(f"{url}/cds-services/{PATIENT_VIEW}/feedback", feedback)[0] == 200
    ((topic, key, value),) = written.sent
    ack = Acknowledgement.model_validate_json(value)
    assert (topic, key) == ("acks", b"PT-9")
    assert (ack.incident_key, ack.decision.value, ack.via, ack.by) == (
        "a" * 32,
        "repeat_level",
        "cds-hooks",
        "ehr-user",
    )
    metrics = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    assert 'tdm_cds_feedback_total{outcome="overridden"} 1.0' in metrics
    bad = {"feedback": [{"card": card_id(incident), "outcome": "accepted", "outcomeTimestamp": "yesterday"}]}
    assert call(f"{url}/cds-services/{PATIENT_VIEW}/feedback", bad)[0] == 400


def test_what_is_not_a_hook_request_is_refused_plainly(served):
    url, _, _ = served
    assert call(f"{url}/cds-services/nope", {"hook": "patient-view"})[0] == 404
    assert call(f"{url}/cds-services/{PATIENT_VIEW}", {"hook": "patient-view", "context": {}})[0] == 400
    request = urllib.request.Request(f"{url}/cds-services/{PATIENT_VIEW}", data=b"{not json")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 400


# -- who may ask -----------------------------------------------------------------------------


@pytest.fixture
def guarded() -> Iterator[tuple[str, OpenIncidents, CdsClient]]:
    client = CdsClient()
    incidents = OpenIncidents()
    base = "https://tdm.hospital.example"
    server = CdsHooksServer(
        "127.0.0.1",
        0,
        incidents=incidents,
        recognition=default_ruleset().recognition,
        patient_system=SYSTEM,
        ack_topic=None,
        producer=None,
        auth=TokenCheck({ISSUER: client.jwks_url}, base),
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}", incidents, client
    finally:
        server.shutdown()
        client.close()


def bearer(url: str, body: dict, token: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def test_only_the_ehrs_signed_token_for_this_endpoint_once_and_short_lived_is_answered(guarded):
    url, incidents, client = guarded
    incidents.apply(event("trigger"))
    path = f"/cds-services/{PATIENT_VIEW}"
    aud = "https://tdm.hospital.example" + path
    assert bearer(url + path, view(), client.token(aud)) == 200
    assert bearer(url + path, view(), None) == 401  # no token
    assert bearer(url + path, view(), "not.a.jwt") == 401
    assert bearer(url + path, view(), client.token("https://elsewhere.example" + path)) == 401  # another aud
    assert bearer(url + path, view(), client.token(aud, lifetime_s=-120)) == 401  # expired
    assert bearer(url + path, view(), client.token(aud, lifetime_s=3600)) == 401  # lives an hour
    assert bearer(url + path, view(), client.token(aud, issuer="https://other-ehr.example")) == 401
    replayed = client.token(aud, jti="the-same-jti")
    assert bearer(url + path, view(), replayed) == 200
    assert bearer(url + path, view(), replayed) == 401  # a replay
    stranger = CdsClient()  # a key the issuer's JWKS does not hold, the same kid
    try:
        assert bearer(url + path, view(), stranger.token(aud)) == 401
    finally:
        stranger.close()
    feedback_aud = aud + "/feedback"
    assert bearer(url + path + "/feedback", {"feedback": []}, client.token(feedback_aud)) == 200
    assert bearer(url + path + "/feedback", {"feedback": []}, client.token(aud)) == 401
    assert call(f"{url}/cds-services")[0] == 200  # discovery names no patient: open
