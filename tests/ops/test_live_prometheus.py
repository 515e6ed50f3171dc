"""A real Prometheus (Debian's binary) scrapes the running service; its HTTP API must show the series.

Prometheus loads our alerting rules too, so a rule that does not parse against live series
shows up here as well as in the promtool tests.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.conftest import DATA, REPO, RunningService, produce

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """Prometheus on loopback, started and stopped by its own pid."""

    def __init__(self, workdir: Path, ports: dict[str, int]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail(
                "prometheus is missing: `make test` installs Debian's prometheus package", pytrace=False
            )
        config = yaml.safe_load((REPO / "ops/prometheus/prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        for job in config["scrape_configs"]:  # each job at its process here (port by job name)
            job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
        config["rule_files"] = [str(REPO / "ops/prometheus/alerts.yml")]
        config.pop("alerting", None)  # no Alertmanager in this test
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready(workdir)

    def _wait_ready(self, workdir: Path) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None, (workdir / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus not ready in 30 s"
            time.sleep(0.2)

    def api(self, path: str, **params: str) -> dict[str, object]:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return dict(body["data"])

    def value(self, query: str) -> float | None:
        """The single value of an instant query, or None when it has no result yet."""
        result = self.api("query", query=query)["result"]
        assert isinstance(result, list)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        finally:
            self.log.close()


def test_prometheus_scrapes_the_service_and_loads_the_rules(kafka_bootstrap, topics, start_service, tmp_path):
    lines = [line for line in (DATA / "sample-feed.jsonl").read_bytes().splitlines() if line.strip()]
    # And a level the lab could not measure: a review incident (a ticket), counted by its reason.
    lines.append(
        b'{"patient_id": "PT-REVIEW", "accession": "ACC-R", "results": '
        b'[{"code": "39803-2", "value": "QNS", "unit": "ug/mL", "status": "final"}]}'
    )
    # Fixed ports, not 0: an instance its watchdog ends (kafka-python K3) is started again by
    # the test's supervisor, and Prometheus must find it where it scraped its predecessor.
    ports = {"tdm-alerts": free_port(), "tdm-alerts-notify": free_port()}
    service = start_service(TDM_METRICS_PORT=str(ports["tdm-alerts"]))
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Accepting)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    notifier = _notifier(
        kafka_bootstrap,
        topics,
        {**service.env, "TDM_METRICS_PORT": str(ports["tdm-alerts-notify"])},
        tmp_path,
        receiver.server_port,
    )
    for process in (service, notifier):
        deadline = time.monotonic() + 30
        while '"metrics_port"' not in process.log_text():
            assert time.monotonic() < deadline, process.log_text()
            time.sleep(0.1)
    prometheus = Prometheus(tmp_path, ports)
    try:
        produce(kafka_bootstrap, topics["input"], lines)
        deadline = time.monotonic() + 120  # room for one restart of a hung join (35 s)
        consumed = f'sum(tdm_messages_consumed_total{{topic="{topics["input"]}"}})'
        while prometheus.value(consumed) != len(lines):
            assert time.monotonic() < deadline, prometheus.api("targets")
            time.sleep(0.5)
        # The sample feed's clinical reading: 4 alerts, 2 dead letters (see the walking-skeleton test);
        # and the review.
        assert prometheus.value('up{job="tdm-alerts"}') == 1
        assert prometheus.value("sum(tdm_alerts_published_total)") == 5
        assert prometheus.value('tdm_review_incidents_total{reason="no_valid_result"}') == 1
        assert prometheus.value('sum(tdm_messages_consumed_total{outcome="dead_lettered"})') == 2
        assert prometheus.value('tdm_dead_letters_total{reason="invalid"}') == 1
        assert prometheus.value('tdm_ready{job="tdm-alerts"}') == 1
        # The input's partitions, and the patient-state topic's.
        assert prometheus.value('tdm_assigned_partitions{job="tdm-alerts"}') == 3 + 6
        # Every lab message, and each patient-topic record that produced an event (the 5 alerts).
        assert prometheus.value("sum(tdm_end_to_end_seconds_count)") == len(lines) + 5
        assert prometheus.value("count(tdm_ruleset_info)") == 1
        # The notifier took the 5 alerts to its receiver, and is scraped as its own job.
        deadline = time.monotonic() + 120  # room for one restart of a hung join (35 s)
        while prometheus.value('sum(tdm_notify_deliveries_total{outcome="delivered"})') != 5:
            assert time.monotonic() < deadline, notifier.log_text()[-3000:]
            time.sleep(0.5)
        assert prometheus.value('up{job="tdm-alerts-notify"}') == 1

        groups = prometheus.api("rules")["groups"]
        assert isinstance(groups, list)
        rules = [rule for group in groups for rule in group["rules"]]
        assert {r["health"] for r in rules} == {"ok"}
        assert {r["name"] for r in rules} == {
            r.get("alert") or r["record"]
            for g in yaml.safe_load((REPO / "ops/prometheus/alerts.yml").read_text())["groups"]
            for r in g["rules"]
        }
        # Before the first scrape, TdmAlertsDown is pending (up is absent); it must clear, and none fire.
        deadline = time.monotonic() + 20
        while active := [
            r["name"]
            for g in prometheus.api("rules")["groups"]
            for r in g["rules"]
            if r["type"] == "alerting" and r["state"] != "inactive"
        ]:
            assert time.monotonic() < deadline, f"rules still active: {active}"
            time.sleep(1)

        # Every Grafana panel's query runs and returns data against the live series.
        dashboard = json.loads((REPO / "ops/grafana/dashboards/tdm-alerts.json").read_text())
        # as Grafana sends them with the instance variable at "All"
        queries = [
            t["expr"].replace("$instance", ".*") for panel in dashboard["panels"] for t in panel["targets"]
        ]
        deadline = time.monotonic() + 30
        while empty := [q for q in queries if not prometheus.api("query", query=q)["result"]]:
            assert time.monotonic() < deadline, f"dashboard queries without data: {empty}"
            time.sleep(1)
    finally:
        prometheus.stop()
        receiver.shutdown()
        assert notifier.stop() == 0
        assert service.stop() == 0


class _Accepting(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _notifier(
    bootstrap: str, topics: dict[str, str], env: dict[str, str], tmp_path: Path, port: int
) -> RunningService:
    from tests.integration.test_notify import admin_topics

    undelivered = topics["dlq"] + ".undelivered"
    admin_topics(bootstrap, [undelivered])
    secret = tmp_path / "webhook-secret"
    secret.write_text("a-shared-secret\n")
    settings = {
        "TDM_NOTIFY_GROUP_ID": f"n-{uuid.uuid4().hex[:8]}",
        "TDM_NOTIFY_DLQ_TOPIC": undelivered,
        "TDM_NOTIFY_INCIDENTS_TOPIC": topics["alerts"] + ".incidents",
        "TDM_NOTIFY_WEBHOOK_URL": f"http://127.0.0.1:{port}/tdm",
        "TDM_NOTIFY_WEBHOOK_SECRET_FILE": str(secret),
    }
    return RunningService({**env, **settings}, tmp_path / "notifier.log", command="notify")
