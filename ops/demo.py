"""`make demo`: a local broker, the service, the sample feed, and the alerts it published.

Starts everything it needs, shows the result, and stops everything it started, even on error.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

REPO = Path(__file__).resolve().parent.parent
BROKER = REPO / "ops" / "kafka" / "local-broker"
WORK = REPO / ".cache" / "demo"
FEED = REPO / "tests" / "data" / "sample-feed.jsonl"
INPUT, ALERTS, DLQ = "lab.results", "lab.alerts", "lab.results.dlq"


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
    service = None
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(INPUT, 3, 1), NewTopic(ALERTS, 3, 1), NewTopic(DLQ, 1, 1)])
        admin.close()
        print(f"   broker {bootstrap}; topics {INPUT}, {ALERTS}, {DLQ}")

        port = free_port(int(os.environ.get("TDM_METRICS_PORT", "9108")))
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        env = {
            **os.environ,
            "TDM_BOOTSTRAP_SERVERS": bootstrap,
            "TDM_METRICS_PORT": str(port),
            "TDM_LOG_FORMAT": "json",
            "TDM_STATE_DIR": str(WORK / "state"),
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

        messages = [line for line in FEED.read_bytes().splitlines() if line.strip()]
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        for i, message in enumerate(messages):
            producer.send(INPUT, key=f"msg-{i}".encode(), value=message)
        producer.flush()
        producer.close()
        print(f"== replayed {len(messages)} messages from {FEED.relative_to(REPO)}")

        deadline = time.monotonic() + 60
        done = 0.0
        while time.monotonic() < deadline and done < len(messages):
            if service.poll() is not None:
                raise RuntimeError(f"the service exited early; see {log_path}")
            with contextlib.suppress(OSError):  # the metrics server may not be up yet
                done = consumed_total(metrics_url, INPUT)
            time.sleep(0.3)
        if done < len(messages):
            raise RuntimeError(
                f"only {done:.0f} of {len(messages)} messages processed in 60 s; see {log_path}"
            )

        time.sleep(2)  # the patient-state stage runs a batch behind the intake
        alerts = read_all(bootstrap, ALERTS)
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
        dead = read_all(bootstrap, DLQ)
        print(f"\n== {len(dead)} messages dead-lettered to {DLQ}")
        for record in dead:
            headers = {k: v.decode() for k, v in record.headers}
            print(
                f"  offset {headers['tdm.dlq.source.offset']:>3}: {headers['tdm.dlq.reason']}: "
                f"{headers['tdm.dlq.error']}"
            )

        print(f"\n== metrics were served at {metrics_url} (also /healthz, /readyz); a sample:")
        text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith(
                ("tdm_messages_consumed_total", "tdm_alerts_published_total", "tdm_dead_letters_total")
            ):
                print("  " + line)
        return 0
    finally:
        if service is not None and service.poll() is None:
            service.send_signal(signal.SIGTERM)
            code = service.wait(timeout=30)
            print(f"\n== service stopped (exit {code})")
        subprocess.run([sys.executable, str(BROKER), "stop", "--dir", str(broker_dir)], check=False)


if __name__ == "__main__":
    sys.exit(main())
