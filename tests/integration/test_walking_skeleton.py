"""End to end on a real broker: lab results in, exactly the expected alerts and dead letters out."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from tests.conftest import DATA, metric_total, metrics_port, produce, read_topic, scrape

pytestmark = pytest.mark.integration


def test_sample_feed_yields_expected_alerts_and_dead_letters(kafka_bootstrap, topics, start_service):
    lines = [line for line in (DATA / "sample-feed.jsonl").read_bytes().splitlines() if line.strip()]
    service = start_service()
    produce(kafka_bootstrap, topics["input"], lines)

    # Expected from the clinical reading of the feed, not from the code's output:
    # 0001 trough 2.1 (< 3): an incident; 0004 "<1.0" and ATI 180 U/mL (>= 50) on one specimen:
    # one incident, opened by the first result and escalated to critical (immunogenic failure)
    # by the second; 0006 induction week 6, 3800 ng/mL = 3.8 (< 4.5): an incident.
    # 0007 is preliminary: no page.
    alerts = read_topic(kafka_bootstrap, topics["alerts"], expected=4)
    bodies = sorted((json.loads(r.value) for r in alerts), key=lambda a: (a["patient_id"], a["action"]))
    assert [(a["patient_id"], a["action"]) for a in bodies] == [
        ("TDM-PT-0001", "trigger"),
        ("TDM-PT-0004", "trigger"),
        ("TDM-PT-0004", "update"),
        ("TDM-PT-0006", "trigger"),
    ]
    assert [(a["analyte"], a["finding"]) for a in (bodies[0], bodies[3])] == [
        ("infliximab", "subtherapeutic")
    ] * 2
    assert {(a["analyte"], a["finding"]) for a in bodies[1:3]} == {
        ("infliximab", "subtherapeutic"),
        ("anti_infliximab_antibody", "antibodies_detected"),
    }
    opened, escalated = bodies[1], bodies[2]
    assert opened["incident_key"] == escalated["incident_key"]
    assert (escalated["severity"], escalated["pattern"]) == ("critical", "immunogenic_failure")
    assert {r.key for r in alerts} == {b"TDM-PT-0001", b"TDM-PT-0004", b"TDM-PT-0006"}
    assert bodies[3]["value"] == 3.8 and bodies[3]["target"]["low"] == 4.5
    assert len({a["event_id"] for a in bodies}) == 4
    assert all(a["alert_schema"] == "tdm-alerts/alert@3" for a in bodies)

    dead = read_topic(kafka_bootstrap, topics["dlq"], expected=2)
    assert sorted(r.value for r in dead) == sorted([lines[6], lines[10]])
    reasons = sorted(dict(r.headers)["tdm.dlq.reason"].decode() for r in dead)
    assert reasons == ["invalid", "unsupported_format"]
    for record in dead:
        headers = dict(record.headers)
        assert headers["tdm.dlq.source.topic"].decode() == topics["input"]
        assert int(headers["tdm.dlq.source.offset"]) >= 0

    # Metrics reflect the committed work once the last batch is in.
    port = metrics_port(service.log_text())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = scrape(port)
        consumed = metric_total(text, "tdm_messages_consumed_total", topic=topics["input"])
        if consumed == len(lines):
            break
        time.sleep(0.2)
    assert consumed == len(lines)
    assert 'tdm_dead_letters_total{reason="invalid"} 1.0' in text
    assert "tdm_ready 1.0" in text
    assert f'tdm_consumer_lag_messages{{partition="0",topic="{topics["input"]}"}}' in text
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200

    assert service.stop() == 0, service.log_text()
    log = service.log_text()
    for patient in (f"TDM-PT-000{i}" for i in range(1, 10)):
        assert patient not in log


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
def test_committed_offsets_mean_no_reprocessing_after_restart(
    kafka_bootstrap, topics, start_service, delivery
):
    line = (DATA / "sample-feed.jsonl").read_bytes().splitlines()[0]

    def distinct(records):
        """Exactly once: every record. At least once: a re-delivery repeats an event_id, by design."""
        keys = [dict(r.headers)["tdm.event_id"] for r in records]
        return keys if delivery == "exactly_once" else sorted(set(keys))

    first = start_service(TDM_DELIVERY=delivery)
    produce(kafka_bootstrap, topics["input"], [line])
    assert len(distinct(read_topic(kafka_bootstrap, topics["alerts"], expected=1))) == 1
    assert first.stop() == 0

    # Same group: the committed offset is past the first message, so only the new one alerts.
    second = start_service(TDM_DELIVERY=delivery)
    produce(kafka_bootstrap, topics["input"], [line.replace(b"TDM-PT-0001", b"TDM-PT-0101")])
    alerts = read_topic(kafka_bootstrap, topics["alerts"], expected=2)
    assert len(distinct(alerts)) == 2
    assert sorted({r.key for r in alerts}) == [b"TDM-PT-0001", b"TDM-PT-0101"]
    assert second.stop() == 0


def test_missing_output_topic_is_a_clear_fatal_error(start_service, topics):
    service = start_service(TDM_ALERT_TOPIC=topics["alerts"] + ".missing")
    code = service.proc.wait(timeout=60)
    assert code == 1
    assert "does not exist" in service.log_text()
