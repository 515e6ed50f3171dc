"""A cold restore of the patient state, on both Kafka clients, in one run (issue 40).

    python ops/bench/restore_check.py [--patients 100000]

Starts a local broker, writes a changelog of `--patients` patient states (6 partitions, as
TDM_STATE_PARTITIONS' default, in transactions as the service writes them), then restores it
into empty stores with the service's own `PatientStates.restore_pending`, the two clients
alternated: the target is confluent-kafka at least as fast as kafka-python.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from consumer.clients import client_for
from consumer.clients.seam import ClientError
from consumer.metrics import Metrics
from consumer.settings import Settings
from consumer.state.manager import DUE_HEADER, LAST_SEEN_HEADER, PatientStates
from consumer.state.topics import StateTopics
from interpretation import LabResult, SourceRef, default_ruleset
from interpretation.correlation import correlate_result

BROKER = REPO / "ops" / "kafka" / "local-broker"
PARTITIONS = 6


class _Client:
    """What `restore_pending` reads through: the delivery's client."""

    def __init__(self, client: object) -> None:
        self.client = client


def fill(bootstrap: str, changelog: str, patients: int) -> None:
    drawn = "2026-11-02T08:00:00+00:00"
    result = LabResult.model_validate(
        {
            "patient_id": "T",
            "specimen_id": "S",
            "code": "39803-2",
            "value": "1.6",
            "unit": "ug/mL",
            "collected_at": drawn,
        }
    )
    done = correlate_result(None, result, SourceRef(), default_ruleset(), read_at=result.collected_at)
    if done is None:
        raise RuntimeError("the template result was not read")
    template = done.state.model_dump_json()
    due = done.state.next_due()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(changelog, PARTITIONS, 1, topic_configs={"cleanup.policy": "compact"})])
    admin.close()
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"fill-{uuid.uuid4().hex[:6]}",
        linger_ms=20,
        batch_size=1 << 20,
    )
    producer.init_transactions()
    batch = 5_000
    for start in range(0, patients, batch):
        producer.begin_transaction()
        for n in range(start, min(start + batch, patients)):
            patient = f"P{n:07d}"
            value = template.replace('"T"', json.dumps(patient), 1).encode()
            headers = [(LAST_SEEN_HEADER, b"1800000000")]
            if due is not None:
                headers.append((DUE_HEADER, repr(due.timestamp()).encode()))
            producer.send(
                changelog, key=patient.encode(), value=value, headers=headers, partition=n % PARTITIONS
            )
        producer.commit_transaction()
    producer.close()


def restore(bootstrap: str, changelog: str, client: str, root: Path) -> float:
    os.environ.update(
        TDM_BOOTSTRAP_SERVERS=bootstrap,
        TDM_KAFKA_CLIENT=client,
        TDM_STATE_DIR=str(root),
        TDM_GROUP_ID="restore-bench",
    )
    settings = Settings()
    topics = StateTopics(patients="unused", changelog=changelog, repartition=True)
    states = PatientStates(settings, topics, default_ruleset(), _Client(client_for(settings)), Metrics())  # type: ignore[arg-type]
    states.assign(range(PARTITIONS))
    for attempt in range(20):  # a fresh broker's group coordinator takes a moment to load
        try:
            began = time.perf_counter()
            states.restore_pending()
            break
        except ClientError as err:
            if attempt == 19:
                raise
            print(f"  ({client}: {err.name}; again)")
            time.sleep(1)
    took = time.perf_counter() - began
    held = sum(s.count() for s in states.stores.values())
    states.close()
    if held == 0:
        raise RuntimeError("nothing restored")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="restore-bench-"))
    bootstrap = subprocess.run(
        [sys.executable, str(BROKER), "start", "--dir", str(work / "broker")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        changelog = f"restore-bench.patient-state-changelog.{uuid.uuid4().hex[:6]}"
        began = time.perf_counter()
        fill(bootstrap, changelog, args.patients)
        print(f"changelog of {args.patients:,} patients written in {time.perf_counter() - began:.1f} s")
        seconds: dict[str, list[float]] = {}
        for n in range(args.rounds):
            for client in ("kafka-python", "confluent-kafka"):
                took = restore(bootstrap, changelog, client, work / f"state-{n}-{client}")
                seconds.setdefault(client, []).append(took)
        print(f"cold restore of {args.patients:,} patients (median of {args.rounds}, clients alternated):")
        rate = {client: args.patients / statistics.median(runs) for client, runs in seconds.items()}
        for client, runs in seconds.items():
            each = ", ".join(f"{r:.2f}" for r in runs)
            print(
                f"  {client:16} {statistics.median(runs):5.2f} s  {rate[client]:9,.0f} patients/s"
                f"  (runs: {each} s)"
            )
        print(f"  confluent-kafka / kafka-python: {rate['confluent-kafka'] / rate['kafka-python']:.2f}x")
    finally:
        subprocess.run([sys.executable, str(BROKER), "stop", "--dir", str(work / "broker")], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
