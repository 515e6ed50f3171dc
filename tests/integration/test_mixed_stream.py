"""A mixed real-world stream on the real broker: HL7 v2, FHIR, irrelevant and broken messages.

Every message is accounted for: consumed = alerted + interpreted + skipped + dead-lettered,
and every dead letter keeps its original bytes and key and says why. Then the dead letters
of one reason are replayed to the input with `tdm-alerts dlq replay`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import DATA, REPO, metric_total, metrics_port, produce, read_topic, run_cli, scrape

pytestmark = pytest.mark.integration

MAX_BYTES = 65_536

# Alerts each good fixture calls for, read clinically from the fixture (not from the code):
EXPECTED_ALERTS = {
    "hl7/oru-trough-and-antibodies.hl7": 2,  # 2.1 ug/mL < 3; ATI >180 U/mL >= 50
    "hl7/oru-v23-panel-lf.hl7": 1,  # 2400 ng/mL = 2.4 ug/mL < 3; the rest of the panel is not ours
    "hl7/oru-mllp-cwe-antibody.hl7": 1,  # ATI "Positive"
    "hl7/batch-crlf.hl7": 2,  # <1.0 final; 1.9 corrected (the preliminary 1.8 does not page)
    "hl7/oru-lipids-irrelevant.hl7": 0,
    "fhir/bundle-collection-report.json": 2,  # as the first HL7 message
    "fhir/observation-single.json": 1,  # amended 2400 ng/mL
    "fhir/bundle-message-qualitative.json": 1,  # ATI Positive
    "fhir/bundle-transaction-preliminary.json": 0,  # preliminary: interpreted, never paged
    "fhir/bundle-searchset-irrelevant.json": 0,
}
# Each broken fixture, with the reason it must be dead-lettered for.
EXPECTED_DEAD = {
    "broken/hl7-no-patient-id.hl7": "invalid",
    "broken/hl7-bad-status.hl7": "invalid",
    "broken/hl7-bad-collection-time.hl7": "invalid",
    "broken/fhir-missing-status.json": "invalid",
    "broken/fhir-bad-quantity.json": "invalid",
    "broken/hl7-no-header.hl7": "unsupported_format",
    "broken/hl7-wrong-version.hl7": "unsupported_format",
    "broken/fhir-truncated.json": "undecodable",
}
# Broken, but naming nothing we read: skipped on its first bytes (README "What is read and what
# is skipped"), counted, never dead-lettered.
SKIPPED_BROKEN = ["broken/fhir-not-an-observation.json"]
EXTRA_DEAD = {
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR": "unsupported_format",  # names nothing: its first bytes
    b'{"code": "39803-2", "value": "\x00\x01\x02"}': "binary",  # could be ours: looked at whole
    b"MSH|^~\\&|" + b"X" * (MAX_BYTES + 1): "too_large",
    b"": "empty",
}


def test_every_message_is_accounted_for_and_dead_letters_replay(kafka_bootstrap, topics, start_service):
    good = [(DATA / name).read_bytes() for name in EXPECTED_ALERTS]
    broken = [(DATA / name).read_bytes() for name in EXPECTED_DEAD] + list(EXTRA_DEAD)
    skipped_broken = [(DATA / name).read_bytes() for name in SKIPPED_BROKEN]
    values = [*good, *broken, *skipped_broken]
    keys = [f"msg-{i}".encode() for i in range(len(values))]
    service = start_service(TDM_MAX_MESSAGE_BYTES=str(MAX_BYTES), TDM_LOG_LEVEL="DEBUG")
    produce(kafka_bootstrap, topics["input"], values, keys)

    alerts = read_topic(kafka_bootstrap, topics["alerts"], expected=sum(EXPECTED_ALERTS.values()))
    assert len(alerts) == sum(EXPECTED_ALERTS.values()) == 10
    assert len({json.loads(a.value)["event_id"] for a in alerts}) == 10
    for alert in alerts:
        # Through the repartition hop, an alert names the lab message, not the internal topic.
        source = json.loads(alert.value)["source"]
        lab_message = f"{source['topic']}/{source['partition']}/{source['offset']}"
        assert dict(alert.headers)["tdm.correlation_id"].decode() == lab_message
        assert source["topic"] == topics["input"]

    dead = read_topic(kafka_bootstrap, topics["dlq"], expected=len(broken))
    assert len(dead) == len(broken)
    by_value = {r.value: r for r in dead}
    for value, key, reason in zip(
        broken,
        keys[len(good) : len(good) + len(broken)],
        [*EXPECTED_DEAD.values(), *EXTRA_DEAD.values()],
        strict=True,
    ):
        record = by_value[value]  # original bytes, unchanged
        headers = dict(record.headers)
        assert record.key == key
        assert headers["tdm.dlq.reason"].decode() == reason
        assert headers["tdm.dlq.stage"] and headers["tdm.dlq.error"] and headers["tdm.dlq.time_ms"]
        assert headers["tdm.dlq.source.topic"].decode() == topics["input"]
        source = [headers[f"tdm.dlq.source.{k}"].decode() for k in ("topic", "partition", "offset")]
        assert headers["tdm.correlation_id"].decode() == "/".join(source)
        assert f'"correlation_id": "{"/".join(source)}"' in service.log_text()

    # At DEBUG each message's fate is a line of its own, by position (issue 28: DEBUG added none).
    debug = [json.loads(line) for line in service.log_text().splitlines() if '"level": "debug"' in line]
    processed = {(d["partition"], d["offset"]) for d in debug if d["event"] == "message processed"}
    assert len([d for d in debug if d.get("topic") == topics["input"]]) >= len(values), debug[:5]
    assert processed and any(d["event"] == "batch committed" for d in debug)

    port = metrics_port(service.log_text())
    deadline = time.monotonic() + 20
    consumed = "tdm_messages_consumed_total"
    while metric_total(text := scrape(port), consumed, topic=topics["input"]) < len(values):
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    outcomes = {
        o: metric_total(text, consumed, topic=topics["input"], outcome=o)
        for o in ("alerted", "interpreted", "skipped", "dead_lettered")
    }
    assert sum(outcomes.values()) == metric_total(text, consumed, topic=topics["input"]) == len(values)
    assert outcomes["dead_lettered"] == len(broken)
    # The lipid panel, the glucose searchset and the Patient resource that names nothing we read.
    assert outcomes["skipped"] == 2 + len(skipped_broken)
    assert outcomes["alerted"] + outcomes["interpreted"] == len(good) - 2
    assert metric_total(text, "tdm_alerts_published_total") == 10
    assert metric_total(text, "tdm_dead_letters_total", reason="invalid") == 5

    # After a fix, the operator replays the invalid ones; unfixed, they come back as dead letters.
    replayed = run_cli(service.env, "dlq", "replay", "--reason", "invalid")
    assert "replayed 5 dead letters (invalid 5)" in replayed.stdout
    assert f"{len(broken) - 5} not selected" in replayed.stdout
    again = read_topic(kafka_bootstrap, topics["dlq"], expected=len(broken) + 5)
    assert len(again) == len(broken) + 5
    second_time = [r for r in again if "tdm.replayed_from" in dict(r.headers)]
    assert len(second_time) == 5
    assert {r.value for r in second_time} == {
        (DATA / n).read_bytes() for n, why in EXPECTED_DEAD.items() if why == "invalid"
    }

    # The operator looks before replaying: list and show say what and why, never the message.
    listed = run_cli(service.env, "dlq", "list")
    lines = listed.stdout.splitlines()
    assert len(lines) == len(broken) + 5
    assert sum(" invalid " in line for line in lines) == 10  # the five, and their second coming
    partition, offset = lines[0].split()[0].split(":")
    shown = run_cli(service.env, "dlq", "show", f"{partition}:{offset}")
    assert "reason:" in shown.stdout and f"source: {topics['input']}/" in shown.stdout
    with_body = run_cli(service.env, "dlq", "show", f"{partition}:{offset}", "--body")
    first = next(r for r in again if (r.partition, r.offset) == (int(partition), int(offset)))
    # text mode reads the segments' CRs as newlines
    body = first.value.decode(errors="replace").replace("\r", "\n").strip()
    assert body in with_body.stdout and body not in shown.stdout
    one = run_cli(service.env, "dlq", "replay", "--at", f"{partition}:{offset}", "--dry-run")
    assert "would replay 1 dead letters" in one.stdout
    status = run_cli(service.env, "status")
    assert f"group {service.env['TDM_GROUP_ID']}: Stable, 1 member(s)" in status.stdout
    assert f"{topics['input']}/0" in status.stdout and "total lag:" in status.stdout
    # Caught up and idle, the lag is 0: the commit marker ending the service's last transaction
    # on its patient topic is no record to read (issue 28: "committed 2 end 3 lag 1").
    deadline = time.monotonic() + 30
    while "total lag: 0 messages" not in (status := run_cli(service.env, "status")).stdout:
        assert time.monotonic() < deadline, status.stdout
        time.sleep(1)

    assert service.stop() == 0
    assert_no_patient_data(
        service.log_text() + replayed.stdout + replayed.stderr + listed.stdout + shown.stdout + status.stdout
    )


def test_operator_commands_fail_fast_and_clearly(kafka_bootstrap, topics, service_env):
    """No traceback: one line naming what is wrong, in seconds."""
    import socket

    missing = subprocess.run(
        [sys.executable, "-m", "consumer", "dlq", "replay", "--to", "no-such-topic"],
        env=service_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "tdm-alerts: --to topic 'no-such-topic' does not exist (or this user may not describe it)"
    )
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for command in (["dlq", "list"], ["status"]):
        began = time.monotonic()
        unreachable = subprocess.run(
            [sys.executable, "-m", "consumer", *command],
            env={**service_env, "TDM_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert unreachable.returncode == 1, unreachable.stderr
        expected = f"tdm-alerts: cannot connect to the Kafka cluster at 127.0.0.1:{port}: check TDM_"
        assert unreachable.stderr.splitlines()[-1].startswith(expected), unreachable.stderr
        # The one line alone: the client library's retries stay off the operator's terminal.
        assert len(unreachable.stderr.splitlines()) == 1, unreachable.stderr
        assert time.monotonic() - began < 30


# Every patient identifier, name and birth date in the fixtures above (all invented).
PATIENT_DATA = re.compile(
    r"TDM-PT-\d{4}|pt-72\d\d|9990001201|4829105|EXT-55102|TESTPATIENT|ALPHA|BRAVO|CHARLIE|DELTA|ECHO|"
    r"FOXTROT|GOLF|HOTEL|INDIA|JULIET|KILO|LIMA|MIKE|1 TEST STREET|19800101|19751212|19900505|"
    r"19881111|19700707|19650303|19821010|1979-03-14"
)


def assert_no_patient_data(text: str) -> None:
    """The PHI scan of issue 5: no log line may hold a patient identifier, name or birth date."""
    assert text.count("\n") > 20, "the scan needs the service's log to scan"
    found = [line for line in text.splitlines() if PATIENT_DATA.search(line)]
    assert not found, found[:5]


def test_the_scan_finds_what_it_looks_for():
    sample = "\n".join(["ok"] * 30 + ['{"event": "x", "patient": "TDM-PT-0101"}'])
    with pytest.raises(AssertionError):
        assert_no_patient_data(sample)
    fixtures = "".join(p.read_text(errors="replace") for p in DATA.glob("*/*.*"))
    for token in PATIENT_DATA.pattern.split("|"):
        if "\\" not in token:
            assert token in fixtures, f"{token} is in no fixture: the scan list is stale"
