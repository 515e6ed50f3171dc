"""The CDS Hooks service's answer time with 100,000 patients' open incidents (issue 41).

    python ops/bench/cds_hooks_check.py [--patients 100000] [--requests 4000] [--threads 4]

In process: the open incidents built as the service builds them from the alert topic (one
trigger per patient, a third with a forecast), then `patient-view` requests over HTTP to the
service's own server from several threads at once, patients drawn at random (one in ten with no
incident), each with the EHR's signed JWT (ES384, a fresh jti) checked as in production (its
signing is the EHR's and not timed). Prints the time to apply the events, the answer's
p50/p99/max (target: p99 under 500 ms, the CDS Hooks specification's expectation of a responsive
service) and the RSS held.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import socket
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from consumer.cds_auth import TokenCheck
from consumer.cds_hooks import PATIENT_VIEW, CdsHooksServer, OpenIncidents
from interpretation import default_ruleset
from tests.cds_client import ISSUER, CdsClient


def events(patients: int):
    forecast = {
        "status": "forecast",
        "regimens": [
            {
                "mg_per_kg": 10,
                "every_weeks": 8,
                "trough_ug_per_ml": 4.2,
                "probability_at_target": 0.7,
                "least_change": True,
            }
        ],
    }
    for n in range(patients):
        yield {
            "action": "trigger",
            "incident_key": f"{n:032x}",
            "event_id": f"{n + 1:032x}",
            "severity": ("critical", "high", "low")[n % 3],
            "summary": f"Infliximab trough {1 + n % 20 / 10:.1f} ug/mL below target 3-7 ug/mL",
            "recommendation": "Consider dose intensification and check antibodies.",
            "patient_id": f"BP-{n:06d}",
            **({"forecast": forecast} if n % 3 == 0 else {}),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    incidents = OpenIncidents()
    began = time.perf_counter()
    for event in events(args.patients):
        incidents.apply(event)
    applied_s = time.perf_counter() - began
    held = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    with socket.socket() as probe:  # the service's URL is in every token's audience
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    ehr = CdsClient()
    server = CdsHooksServer(
        "127.0.0.1",
        port,
        incidents=incidents,
        recognition=default_ruleset().recognition,
        patient_system="urn:x",
        ack_topic=None,
        producer=None,
        auth=TokenCheck({ISSUER: ehr.jwks_url}, base),
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    path = f"/cds-services/{PATIENT_VIEW}"
    url = base + path
    times: list[float] = []
    lock = threading.Lock()
    rng = random.Random(41)
    patients = [f"BP-{rng.randrange(int(args.patients * 1.1)):06d}" for _ in range(args.requests)]

    def ask(share: list[str]) -> None:
        for patient in share:
            body = json.dumps(
                {"hook": "patient-view", "hookInstance": "b", "context": {"patientId": patient}}
            )
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {ehr.token(url)}"}
            request = urllib.request.Request(url, data=body.encode(), headers=headers)
            sent = time.perf_counter()
            with urllib.request.urlopen(request, timeout=10) as answer:
                answer.read()
            with lock:
                times.append(time.perf_counter() - sent)

    shares = [patients[i :: args.threads] for i in range(args.threads)]
    workers = [threading.Thread(target=ask, args=(s,)) for s in shares]
    began = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    took = time.perf_counter() - began
    server.shutdown()
    ehr.close()
    times.sort()
    p99 = times[int(len(times) * 0.99) - 1]
    print(
        f"cds-hooks: {args.patients:,} patients' open incidents applied in {applied_s:.2f} s "
        f"({args.patients / applied_s:,.0f}/s), ~{held:.0f} MB held"
    )
    print(
        f"  patient-view over HTTP with a signed JWT each, {args.requests:,} requests from "
        f"{args.threads} threads in {took:.1f} s: "
        f"p50 {statistics.median(times) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {times[-1] * 1000:.1f} ms (target p99 < 500 ms)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
