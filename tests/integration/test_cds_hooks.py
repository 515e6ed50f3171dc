"""`tdm-alerts cds-hooks` on the real broker: the open incident a low level opened is a card
when the chart is opened (read from the alert topic, no database), a card's feedback reaches the
service as an acknowledgement on record, and a resolve takes the card away."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid

import pytest

from tests.cds_client import ISSUER, CdsClient
from tests.conftest import RunningService, produce
from tests.integration.test_exactly_once import SERVICE, AlertReader
from tests.integration.test_follow_ups import DRAWN, _ack_topic, _levels
from tests.integration.test_patient_state import level, message

pytestmark = pytest.mark.integration


def _port(endpoint: RunningService) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in endpoint.log_text().splitlines():
            if '"cds hooks service listening"' in line:
                return int(json.loads(line)["port"])
        assert endpoint.alive(), endpoint.log_text()[-2000:]
        time.sleep(0.2)
    raise AssertionError(endpoint.log_text()[-2000:])


BASE = "https://tdm.hospital.example"


def _call(url: str, body: dict | None = None, client: CdsClient | None = None) -> tuple[int, dict]:
    """A request as the EHR sends it: signed for the endpoint it calls (`aud`)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if client is not None:
        path = "/" + url.split("/", 3)[3]
        headers["Authorization"] = f"Bearer {client.token(BASE + path)}"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, {}


def _view(patient: str) -> dict:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": patient},
    }


def test_a_page_is_a_card_when_the_chart_opens_and_its_feedback_goes_on_record(
    kafka_bootstrap, topics, start_service, service_env
):
    acks = _ack_topic(kafka_bootstrap, topics)
    env = {"TDM_ACK_TOPIC": acks, **SERVICE}
    patient = f"CDS-{uuid.uuid4().hex[:6]}"
    service = start_service(**env)
    ehr = CdsClient()
    endpoint = RunningService(
        {
            **service_env,
            **env,
            "TDM_CDS_HOOKS_PORT": "0",
            "TDM_CDS_HOOKS_URL": BASE,
            "TDM_CDS_HOOKS_ISSUERS": json.dumps({ISSUER: ehr.jwks_url}),
        },
        service.log_path.with_name("cds-hooks.log"),
        command="cds-hooks",
    )
    reader = AlertReader(kafka_bootstrap, topics["alerts"])
    try:
        url = f"http://127.0.0.1:{_port(endpoint)}"
        _levels(topics["input"], kafka_bootstrap, [patient])
        reader.wait_for(1, timeout_s=60, while_alive=[service])
        deadline, found = time.monotonic() + 30, []
        while not found and time.monotonic() < deadline:
            found = _call(f"{url}/cds-services/tdm-alerts-patient-view", _view(patient), ehr)[1].get(
                "cards", []
            )
            time.sleep(0.2)
        assert len(found) == 1 and found[0]["indicator"] in {"warning", "critical"}
        assert _call(f"{url}/cds-services/tdm-alerts-patient-view", _view(patient))[0] == 401  # unsigned
        assert _call(f"{url}/healthz")[0] == 200
        feedback = {
            "feedback": [
                {
                    "card": found[0]["uuid"],
                    "outcome": "overridden",
                    "overrideReason": {"reason": {"code": "repeat_level"}},
                    "outcomeTimestamp": "2026-12-08T09:00:00Z",
                }
            ]
        }
        assert _call(f"{url}/cds-services/tdm-alerts-patient-view/feedback", feedback, ehr)[0] == 200
        reader.wait_for(2, timeout_s=60, while_alive=[service])  # the update with the decision
        update = reader.alerts[-1]
        assert update["action"] == "update"
        assert [(a["decision"], a["via"], a["by"]) for a in update["acknowledgements"]] == [
            ("repeat_level", "cds-hooks", "ehr-user")
        ]
        # Corrected into range: the incident resolves and its card goes.
        produce(
            kafka_bootstrap,
            topics["input"],
            [message(patient, f"A-{patient}", f"S-{patient}", DRAWN, level("5.2", status="corrected"))],
            [patient.encode()],
        )
        reader.wait_for(3, timeout_s=60, while_alive=[service])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not _call(f"{url}/cds-services/tdm-alerts-patient-view", _view(patient), ehr)[1].get("cards"):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the resolved incident's card is still shown")
        assert patient not in endpoint.log_text()  # no patient identifier in its logs
    finally:
        reader.close()
        ehr.close()
        assert endpoint.stop() == 0
    assert service.stop() == 0
