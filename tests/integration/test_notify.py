"""`tdm-alerts notify` against real receivers: the Alertmanager server itself (Debian's
prometheus-alertmanager) and a signature-checking webhook receiver, on the real broker."""

from __future__ import annotations

import hashlib
import hmac
import itertools
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
from kafka import KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment, ConsumerProtocolSubscription

from consumer.clients.kafka_python import in_group
from tests.conftest import RunningService
from tests.integration.test_exactly_once import SERVICE, wait_until

pytestmark = pytest.mark.integration

RESEND_S = 3  # the notifier's re-send interval here; an alert ends 4 re-sends after the last one


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_alertmanager(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    """The real Alertmanager on `port`, resolving an alert nobody re-sends after 5 s."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail("prometheus-alertmanager is missing: `make test` installs it", pytrace=False)
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
    except BaseException:
        proc.terminate()
        raise
    return proc


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    proc = _start_alertmanager(tmp_path, port)
    try:
        yield f"http://127.0.0.1:{port}"
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


def _send(bootstrap: str, topic: str, value: str, status: str = "final", patient: str = "PT-PAGE") -> None:
    message = {
        "patient_id": patient,
        "accession": "A-" + patient.removeprefix("PT-"),  # not the patient id: PagerDuty gets it
        "results": [
            {"code": "39803-2", "value": value, "unit": "ug/mL", "status": status, "result_id": "R1"}
        ],
    }
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    producer.send(topic, json.dumps(message).encode(), key=patient.encode())
    producer.flush()
    producer.close()


def _notifier(service_env: dict[str, str], tmp_path: Path, name: str, **settings: str) -> RunningService:
    return RunningService({**service_env, **settings}, tmp_path / f"{name}.log", command="notify")


def _notify_settings(bootstrap: str, topics: dict[str, str], **receiver: str) -> dict[str, str]:
    """The notifier's own group and topics for one test (its dead-letter topic made), and `receiver`."""
    undelivered = topics["dlq"] + ".undelivered"
    admin_topics(bootstrap, [undelivered])
    return {
        "TDM_NOTIFY_GROUP_ID": f"n-{uuid.uuid4().hex[:8]}",
        "TDM_NOTIFY_DLQ_TOPIC": undelivered,
        "TDM_NOTIFY_INCIDENTS_TOPIC": topics["alerts"] + ".incidents",
        **SERVICE,
        **receiver,
    }


def test_an_incident_stays_active_in_alertmanager_until_it_resolves_through_a_kill(
    topics, service_env, start_service, alertmanager, tmp_path
):
    """Alertmanager resolves an alert whose client stops re-sending it: the page must stay up while
    the incident is open (through a kill -9 of the notifier), be updated in place, and end when
    the correction resolves it."""
    kafka_bootstrap = service_env["TDM_BOOTSTRAP_SERVERS"]
    notify = _notify_settings(
        kafka_bootstrap, topics, TDM_NOTIFY_ALERTMANAGER_URL=alertmanager, TDM_NOTIFY_RESEND_S=str(RESEND_S)
    )
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


def test_open_incidents_move_with_their_partitions_to_another_live_notifier(
    topics, service_env, start_service, alertmanager, tmp_path
):
    """Two notifiers share the alert topic; the first is killed -9. The second takes its
    partitions and their open incidents (from the compacted topic) and keeps every page up past
    several of Alertmanager's windows; a correction then resolves a moved incident."""
    from tests.conftest import metric_total, metrics_port, scrape
    from tests.integration.test_exactly_once import wait_for_log

    resend_s = 5  # a page ends 4 re-sends (20 s) after the last one that reached Alertmanager
    kafka_bootstrap = service_env["TDM_BOOTSTRAP_SERVERS"]
    notify = _notify_settings(
        kafka_bootstrap, topics, TDM_NOTIFY_ALERTMANAGER_URL=alertmanager, TDM_NOTIFY_RESEND_S=str(resend_s)
    )
    service = start_service(**SERVICE)
    first = _notifier(service_env, tmp_path, "notifier-1", **notify)
    patients = [f"PT-MOVE-{n}" for n in range(6)]
    for patient in patients:
        _send(kafka_bootstrap, topics["input"], "1.2", patient=patient)
    wait_until(lambda: len(active_alerts(alertmanager)) == len(patients), timeout_s=90)
    second = _notifier(service_env, tmp_path, "notifier-2", **notify)
    wait_for_log(second, '"metrics_port"')

    def held(name: str) -> float:
        assert second.alive() or second.revive(), second.log_text()[-3000:]
        return metric_total(scrape(metrics_port(second.log_text())), name)

    wait_until(lambda: held("tdm_assigned_partitions") > 0, timeout_s=90)  # the group shares the work
    first.kill()
    wait_until(lambda: held("tdm_assigned_partitions") == 3, timeout_s=90)
    assert held("tdm_notify_open_incidents") == len(patients)
    time.sleep(resend_s * 4 * 1.5)  # past the end of every post the first notifier made
    assert len(active_alerts(alertmanager)) == len(patients), second.log_text()[-3000:]

    for patient in patients[:2]:
        _send(kafka_bootstrap, topics["input"], "5.0", status="corrected", patient=patient)
    wait_until(lambda: len(active_alerts(alertmanager)) == len(patients) - 2, timeout_s=60)
    assert held("tdm_notify_open_incidents") == len(patients) - 2
    assert second.stop() == 0 and service.stop() == 0


def test_an_alertmanager_down_past_the_retry_budget_gets_the_page_once_it_is_back(
    kafka_bootstrap, topics, service_env, start_service, tmp_path
):
    """Alertmanager is down when the page comes and stays down past the retry budget: the event is
    dead-lettered (with Alertmanager's failure), the notifier stays up, and once Alertmanager
    starts the re-sends show the page there (only a re-send can: the post itself was given up);
    the correction then resolves it, and a replay of the dead-lettered trigger reopens nothing."""
    from tests.conftest import metric_total, metrics_port, read_topic, run_cli, scrape
    from tests.integration.test_exactly_once import wait_for_log

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    notify = _notify_settings(
        kafka_bootstrap,
        topics,
        TDM_NOTIFY_ALERTMANAGER_URL=url,
        TDM_NOTIFY_RESEND_S=str(RESEND_S),
        TDM_NOTIFY_RETRY_BUDGET_S="5",
    )
    service = start_service(**SERVICE)
    notifier = _notifier(service_env, tmp_path, "notifier", **notify)
    _send(kafka_bootstrap, topics["input"], "1.2")
    [dead] = read_topic(kafka_bootstrap, notify["TDM_NOTIFY_DLQ_TOPIC"], expected=1, timeout_s=90)
    assert b"alertmanager: ConnectError for 5 s" in dict(dead.headers)["tdm.dlq.error"]
    proc = _start_alertmanager(tmp_path, port)
    try:
        wait_until(lambda: len(active_alerts(url)) == 1, timeout_s=60, explain=notifier.log_text)
        _send(kafka_bootstrap, topics["input"], "5.0", status="corrected")
        wait_until(lambda: active_alerts(url) == [], timeout_s=60, explain=notifier.log_text)

        # The dead-lettered trigger replayed now is older than the resolve Alertmanager has: it
        # must not reopen the incident (issue 42: it did, with a new start time).
        replay_env = {**service_env, "TDM_DLQ_TOPIC": notify["TDM_NOTIFY_DLQ_TOPIC"]}
        replayed = run_cli(replay_env, "dlq", "replay", "--reason", "undelivered")
        assert "replayed 1 dead letters" in replayed.stdout + replayed.stderr
        wait_for_log(notifier, "not sent again", timeout_s=60)
        time.sleep(RESEND_S * 2)  # a re-send would show a reopened incident by now
        assert active_alerts(url) == [], notifier.log_text()[-3000:]
        port = metrics_port(notifier.log_text())
        superseded = metric_total(scrape(port), "tdm_notify_deliveries_total", outcome="superseded")
        assert superseded == 1 and metric_total(scrape(port), "tdm_notify_open_incidents") == 0
        assert notifier.alive() and notifier.restarts == 0, notifier.log_text()[-3000:]
        assert notifier.stop() == 0 and service.stop() == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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


WEBHOOK_SECRET = b"a-shared-secret"


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """A local receiver on its own thread; the test shuts it down."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _signed_webhook(
    tmp_path: Path, server: ThreadingHTTPServer, bootstrap: str, topics: dict[str, str], **more: str
) -> dict[str, str]:
    """The notifier's settings for the local webhook `server`, signing with WEBHOOK_SECRET."""
    secret = tmp_path / "webhook-secret"
    secret.write_bytes(WEBHOOK_SECRET + b"\n")
    return _notify_settings(
        bootstrap,
        topics,
        TDM_NOTIFY_WEBHOOK_URL=f"http://127.0.0.1:{server.server_port}/tdm",
        TDM_NOTIFY_WEBHOOK_SECRET_FILE=str(secret),
        **more,
    )


def test_a_signed_webhook_gets_every_event_once_keyed_even_after_being_down(
    kafka_bootstrap, topics, service_env, start_service, tmp_path
):
    handler = type("Receiver", (_Receiver,), {"secret": WEBHOOK_SECRET, "keys": Counter(), "accepted": []})
    handler.down_for = 3  # the receiver is down when the first event comes
    server = _serve(handler)
    try:
        webhook = _signed_webhook(tmp_path, server, kafka_bootstrap, topics)
        service = start_service(**SERVICE)
        notifier = _notifier(service_env, tmp_path, "notifier", **webhook)
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
        resigned = "v1=" + hmac.new(WEBHOOK_SECRET, old.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert _post(url, body, old, resigned) == 401
        assert _post(url, body, stamp, signature) == 202
    finally:
        server.shutdown()


class _DownForOne(BaseHTTPRequestHandler):
    """A webhook that answers 503 to one patient's events while `down` is set, 202 to the rest."""

    down = True
    accepted: list[tuple[float, dict]]
    refused: list[float]

    def do_POST(self) -> None:
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        failing = type(self).down and event["patient_id"] == "PT-DOWN"
        if failing:
            type(self).refused.append(time.monotonic())
        else:
            type(self).accepted.append((time.monotonic(), event))
        self.send_response(503 if failing else 202)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_receiver_down_past_the_budget_holds_only_its_partition_and_loses_nothing(
    kafka_bootstrap, topics, service_env, start_service, tmp_path
):
    """The event a receiver keeps refusing (503) holds its own partition, not the notifier: the
    other partitions' events are delivered meanwhile, the notifier stays ready and says what it
    waits on; once the retry budget is spent the event is dead-lettered, and the events behind it
    follow in order."""
    from tests.conftest import metric_total, metrics_port, read_topic, scrape
    from tests.integration.test_exactly_once import wait_for_log

    budget_s = 20
    handler = type("Receiver", (_DownForOne,), {"down": True, "accepted": [], "refused": []})
    server = _serve(handler)
    webhook = _signed_webhook(
        tmp_path, server, kafka_bootstrap, topics, TDM_NOTIFY_RETRY_BUDGET_S=str(budget_s)
    )
    try:
        service = start_service(**SERVICE)
        notifier = _notifier(service_env, tmp_path, "notifier", **webhook)
        port = metrics_port(wait_for_log(notifier, '"metrics_port"'))
        _send(kafka_bootstrap, topics["input"], "1.2", patient="PT-DOWN")
        wait_until(lambda: len(handler.refused) >= 2, timeout_s=90)
        others = [f"PT-UP-{n}" for n in range(8)]
        for patient in others:
            _send(kafka_bootstrap, topics["input"], "1.1", patient=patient)
        # Where each patient's alerts went: the service publishes them keyed by patient.
        published = read_topic(kafka_bootstrap, topics["alerts"], expected=1 + len(others))
        partition_of = {json.loads(r.value)["patient_id"]: r.partition for r in published}
        elsewhere = {p for p in others if partition_of[p] != partition_of["PT-DOWN"]}
        assert elsewhere, partition_of  # 8 patients over 3 partitions
        wait_until(lambda: elsewhere <= {e["patient_id"] for _, e in handler.accepted}, timeout_s=30)
        first_refused = handler.refused[0]
        assert (
            max(at for at, e in handler.accepted if e["patient_id"] in elsewhere) < first_refused + budget_s
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as ready:
            assert (
                ready.status == 200
                and b"1 alert event(s) waiting on a failing receiver (webhook 1)" in ready.read()
            )
        assert metric_total(scrape(port), "tdm_notify_waiting_partitions") == 1
        assert metric_total(scrape(port), "tdm_notify_oldest_undelivered_seconds") > 0

        [dead] = read_topic(kafka_bootstrap, webhook["TDM_NOTIFY_DLQ_TOPIC"], expected=1, timeout_s=90)
        assert json.loads(dead.value)["patient_id"] == "PT-DOWN"
        assert dict(dead.headers)["tdm.dlq.reason"] == b"undelivered"
        assert f"HTTP 503 for {budget_s} s".encode() in dict(dead.headers)["tdm.dlq.error"]
        wait_until(lambda: {e["patient_id"] for _, e in handler.accepted} >= set(others), timeout_s=30)
        handler.down = False  # back: the next event of that patient goes straight through
        _send(kafka_bootstrap, topics["input"], "5.0", status="corrected", patient="PT-DOWN")
        wait_until(lambda: "PT-DOWN" in {e["patient_id"] for _, e in handler.accepted}, timeout_s=60)
        assert notifier.alive() and notifier.restarts == 0, notifier.log_text()[-3000:]
        assert metric_total(scrape(port), "tdm_notify_waiting_partitions") == 0
        assert notifier.stop() == 0 and service.stop() == 0
    finally:
        server.shutdown()
    # Nothing lost and nothing out of order: each patient's events in the order the service sent them.
    delivered = [e["patient_id"] for _, e in handler.accepted]
    assert sorted(delivered) == sorted([*others, "PT-DOWN"]), delivered


class _AllDown(BaseHTTPRequestHandler):
    """A webhook that answers 503 to everything, noting when each event was asked for."""

    asked: list[tuple[float, str]]  # (monotonic time, event id)

    def do_POST(self) -> None:
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).asked.append((time.monotonic(), event["event_id"]))
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_webhook_down_past_the_watchdogs_bound_delays_no_alertmanager_page_and_restarts_nothing(
    topics, service_env, start_service, alertmanager, tmp_path
):
    """Issue 42: a receiver down longer than the watchdog's bound restarted the notifier (the
    batches watched another, empty list of waiting partitions), and one receiver's failing event
    held the other receivers' pages of its partition. Here the webhook is down for good: the
    notifier must stay up and ready throughout, Alertmanager must get every page at once (an
    event from a newer `run` too), and each webhook event must be dead-lettered at the budget,
    never retried faster than the back-off floor."""
    from kafka import KafkaProducer

    from tests.conftest import metrics_port, read_topic
    from tests.integration.test_exactly_once import wait_for_log

    kafka_bootstrap = service_env["TDM_BOOTSTRAP_SERVERS"]
    budget_s, stall_s = 25, 10
    handler = type("Receiver", (_AllDown,), {"asked": []})
    server = _serve(handler)
    notify = _signed_webhook(
        tmp_path,
        server,
        kafka_bootstrap,
        topics,
        TDM_NOTIFY_ALERTMANAGER_URL=alertmanager,
        TDM_NOTIFY_RESEND_S=str(RESEND_S),
        TDM_NOTIFY_RETRY_BUDGET_S=str(budget_s),
        TDM_STALL_TIMEOUT_S=str(stall_s),
    )
    ready: list[int] = []
    polling = threading.Event()

    def probe(port: int) -> None:
        while not polling.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                    ready.append(answer.status)
            except urllib.error.HTTPError as err:
                ready.append(err.code)
            except OSError:
                ready.append(0)
            time.sleep(0.5)

    try:
        service = start_service(**SERVICE)
        notifier = _notifier(service_env, tmp_path, "notifier", **notify)
        port = metrics_port(wait_for_log(notifier, '"metrics_port"'))
        _send(kafka_bootstrap, topics["input"], "1.2", patient="PT-DOWN")
        wait_until(lambda: len(active_alerts(alertmanager)) == 1, timeout_s=60, explain=notifier.log_text)
        wait_until(lambda: handler.asked, timeout_s=30)
        [first] = read_topic(kafka_bootstrap, topics["alerts"], expected=1, timeout_s=30)
        threading.Thread(target=probe, args=(port,), daemon=True).start()
        time.sleep(stall_s + 3)  # the webhook still down past the watchdog's bound

        seen: dict[str, float] = {}  # incident -> when Alertmanager first showed it

        def watch() -> None:
            while not polling.is_set():
                for alert in active_alerts(alertmanager):
                    seen.setdefault(alert["labels"]["incident"], time.time())
                time.sleep(0.05)

        threading.Thread(target=watch, daemon=True).start()
        others = [f"PT-UP-{n}" for n in range(5)]
        for patient in others:
            _send(kafka_bootstrap, topics["input"], "1.1", patient=patient)
        # An event from a newer `run`: a field, a severity, an action and a category new to us.
        newer = {
            **json.loads(first.value),
            "alert_schema": "tdm-alerts/alert@4",
            "incident_key": "9" * 32,
            "event_id": "8" * 32,
            "action": "escalate",
            "severity": "urgent",
            "category": "unheard_of",
            "follow_through": {"due_in_days": 3},
        }
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        producer.send(topics["alerts"], json.dumps(newer).encode(), key=b"PT-DOWN")
        producer.flush()
        producer.close()
        published = read_topic(kafka_bootstrap, topics["alerts"], expected=len(others) + 2)
        stamps = {json.loads(r.value)["incident_key"]: r.timestamp / 1000 for r in published}
        wait_until(lambda: set(seen) >= set(stamps), timeout_s=30, explain=notifier.log_text)
        assert set(seen) == set(stamps), notifier.log_text()[-3000:]
        down_key = json.loads(first.value)["incident_key"]  # paged before the watch began
        delays = {key: seen[key] - stamps[key] for key in stamps if key != down_key}
        print(f"publication to Alertmanager, webhook down: max {max(delays.values()):.2f} s")
        assert max(delays.values()) < 2.0, delays
        [escalated] = [a for a in active_alerts(alertmanager) if a["labels"]["incident"] == "9" * 32]
        assert escalated["labels"]["severity"] == "high"  # the documented fallback

        undelivered = read_topic(kafka_bootstrap, notify["TDM_NOTIFY_DLQ_TOPIC"], expected=7, timeout_s=90)
        assert len(undelivered) == 7, notifier.log_text()[-3000:]
        assert all(dict(r.headers)["tdm.dlq.reason"] == b"undelivered" for r in undelivered)
        assert all(
            f"HTTP 503 for {budget_s} s".encode() in dict(r.headers)["tdm.dlq.error"] for r in undelivered
        )
        by_event: dict[str, list[float]] = {}
        for at, event_id in handler.asked:
            by_event.setdefault(event_id, []).append(at)
        for event_id, times in by_event.items():
            assert budget_s - 2 <= times[-1] - times[0] <= budget_s + 2, (event_id, times)
            assert min(b - a for a, b in itertools.pairwise(times)) >= 0.45, times
        polling.set()
        assert ready and set(ready) == {200}, ready  # ready throughout
        assert notifier.alive() and notifier.restarts == 0, notifier.log_text()[-3000:]
        assert "stalled" not in notifier.log_text() and "partition stuck" not in notifier.log_text()
        assert notifier.stop() == 0 and service.stop() == 0
    finally:
        polling.set()
        server.shutdown()


class _LeavesThemToNobodyOnce(AbstractPartitionAssignor):
    """A group leader that, the first time another member joins, assigns every partition to
    nobody (as kafka-python's leader did without the topic's metadata, K9) and after that gives
    them all to the other members. `range` is a protocol both clients offer, so the group takes
    it and this first member leads."""

    name = "range"
    version = 0

    def __init__(self, topic: str, partitions: int) -> None:
        self.topic, self.partitions = topic, partitions
        self.assignments: list[dict[str, list[int]]] = []  # what it handed out, with others present

    def metadata(self, topics: list[str]) -> ConsumerProtocolSubscription:
        return ConsumerProtocolSubscription(0, list(topics), b"leaves-them-to-nobody")

    def assign(self, cluster: object, members: list) -> dict[str, ConsumerProtocolAssignment]:
        others = sorted(m.member_id for m in members if m.metadata.user_data != b"leaves-them-to-nobody")
        given: dict[str, list[int]] = {m.member_id: [] for m in members}
        if others:
            if self.assignments:  # not the first time: every partition to the others
                for n in range(self.partitions):
                    given[others[n % len(others)]].append(n)
            self.assignments.append({m: p for m, p in given.items() if m in others})
        return {
            member: ConsumerProtocolAssignment(0, [(self.topic, owned)] if owned else [], b"")
            for member, owned in given.items()
        }

    def on_assignment(self, assignment: object, generation: object) -> None:
        pass


def test_a_group_that_leaves_the_alert_partitions_to_nobody_is_asked_again_and_pages(
    kafka_bootstrap, topics, service_env, start_service, tmp_path
):
    """A notifier that joins a group whose leader assigns nothing stays a stable member that owns
    nothing: no lag, no stall, ready, and it pages nothing (seen once after a kill -9, issue 25).
    It must find the partitions nobody owns, ask the group for a new assignment, and page."""
    from tests.conftest import metric_total, metrics_port, scrape
    from tests.integration.test_exactly_once import wait_for_log

    handler = type("Receiver", (_DownForOne,), {"down": False, "accepted": [], "refused": []})
    server = _serve(handler)
    webhook = _signed_webhook(tmp_path, server, kafka_bootstrap, topics)
    # The test's own leader is a kafka-python member whose first assignment is empty: now and then
    # its join hangs under load (kafka-python K3) before any of ours runs. A second one is started
    # in its place then; what the test checks of the notifier is the same.
    for attempt in range(2):
        leader_assignor = _LeavesThemToNobodyOnce(topics["alerts"], 3)
        leader = KafkaConsumer(
            bootstrap_servers=kafka_bootstrap,
            group_id=webhook["TDM_NOTIFY_GROUP_ID"],
            partition_assignment_strategy=[leader_assignor],
            enable_auto_commit=False,
        )
        leader.subscribe([topics["alerts"]])
        stop = threading.Event()

        def lead(member: KafkaConsumer = leader, stopped: threading.Event = stop) -> None:
            while not stopped.is_set():  # a member polls to take part in every re-join
                member.poll(timeout_ms=200)

        polling = threading.Thread(target=lead, name="leader", daemon=True)
        polling.start()
        deadline = time.monotonic() + 60
        while not in_group(leader) and time.monotonic() < deadline:
            time.sleep(0.2)
        if in_group(leader) or attempt == 1:
            break
        stop.set()
        polling.join(timeout=10)
        leader.close()
    try:
        wait_until(lambda: in_group(leader), timeout_s=1)
        service = start_service(**SERVICE)
        notifier = _notifier(service_env, tmp_path, "notifier", **webhook)
        port = metrics_port(wait_for_log(notifier, '"metrics_port"'))
        _send(kafka_bootstrap, topics["input"], "1.2")
        wait_until(lambda: len(handler.accepted) == 1, timeout_s=90, explain=notifier.log_text)
        assert leader_assignor.assignments[0] == {m: [] for m in leader_assignor.assignments[0]}
        assert len(leader_assignor.assignments) >= 2  # the notifier asked for a new assignment
        assert "owned by no member of the group" in notifier.log_text()
        assert metric_total(scrape(port), "tdm_group_rejoins_total") >= 1
        # The next look (seconds after the new assignment) sees every partition owned.
        wait_until(lambda: metric_total(scrape(port), "tdm_unowned_partitions") == 0, timeout_s=30)
        assert notifier.restarts == 0, notifier.log_text()[-3000:]  # fixed in place
        assert notifier.stop() == 0 and service.stop() == 0
    finally:
        stop.set()
        polling.join(timeout=10)
        leader.close()
        server.shutdown()


def _post(url: str, body: bytes, stamp: str, signature: str) -> int:
    headers = {"X-TDM-Timestamp": stamp, "X-TDM-Signature": signature, "Idempotency-Key": "probe"}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        return urllib.request.urlopen(request, timeout=5).status
    except urllib.error.HTTPError as err:
        return err.code


# PagerDuty cannot be reached from CI: a local receiver checks each request against the Events
# API v2 documentation (required fields, enums, sizes) and answers as scripted.
PD_SEVERITIES = {"critical", "error", "warning", "info"}


class _PagerDutyContract(BaseHTTPRequestHandler):
    script: list[tuple[int, dict[str, str]]]  # answers, in order; the last one repeats
    received: list[dict]
    violations: list[str]

    def do_POST(self) -> None:
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).violations.extend(_pagerduty_violations(event, self.headers.get("Content-Type", "")))
        type(self).received.append(event)
        status, headers = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(json.dumps({"status": "success" if status == 202 else "invalid event"}).encode())

    def log_message(self, *args: object) -> None:
        pass


def _pagerduty_violations(event: dict, content_type: str) -> list[str]:
    """What the Events API v2 would refuse in `event`."""
    found = []
    if content_type != "application/json":
        found.append(f"content type {content_type}")
    if not isinstance(event.get("routing_key"), str) or len(event["routing_key"]) != 32:
        found.append("routing_key must be the integration's 32-character key")
    if event.get("event_action") not in {"trigger", "acknowledge", "resolve"}:
        found.append(f"event_action {event.get('event_action')}")
    if not isinstance(event.get("dedup_key"), str) or not 0 < len(event["dedup_key"]) <= 255:
        found.append("dedup_key")
    if event.get("event_action") == "trigger":
        payload = event.get("payload") or {}
        if not isinstance(payload.get("summary"), str) or not 0 < len(payload["summary"]) <= 1024:
            found.append("payload.summary")
        if not isinstance(payload.get("source"), str) or not payload["source"]:
            found.append("payload.source")
        if payload.get("severity") not in PD_SEVERITIES:
            found.append(f"payload.severity {payload.get('severity')}")
    if len(json.dumps(event).encode()) > 512 * 1024:
        found.append("event over 512 KB")
    return found


def test_pagerduty_contract_retries_429_and_500_and_dead_letters_a_refusal(
    kafka_bootstrap, topics, service_env, start_service, tmp_path
):
    """Contract test: the requests follow the Events API v2 as documented; 429 (Retry-After) and
    500 are retried, a 400 is dead-lettered with PagerDuty's answer, and the notifier stays up."""
    from tests.conftest import read_topic

    key_file = tmp_path / "routing-key"
    key_file.write_text("R" * 32 + "\n")
    handler = type(
        "PagerDuty",
        (_PagerDutyContract,),
        {
            # trigger: 429 then 500 then accepted; resolve: refused for good.
            "script": [(429, {"Retry-After": "1"}), (500, {}), (202, {}), (400, {})],
            "received": [],
            "violations": [],
        },
    )
    server = _serve(handler)
    pagerduty = _notify_settings(
        kafka_bootstrap,
        topics,
        TDM_NOTIFY_PAGERDUTY_URL=f"http://127.0.0.1:{server.server_port}/v2/enqueue",
        TDM_NOTIFY_PAGERDUTY_ROUTING_KEY_FILE=str(key_file),
    )
    undelivered = pagerduty["TDM_NOTIFY_DLQ_TOPIC"]
    try:
        service = start_service(**SERVICE)
        notifier = _notifier(service_env, tmp_path, "notifier", **pagerduty)
        _send(kafka_bootstrap, topics["input"], "1.2")
        wait_until(lambda: len(handler.received) >= 3, timeout_s=90)
        _send(kafka_bootstrap, topics["input"], "5.0", status="corrected")
        [dead] = read_topic(kafka_bootstrap, undelivered, expected=1, timeout_s=90)
        assert notifier.alive(), notifier.log_text()[-2000:]
        assert notifier.stop() == 0 and service.stop() == 0
    finally:
        server.shutdown()
    assert handler.violations == []
    actions = [e["event_action"] for e in handler.received]
    assert actions == ["trigger", "trigger", "trigger", "resolve"]
    assert len({e["dedup_key"] for e in handler.received}) == 1  # one incident
    headers = dict(dead.headers)
    assert headers["tdm.dlq.reason"] == b"undelivered"
    assert b"pagerduty: HTTP 400" in headers["tdm.dlq.error"] and b"R" * 32 not in headers["tdm.dlq.error"]
    assert json.loads(dead.value)["action"] == "resolve"
    assert "PT-PAGE" not in json.dumps(handler.received)  # no patient identifier leaves for PagerDuty
