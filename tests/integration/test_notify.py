"""`tdm-alerts notify` against real receivers: the Alertmanager server itself (Debian's
prometheus-alertmanager) and a signature-checking webhook receiver, on the real broker."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kafka import KafkaProducer

from tests.conftest import RunningService
from tests.integration.test_exactly_once import SERVICE, wait_until

pytestmark = pytest.mark.integration

RESEND_S = 3  # the notifier's re-send interval here; an alert ends 4 re-sends after the last one


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail("prometheus-alertmanager is missing: `make test` installs it", pytrace=False)
    port = _free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        "global:\n  resolve_timeout: 5s\nroute:\n  receiver: nowhere\nreceivers:\n  - name: nowhere\n"
    )
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "alertmanager.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_until(up, timeout_s=30)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def active_alerts(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts?active=true", timeout=5) as response:
        found = json.loads(response.read())
    return [
        a
        for a in found
        if a["labels"].get("alertname") == "InfliximabTDM" and a["status"]["state"] == "active"
    ]


def _send(bootstrap: str, topic: str, value: str, status: str = "final") -> None:
    message = {
        "patient_id": "PT-PAGE",
        "accession": "A-PAGE",
        "results": [
            {"code": "39803-2", "value": value, "unit": "ug/mL", "status": status, "result_id": "R1"}
        ],
    }
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    producer.send(topic, json.dumps(message).encode(), key=b"PT-PAGE")
    producer.flush()
    producer.close()


def _notifier(service_env: dict[str, str], tmp_path: Path, name: str, **settings: str) -> RunningService:
    return RunningService({**service_env, **settings}, tmp_path / f"{name}.log", command="notify")


def test_an_incident_stays_active_in_alertmanager_until_it_resolves_through_a_kill(
    topics, service_env, start_service, alertmanager, tmp_path
):
    """Alertmanager resolves an alert whose client stops re-sending it: the page must stay up while
    the incident is open (through a kill -9 of the notifier), be updated in place, and end when
    the correction resolves it."""
    notify = {
        "TDM_NOTIFY_ALERTMANAGER_URL": alertmanager,
        "TDM_NOTIFY_RESEND_S": str(RESEND_S),
        "TDM_NOTIFY_GROUP_ID": f"n-{uuid.uuid4().hex[:8]}",
        "TDM_NOTIFY_DLQ_TOPIC": topics["dlq"] + ".undelivered",
        "TDM_NOTIFY_INCIDENTS_TOPIC": topics["alerts"] + ".incidents",
        **SERVICE,
    }
    kafka_bootstrap = service_env["TDM_BOOTSTRAP_SERVERS"]
    admin_topics(kafka_bootstrap, [notify["TDM_NOTIFY_DLQ_TOPIC"]])
    service = start_service(**SERVICE)
    notifier = _notifier(service_env, tmp_path, "notifier-1", **notify)
    _send(kafka_bootstrap, topics["input"], "1.2")
    wait_until(lambda: len(active_alerts(alertmanager)) == 1, timeout_s=60)
    [alert] = active_alerts(alertmanager)
    assert alert["labels"]["service"] == "tdm-alerts" and "PT-PAGE" not in json.dumps(alert)

    time.sleep(RESEND_S * 6)  # past the end of any one post: only the re-sends keep it active
    assert len(active_alerts(alertmanager)) == 1, notifier.log_text()[-2000:]

    notifier.kill()  # kill -9 mid-incident; a new instance takes the partitions and the incidents
    notifier = _notifier(service_env, tmp_path, "notifier-2", **notify)
    time.sleep(RESEND_S * 6)
    assert len(active_alerts(alertmanager)) == 1, notifier.log_text()[-2000:]

    _send(kafka_bootstrap, topics["input"], "0.8", status="corrected")  # still low: an update
    wait_until(lambda: "0.8" in json.dumps(active_alerts(alertmanager)), timeout_s=60)
    assert len(active_alerts(alertmanager)) == 1  # in place, not a second alert

    _send(kafka_bootstrap, topics["input"], "5.0", status="corrected")  # into range: resolved
    wait_until(lambda: not active_alerts(alertmanager), timeout_s=60)
    assert notifier.stop() == 0 and service.stop() == 0


def admin_topics(bootstrap: str, names: list[str]) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(n, 1, 1) for n in names])
    finally:
        admin.close()


class _Receiver(BaseHTTPRequestHandler):
    """A webhook receiver as the README tells one to be written: verify, refuse replays, dedupe."""

    secret = b""
    keys: Counter[str]
    accepted: list[tuple[str, bytes, str]]
    down_for = 0  # answer 503 to this many requests first

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).down_for > 0:
            type(self).down_for -= 1
            self.send_response(503)
            self.end_headers()
            return
        stamp = self.headers["X-TDM-Timestamp"]
        expected = "v1=" + hmac.new(self.secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        fresh = abs(time.time() - int(stamp)) < 300
        ok = hmac.compare_digest(expected, self.headers["X-TDM-Signature"]) and fresh
        if ok:
            self.keys[self.headers["Idempotency-Key"]] += 1
            type(self).accepted.append((stamp, body, self.headers["X-TDM-Signature"]))
        self.send_response(202 if ok else 401)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_signed_webhook_gets_every_event_once_keyed_even_after_being_down(
    kafka_bootstrap, topics, service_env, start_service, tmp_path
):
    secret = tmp_path / "webhook-secret"
    secret.write_text("a-shared-secret\n")
    handler = type(
        "Receiver", (_Receiver,), {"secret": b"a-shared-secret", "keys": Counter(), "accepted": []}
    )
    handler.down_for = 3  # the receiver is down when the first event comes
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        undelivered = topics["dlq"] + ".undelivered"
        admin_topics(kafka_bootstrap, [undelivered])
        service = start_service(**SERVICE)
        notifier = _notifier(
            service_env,
            tmp_path,
            "notifier",
            TDM_NOTIFY_WEBHOOK_URL=f"http://127.0.0.1:{server.server_port}/tdm",
            TDM_NOTIFY_WEBHOOK_SECRET_FILE=str(secret),
            TDM_NOTIFY_GROUP_ID=f"n-{uuid.uuid4().hex[:8]}",
            TDM_NOTIFY_DLQ_TOPIC=undelivered,
            TDM_NOTIFY_INCIDENTS_TOPIC=topics["alerts"] + ".incidents",
            **SERVICE,
        )
        _send(kafka_bootstrap, topics["input"], "1.2")
        _send(kafka_bootstrap, topics["input"], "5.0", status="corrected")
        wait_until(lambda: sum(handler.keys.values()) >= 2, timeout_s=90)
        assert notifier.stop() == 0 and service.stop() == 0
        assert len(handler.keys) == 2 and set(handler.keys.values()) == {1}, handler.keys
        assert notifier.log_text().count('"delivery failed; retrying"') == 3  # it waited out the outage
        # The signature is over the timestamp and the body: a tampered body or an old request is refused.
        stamp, body, signature = handler.accepted[0]
        url = f"http://127.0.0.1:{server.server_port}/tdm"
        assert _post(url, body + b" ", stamp, signature) == 401
        old = str(int(stamp) - 3600)
        resigned = (
            "v1=" + hmac.new(b"a-shared-secret", old.encode() + b"." + body, hashlib.sha256).hexdigest()
        )
        assert _post(url, body, old, resigned) == 401
        assert _post(url, body, stamp, signature) == 202
    finally:
        server.shutdown()


def _post(url: str, body: bytes, stamp: str, signature: str) -> int:
    headers = {"X-TDM-Timestamp": stamp, "X-TDM-Signature": signature, "Idempotency-Key": "probe"}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        return urllib.request.urlopen(request, timeout=5).status
    except urllib.error.HTTPError as err:
        return err.code
