"""`make demo`: a local broker, the service, the sample feed, the alerts it published, and
those alerts paged to a real Alertmanager by `tdm-alerts notify` (shown by `amtool`) and written
into a real FHIR server (HAPI FHIR's JPA server: a line per DetectedIssue, then counts).

Starts everything it needs, shows the result, and stops everything it started, even on error.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

REPO = Path(__file__).resolve().parent.parent
BROKER = REPO / "ops" / "kafka" / "local-broker"
FHIR_SERVER = REPO / "ops" / "fhir-server" / "local-fhir-server"
WORK = REPO / ".cache" / "demo"
FEED = REPO / "tests" / "data" / "sample-feed.jsonl"
INPUT, ALERTS, DLQ = "lab.results", "lab.alerts", "lab.results.dlq"
ACKS = "lab.acks"
CONTEXT = "lab.context"  # treatment records (route, phase, indication, doses, weight), keyed by patient
# The forecast's patient: a weight and a dose history on the context topic, an albumin on the lab feed.
FORECAST_PATIENT = "TDM-PT-0100"
# The demo's clock: follow-ups and escalation in seconds (the rule set's antibody wait is days,
# and escalation is off unless TDM_ESCALATE_AFTER_MINUTES is set).
FOLLOW_UP_S, ESCALATE_S = 20, 15
UNDELIVERED = "lab.alerts.undelivered"
ALERTMANAGER_CONFIG = """\
# The demo's Alertmanager: it holds the pages; a real one routes them to the on-call.
route:
  receiver: on-call
receivers:
  - name: on-call
"""


def free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def consumed_total(metrics_url: str, topic: str) -> float:
    """Messages of `topic` the service has committed (the patient-state hop is counted apart)."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    pattern = rf'^tdm_messages_consumed_total\{{[^}}]*topic="{re.escape(topic)}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def read_all(bootstrap: str, topic: str) -> list:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        consumer_timeout_ms=2000,
    )
    try:
        return list(consumer)
    finally:
        consumer.close()


def start_alertmanager(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        raise RuntimeError("prometheus-alertmanager is missing: `make demo` installs it")
    config = WORK / "alertmanager.yml"
    config.write_text(ALERTMANAGER_CONFIG)
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={WORK / 'alertmanager'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(WORK / "alertmanager.log").open("wb"),
    )
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2).status == 200:
                return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"Alertmanager did not start; see {WORK / 'alertmanager.log'}")
        time.sleep(0.2)


def start_fhir_server() -> subprocess.Popen[bytes]:
    """HAPI FHIR's JPA server, started now: it takes ~20 s, while the service works."""
    return subprocess.Popen(
        [str(FHIR_SERVER), "run"], stdout=subprocess.PIPE, stderr=(WORK / "fhir-server.log").open("wb")
    )


def fhir_base(server: subprocess.Popen[bytes]) -> str:
    out = server.stdout
    ready = out is not None and select.select([out], [], [], 300)[0]
    line = out.readline().decode() if out is not None and ready else ""
    if not line.startswith("listening "):
        raise RuntimeError(f"the FHIR server did not start; see {WORK / 'fhir-server.log'}")
    return f"http://127.0.0.1:{int(line.split()[1])}/fhir"


def fhir_resources(base: str, kind: str) -> list[dict]:
    found, url = [], f"{base}/{kind}?_count=200"
    while url:
        request = urllib.request.Request(url, headers={"Accept": "application/fhir+json"})
        page = json.loads(urllib.request.urlopen(request, timeout=30).read())
        found += [entry["resource"] for entry in page.get("entry", [])]
        url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
    return found


def show_chart(base: str, alerts: list) -> None:
    """What the notifier wrote into the FHIR server: a line per incident (its DetectedIssue and
    Flag), then the count of each resource kind written per event."""
    events = [json.loads(r.value) for r in alerts]
    deadline = time.monotonic() + 60
    while len(requests := fhir_resources(base, "CommunicationRequest")) < len(events):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the FHIR server holds {len(requests)} CommunicationRequests for {len(events)} events"
            )
        time.sleep(0.5)
    issues, flags = fhir_resources(base, "DetectedIssue"), fhir_resources(base, "Flag")
    flag_of = {f["identifier"][0]["value"]: f for f in flags}
    print(f"\n== into the chart: FHIR R4 server at {base} (HAPI FHIR JPA); what tdm-alerts notify wrote")
    for issue in sorted(issues, key=lambda i: int(i["id"])):
        flag = flag_of[issue["identifier"][0]["value"]]
        print(
            f"  DetectedIssue/{issue['id']} v{issue['meta']['versionId']} {issue['severity']:<8} "
            f"Flag/{flag['id']} {flag['status']:<8} {issue['patient']['identifier']['value']}: "
            f"{issue['detail'][:70]}"
        )
    counts = {kind: len(fhir_resources(base, kind)) for kind in ("RiskAssessment", "Task")}
    last = {e["incident_key"]: e["action"] for e in events}
    active = sum(f["status"] == "active" for f in flags)
    print(
        f"   {len(issues)} DetectedIssues and {len(flags)} Flags ({active} active) for {len(last)} "
        f"incidents (updated in place), {len(requests)} CommunicationRequests for {len(events)} events, "
        f"{counts['RiskAssessment']} RiskAssessments (forecasts), {counts['Task']} Tasks (follow-ups)"
    )
    if not len(issues) == len(flags) == len(last):
        raise RuntimeError(f"{len(issues)} DetectedIssues and {len(flags)} Flags for {len(last)} incidents")
    if active != sum(action != "resolve" for action in last.values()):
        raise RuntimeError(f"{active} active Flags, not one per open incident")


def wait_consumed(
    process: subprocess.Popen[bytes], metrics_url: str, topic: str, count: int, log: Path
) -> None:
    deadline = time.monotonic() + 60
    done = 0.0
    while time.monotonic() < deadline and done < count:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[-1]} exited early; see {log}")
        with contextlib.suppress(OSError):  # the metrics server may not be up yet
            done = consumed_total(metrics_url, topic)
        time.sleep(0.3)
    if done < count:
        raise RuntimeError(f"only {done:.0f} of {count} messages of {topic} processed in 60 s; see {log}")


def treatment_records(patient: str, drawn: datetime) -> list[bytes]:
    """The forecast patient's record on the context topic: indication and phase (canonical), a
    weight (FHIR), and five 5 mg/kg infusions every 8 weeks up to the day of the trough (RAS^O17)."""
    record = {"route": "intravenous", "phase": "maintenance", "indication": "ulcerative_colitis"}
    weight = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "valueQuantity": {"value": 70, "unit": "kg"},
        "effectiveDateTime": (drawn - timedelta(days=3)).isoformat(),
    }
    segments = ["MSH|^~\\&|PHARM|H|TDM|H|20261102||RAS^O17^RAS_O17|R1|P|2.5", f"PID|1||{patient}^^^H^MR"]
    for days in (210, 196, 168, 112, 56):
        start = (drawn - timedelta(days=days, hours=-1)).strftime("%Y%m%d%H%M%S")
        segments.append(
            "|".join(["RXA", "0", "1", start, "", "INFX^Infliximab^L", "5", "mg/kg"] + [""] * 12 + ["CP"])
        )
        segments.append("RXR|IV^Intravenous^HL70162")
    return [json.dumps(record).encode(), json.dumps(weight).encode(), "\r".join(segments).encode()]


def chemistry_panel(patient: str, drawn: datetime, albumin_g_per_l: str) -> bytes:
    at = drawn.strftime("%Y%m%d%H%M%S")
    return "\r".join(
        [
            f"MSH|^~\\&|LIS|LAB|TDM|H|{at}||ORU^R01^ORU_R01|CMP-{patient}|P|2.5.1",
            f"PID|1||{patient}^^^H^MR",
            f"OBR|1|P-{patient}|CMP-{patient}|CMP^Comprehensive metabolic panel^L|||{at}",
            "OBX|1|NM|2345-7^Glucose^LN||98|mg/dL|||||F",
            f"OBX|2|NM|1751-7^Albumin^LN||{albumin_g_per_l}|g/L|||||F",
            "OBX|3|NM|2160-0^Creatinine^LN||0.9|mg/dL|||||F",
        ]
    ).encode()


def trough(patient: str, drawn: datetime, value: str) -> bytes:
    return json.dumps(
        {
            "patient_id": patient,
            "accession": f"ACC-{patient}",
            "specimen_id": f"SPM-{patient}",
            "collected_at": drawn.isoformat(),
            "results": [{"code": "39803-2", "value": value, "unit": "ug/mL", "status": "final"}],
        }
    ).encode()


def print_alerts(alerts: list) -> None:
    """The alerts as published; the forecast patient's must use the albumin from the lab feed."""
    print(f"\n== {len(alerts)} alerts published to {ALERTS}")
    for record in alerts:
        alert = json.loads(record.value)
        print(
            f"  [{alert['severity']:8}] {alert['action']:8} {alert['category']:21} "
            f"patient={alert['patient_id']} accession={alert['accession']} "
            f"incident={alert['incident_key'][:8]}"
        )
        print(f"             {alert['summary']}")
        print(
            f"             -> {alert['recommendation']}  (rule {alert['rule_id']}, "
            f"rules {alert['ruleset_version']})"
        )
        if (forecast := alert.get("forecast")) and forecast.get("status") == "forecast":
            used = ", ".join(
                f"{c['name']} {c['value']}" + (" (assumed)" if c["assumed"] else "")
                for c in forecast["covariates"]
            )
            print(f"             forecast ({forecast['model']}) from {used}")
    forecasts = [
        f
        for r in alerts
        if (f := json.loads(r.value).get("forecast"))
        and json.loads(r.value)["patient_id"] == FORECAST_PATIENT
    ]
    albumin = [
        c
        for f in forecasts
        if f.get("status") == "forecast"
        for c in f["covariates"]
        if "albumin" in c["name"]
    ]
    if not albumin or albumin[0]["assumed"]:
        raise RuntimeError(
            f"{FORECAST_PATIENT}'s forecast did not use the albumin from the lab feed: {forecasts}"
        )


def short_follow_ups() -> Path:
    """The default rule set with the antibody follow-up due in seconds, for the demo's clock."""
    path = WORK / "ruleset-demo.json"
    hours = f"{FOLLOW_UP_S / 3600:.6f}"
    rule = {
        "id": "antibodies-after-low-level",
        "kind": "antibodies_not_resulted",
        "due_after_hours": hours,
        "least_wait_hours": hours,
        "text": "No anti-infliximab antibody result has arrived for this low trough: check that the "
        "antibody test was run (demo: due in seconds, the packaged rule waits 4-10 days).",
        "citations": ["umich-infxr-turnaround", "bsg-2019"],
    }
    path.write_text(json.dumps({"extends": "default", "version": "demo-follow-ups", "follow_ups": [rule]}))
    return path


def follow_ups(env: dict[str, str], bootstrap: str, pages: list) -> None:
    """Nothing more arrives: the service's clock fires the follow-ups (a page nobody acknowledged,
    a low level whose antibodies never came); one page is acknowledged in time, one after."""
    events = [json.loads(r.value) for r in pages]
    opened = [e for e in events if e["action"] == "trigger" and e["severity"] in ("critical", "high")]
    print(
        f"\n== follow-ups (demo clock: escalation after {ESCALATE_S} s without acknowledgement, "
        f"antibodies expected within {FOLLOW_UP_S} s of a low level)"
    )
    if opened:
        first = opened[0]
        ack(env, first["incident_key"], first["patient_id"], "repeat_level")
    time.sleep(max(ESCALATE_S, FOLLOW_UP_S) + 5)  # every deadline of the feed has passed
    seen = {e["event_id"] for e in events}
    fired = [e for r in read_all(bootstrap, ALERTS) if (e := json.loads(r.value))["event_id"] not in seen]
    for event in fired:
        show(event)
    escalated = [e for e in fired if (e.get("follow_up") or {}).get("kind") == "not_acknowledged"]
    if not escalated:
        raise RuntimeError("no page was escalated: the service's clock did not fire")
    late = escalated[0]
    print("   the escalation acknowledged late, by its own incident key:")
    ack(env, late["incident_key"], late["patient_id"], "dose_changed")
    time.sleep(3)
    seen |= {e["event_id"] for e in fired}
    after = [e for r in read_all(bootstrap, ALERTS) if (e := json.loads(r.value))["event_id"] not in seen]
    for event in after:
        show(event)


def show(event: dict) -> None:
    trail = ", ".join(f"{a['by']} {a['decision']}" for a in event.get("acknowledgements") or [])
    late = (event.get("follow_up") or {}).get("late_seconds")
    print(
        f"  [{event['severity']:8}] {event['action']:8} {event['category']:21} "
        f"patient={event['patient_id']} incident={event['incident_key'][:8]}"
        + (f"  audit trail: {trail}" if trail else "")
        + (f"  late {late} s" if late is not None and event["action"] == "trigger" else "")
    )
    print(f"             {event['summary']}")


def ack(env: dict[str, str], incident: str, patient: str, decision: str) -> None:
    command = ["ack", incident, "--patient", patient, "--decision", decision, "--by", "pharmacist"]
    print(f"$ tdm-alerts {' '.join(command)}")
    done = subprocess.run(
        [sys.executable, "-m", "consumer", *command],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tdm-alerts ack failed: {done.stderr.strip()}")
    print("  " + done.stdout.strip())


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    broker_dir = WORK / "broker"
    print("== starting a local Apache Kafka broker (KRaft, from Maven Central jars)")
    bootstrap = subprocess.run(
        [sys.executable, str(BROKER), "start", "--dir", str(broker_dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    service = notifier = alertmanager = None
    fhir_server = start_fhir_server()
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        topics = [
            NewTopic(INPUT, 3, 1),
            NewTopic(ALERTS, 3, 1),
            NewTopic(DLQ, 1, 1),
            NewTopic(UNDELIVERED, 1, 1),
            NewTopic(ACKS, 3, 1),
            NewTopic(CONTEXT, 3, 1, topic_configs={"cleanup.policy": "compact"}),
        ]
        admin.create_topics(topics)
        admin.close()
        print(f"   broker {bootstrap}; topics {INPUT}, {ALERTS}, {DLQ}, {UNDELIVERED}, {ACKS}, {CONTEXT}")

        port = free_port(int(os.environ.get("TDM_METRICS_PORT", "9108")))
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        env = {
            **os.environ,
            "TDM_BOOTSTRAP_SERVERS": bootstrap,
            "TDM_METRICS_PORT": str(port),
            "TDM_LOG_FORMAT": "json",
            "TDM_STATE_DIR": str(WORK / "state"),
            "TDM_ACK_TOPIC": ACKS,
            "TDM_ESCALATE_AFTER_MINUTES": str(ESCALATE_S / 60),
            "TDM_RULESET": str(short_follow_ups()),
            "TDM_CONTEXT_TOPIC": CONTEXT,
            "TDM_LAB_COVARIATES": "true",  # albumin and weight read from the lab feed too
        }
        log_path = WORK / "service.log"
        print(f"== starting tdm-alerts run (log: {log_path.relative_to(REPO)})")
        service = subprocess.Popen(
            [sys.executable, "-m", "consumer", "run"],
            env=env,
            cwd=REPO,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )

        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        drawn = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        records = treatment_records(FORECAST_PATIENT, drawn)
        for record in records:
            producer.send(CONTEXT, key=FORECAST_PATIENT.encode(), value=record)
        producer.flush()
        print(
            f"== {FORECAST_PATIENT}'s treatment on {CONTEXT}: ulcerative colitis, maintenance, 5 mg/kg "
            "every 8 weeks (a pharmacy feed's RAS^O17), 70 kg (a FHIR Observation)"
        )
        wait_consumed(service, metrics_url, CONTEXT, len(records), log_path)

        messages = [line for line in FEED.read_bytes().splitlines() if line.strip()]
        for i, message in enumerate(messages):
            producer.send(INPUT, key=f"msg-{i}".encode(), value=message)
        # The forecast patient's albumin in a chemistry panel on the lab feed, then the low trough.
        for message in (
            chemistry_panel(FORECAST_PATIENT, drawn, "30"),
            trough(FORECAST_PATIENT, drawn, "1.6"),
        ):
            producer.send(INPUT, key=FORECAST_PATIENT.encode(), value=message)
        producer.flush()
        producer.close()
        print(
            f"== replayed {len(messages)} messages from {FEED.relative_to(REPO)}, then {FORECAST_PATIENT}'s "
            "chemistry panel (albumin 30 g/L, HL7) and trough (1.6 ug/mL)"
        )

        wait_consumed(service, metrics_url, INPUT, len(messages) + 2, log_path)

        time.sleep(2)  # the patient-state stage runs a batch behind the intake
        alerts = read_all(bootstrap, ALERTS)
        print_alerts(alerts)
        dead = read_all(bootstrap, DLQ)
        print(f"\n== {len(dead)} messages dead-lettered to {DLQ}")
        for record in dead:
            headers = {k: v.decode() for k, v in record.headers}
            print(
                f"  offset {headers['tdm.dlq.source.offset']:>3}: {headers['tdm.dlq.reason']}: "
                f"{headers['tdm.dlq.error']}"
            )

        follow_ups(env, bootstrap, alerts)
        alerts = read_all(bootstrap, ALERTS)  # with the follow-ups and acknowledgements

        am_port = free_port(9093)
        am_url = f"http://127.0.0.1:{am_port}"
        alertmanager = start_alertmanager(am_port)
        fhir_url = fhir_base(fhir_server)
        notify_port = free_port(port + 1)
        notify_log = WORK / "notify.log"
        print(
            f"\n== paging: Alertmanager at {am_url}, and the FHIR server; tdm-alerts notify "
            f"(log: {notify_log.relative_to(REPO)})"
        )
        notifier = subprocess.Popen(
            [sys.executable, "-m", "consumer", "notify"],
            env={
                **env,
                "TDM_METRICS_PORT": str(notify_port),
                "TDM_NOTIFY_ALERTMANAGER_URL": am_url,
                "TDM_NOTIFY_FHIR_URL": fhir_url,
                "TDM_NOTIFY_DLQ_TOPIC": UNDELIVERED,
            },
            cwd=REPO,
            stdout=notify_log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_consumed(notifier, f"http://127.0.0.1:{notify_port}/metrics", ALERTS, len(alerts), notify_log)
        amtool = shutil.which("amtool")
        if amtool is None:
            raise RuntimeError("amtool is missing: `make demo` installs it")
        query = [amtool, "alert", "query", "alertname=InfliximabTDM", f"--alertmanager.url={am_url}"]
        print(f"$ amtool alert query alertname=InfliximabTDM --alertmanager.url={am_url}")
        shown = subprocess.run(query, capture_output=True, text=True, check=True).stdout
        print("\n".join("  " + line for line in shown.rstrip().splitlines()))
        last = {json.loads(r.value)["incident_key"]: json.loads(r.value)["action"] for r in alerts}
        open_incidents = sum(action != "resolve" for action in last.values())
        pages = len(shown.strip().splitlines()) - 1  # under the header
        print(
            f"   {len(alerts)} alert events, {len(last)} incidents, {open_incidents} open: one page each, "
            "updated in place and re-sent while open"
        )
        if pages != open_incidents:
            raise RuntimeError(f"Alertmanager shows {pages} pages for {open_incidents} open incidents")
        show_chart(fhir_url, alerts)

        print(f"\n== metrics were served at {metrics_url} (also /healthz, /readyz); a sample:")
        text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith(
                ("tdm_messages_consumed_total", "tdm_alerts_published_total", "tdm_dead_letters_total")
            ):
                print("  " + line)
        return 0
    finally:
        if notifier is not None and notifier.poll() is None:
            notifier.send_signal(signal.SIGTERM)
            print(f"\n== notifier stopped (exit {notifier.wait(timeout=30)})")
        fhir_server.terminate()
        fhir_server.wait(timeout=30)
        if alertmanager is not None:
            alertmanager.terminate()
            alertmanager.wait(timeout=10)
        if service is not None and service.poll() is None:
            service.send_signal(signal.SIGTERM)
            code = service.wait(timeout=30)
            print(f"\n== service stopped (exit {code})")
        subprocess.run([sys.executable, str(BROKER), "stop", "--dir", str(broker_dir)], check=False)


if __name__ == "__main__":
    sys.exit(main())
