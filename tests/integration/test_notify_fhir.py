"""`tdm-alerts notify` into a real FHIR server (HAPI FHIR's JPA server, started by the test), on
the real broker: an incident's trigger, update and resolve are one DetectedIssue updated in
place and one Flag that ends inactive, and a kill -9 of the notifier between the server applying
a Bundle and the notifier reading its answer duplicates nothing when the Bundle comes again."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import RunningService
from tests.fhir_server import fhir_server, resources, versions
from tests.integration.test_exactly_once import SERVICE, wait_until
from tests.integration.test_notify import _notifier, _notify_settings, _send

pytestmark = pytest.mark.integration

PATIENT = "PT-CHART"
UPDATE = b"0.8 ug/mL"  # what only the update's Bundle says


@pytest.fixture(scope="module")
def fhir_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fhir_server(tmp_path_factory.mktemp("fhir") / "fhir-server.log") as base:
        yield base


class KillingProxy:
    """Between the notifier and the FHIR server: each Bundle is passed on and the server's answer
    returned, except the first one `kill_after` picks: the server applies it, then the notifier
    is killed -9 before it can read the answer (it never learns the Bundle was taken)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.posted: list[tuple[bytes, int]] = []
        self.victim: RunningService | None = None
        self.killed = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, answer = proxy.forward(body)
                proxy.posted.append((body, status))
                if proxy.victim is not None and not proxy.killed.is_set() and UPDATE in body:
                    proxy.victim.kill()
                    proxy.killed.set()
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/fhir"

    def forward(self, body: bytes) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.upstream, data=body, method="POST", headers={"Content-Type": "application/fhir+json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read()


def _of_patient(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r
        for r in found
        if r.get("subject", r.get("patient", {})).get("identifier", {}).get("value") == PATIENT
    ]


def test_an_incident_is_one_detected_issue_and_one_flag_through_a_kill_mid_delivery(
    topics, service_env, start_service, tmp_path, fhir_base
):
    kafka_bootstrap = service_env["TDM_BOOTSTRAP_SERVERS"]
    proxy = KillingProxy(fhir_base)
    notify = _notify_settings(kafka_bootstrap, topics, TDM_NOTIFY_FHIR_URL=proxy.url)
    service = start_service(**SERVICE)
    notifier = proxy.victim = _notifier(service_env, tmp_path, "notifier-1", **notify)

    def issues() -> list[dict[str, Any]]:
        return _of_patient(resources(fhir_base, "DetectedIssue"))

    def explain() -> str:
        answers = [status for _, status in proxy.posted]
        return f"the server's answers: {answers}\n{notifier.log_text()[-3000:]}\n{service.log_text()[-1500:]}"

    try:
        _send(kafka_bootstrap, topics["input"], "1.2", patient=PATIENT)  # subtherapeutic: the trigger
        wait_until(lambda: len(issues()) == 1, timeout_s=90, explain=explain)
        _send(kafka_bootstrap, topics["input"], "0.8", status="corrected", patient=PATIENT)  # an update
        wait_until(proxy.killed.is_set, timeout_s=90, explain=explain)
        notifier = _notifier(service_env, tmp_path, "notifier-2", **notify)
        # The update comes again: its offset was never committed.
        updates = lambda: sum(UPDATE in body for body, _ in proxy.posted)  # noqa: E731
        wait_until(lambda: updates() >= 2, timeout_s=90, explain=explain)
        _send(kafka_bootstrap, topics["input"], "5.0", status="corrected", patient=PATIENT)  # resolved
        flags = lambda: _of_patient(resources(fhir_base, "Flag"))  # noqa: E731
        wait_until(lambda: [f["status"] for f in flags()] == ["inactive"], timeout_s=90, explain=explain)
        assert notifier.stop() == 0 and service.stop() == 0
    finally:
        proxy.http.shutdown()

    assert all(200 <= status < 300 for _, status in proxy.posted), [s for _, s in proxy.posted]
    [issue] = issues()
    details = [v["detail"] for v in versions(fhir_base, issue)]
    # Updated in place: the trigger's version, then the update's, then the resolve's.
    assert "1.2" in details[0] and any("0.8" in d for d in details[1:]), details
    assert issue["status"] == "final"
    [flag] = flags()
    statuses = [v["status"] for v in versions(fhir_base, flag)]
    assert statuses[0] == "active" and statuses[-1] == "inactive", statuses
    # One CommunicationRequest per event however often it was posted: trigger, update, resolve.
    requests = _of_patient(resources(fhir_base, "CommunicationRequest"))
    assert len(proxy.posted) > 3 and len(requests) == 3, (len(proxy.posted), len(requests))
    assert sorted(r["status"] for r in requests) == ["active", "active", "completed"]
    assert {r["about"][0]["reference"] for r in requests} == {f"DetectedIssue/{issue['id']}"}
