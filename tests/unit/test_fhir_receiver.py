"""The FHIR receiver's client side over real HTTP: SMART Backend Services (a signed client
assertion checked by a token endpoint with the client's public key), the transaction Bundle
posted with the token, a refused token renewed, and a refusal reported by its codes only.

The server here is the test's own (it checks what a FHIR server and an authorization server
would); no FHIR server served by a registry could be run here (README "Into the chart")."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fhir.resources.R4B.bundle import Bundle

from consumer.clients.seam import Record
from consumer.loop.waiting import NotYet
from consumer.notify.events import read_event
from consumer.notify.fhir import FhirOptions
from consumer.notify.fhir_auth import ASSERTION_TYPE, BackendServices
from consumer.notify.lanes import Entry
from consumer.notify.notifiers import FhirNotifier, FhirServer
from consumer.notify.sending import Sender, Undelivered

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
EVENT = {
    "alert_schema": "tdm-alerts/alert@3",
    "action": "trigger",
    "incident_key": "a" * 32,
    "event_id": "b" * 32,
    "severity": "high",
    "category": "subtherapeutic_level",
    "summary": "Infliximab trough 2.1 ug/mL below target",
    "patient_id": "PT-SECRET-9",
}


class Server(BaseHTTPRequestHandler):
    """A token endpoint (/token) and a FHIR base (/fhir) in one, scripted per test."""

    tokens: list[str]
    bundles: list[dict]
    assertions: list[dict]
    answers: list[tuple[int, dict]]  # what /fhir answers next, then 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        if self.path == "/token":
            form = dict(urllib.parse.parse_qsl(body.decode()))
            assert form["grant_type"] == "client_credentials"
            assert form["client_assertion_type"] == ASSERTION_TYPE
            claims = jwt.decode(
                form["client_assertion"],
                KEY.public_key(),
                algorithms=["RS384"],
                audience=f"http://127.0.0.1:{self.server.server_port}/token",
            )
            assert claims["iss"] == claims["sub"] == "tdm-alerts" and claims["exp"] - claims["iat"] <= 300
            cls.assertions.append(claims)
            token = f"token-{len(cls.tokens)}"
            cls.tokens.append(token)
            self._send(200, {"access_token": token, "token_type": "bearer", "expires_in": 300})
            return
        if self.headers.get("Authorization") != f"Bearer {cls.tokens[-1] if cls.tokens else ''}":
            self._send(
                401, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]}
            )
            return
        bundle = json.loads(body)
        Bundle.model_validate(bundle)
        cls.bundles.append(bundle)
        status, answer = (
            cls.answers.pop(0)
            if cls.answers
            else (200, {"resourceType": "Bundle", "type": "transaction-response"})
        )
        self._send(status, answer)

    def _send(self, status: int, answer: dict) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served() -> Iterator[tuple[type[Server], str]]:
    handler = type("S", (Server,), {"tokens": [], "bundles": [], "assertions": [], "answers": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def notifier(url: str) -> FhirNotifier:
    client = httpx.Client(timeout=5)
    tokens = BackendServices(
        f"{url}/token", "tdm-alerts", PEM, "key-1", "system/DetectedIssue.write", client=client
    )
    return FhirNotifier(FhirServer(f"{url}/fhir", tokens, FhirOptions()), Sender(client, budget_s=60), client)


def entry() -> Entry:
    value = json.dumps(EVENT).encode()
    record = Record("alerts", 0, 7, b"PT-SECRET-9", value, (), None)
    return Entry(record, read_event(value), 7)


def test_a_bundle_is_posted_with_a_token_from_a_signed_client_assertion(served):
    handler, url = served
    notifier(url).notify(entry(), datetime(2026, 12, 8, tzinfo=UTC))
    assert len(handler.assertions) == 1 and len(handler.bundles) == 1
    assert handler.bundles[0]["type"] == "transaction"


def test_a_refused_token_is_renewed_and_the_event_sent_again(served):
    handler, url = served
    sending, waiting = notifier(url), entry()
    now = datetime(2026, 12, 8, tzinfo=UTC)
    sending.notify(waiting, now)
    handler.tokens.append("rotated-server-side")  # the token we hold is no longer the server's
    again = entry()
    with pytest.raises(NotYet):
        sending.notify(again, now)  # 401: the token is dropped, the event waits
    handler.tokens.pop()
    sending.notify(again, now)  # a new token is asked for, then the Bundle goes
    assert len(handler.assertions) == 2 and len(handler.bundles) == 2


def test_a_refusal_is_final_and_names_the_outcomes_codes_never_its_text(served):
    handler, url = served
    handler.answers.append(
        (
            422,
            {
                "resourceType": "OperationOutcome",
                "issue": [
                    {"severity": "error", "code": "processing", "diagnostics": "Patient PT-SECRET-9 unknown"}
                ],
            },
        )
    )
    with pytest.raises(Undelivered) as refused:
        notifier(url).notify(entry(), datetime(2026, 12, 8, tzinfo=UTC))
    assert refused.value.permanent and "error/processing" in refused.value.reason
    assert "PT-SECRET-9" not in refused.value.reason
