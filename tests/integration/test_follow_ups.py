"""Follow-ups on a real broker (issue 39): a deadline in the patient's state fires on the service's
clock, on an idle topic, exactly once through a clean stop, a kill -9 at its due time and a
partition's move to another instance, and late (saying how late) after downtime.

The rule set is the default with the follow-up's waits shortened to seconds (the clinical numbers
are days); everything else is the service as deployed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import RunningService, metric_total, metrics_port, produce, read_topic, run_cli, scrape
from tests.integration.test_exactly_once import SERVICE, AlertReader, wait_for_log
from tests.integration.test_patient_state import antibodies, level, message

DRAWN = datetime.now(UTC) - timedelta(days=1)
WAIT_S = 8.0  # the shortened wait: due this long after the level is read


def _ruleset(tmp_path: Path, wait_s: float = WAIT_S) -> str:
    hours = f"{wait_s / 3600:.6f}"
    path = tmp_path / "follow-ups-in-seconds.json"
    path.write_text(
        json.dumps(
            {
                "extends": "default",
                "version": "test-follow-ups",
                "follow_ups": [
                    {
                        "id": "antibodies-after-low-level",
                        "kind": "antibodies_not_resulted",
                        "due_after_hours": hours,
                        "least_wait_hours": hours,
                        "text": "Check that the antibody test was run.",
                        "citations": ["umich-infxr-turnaround"],
                    }
                ],
            }
        )
    )
    return str(path)


def _levels(topic: str, bootstrap: str, patients: list[str]) -> None:
    produce(
        bootstrap,
        topic,
        [message(p, f"A-{p}", f"S-{p}", DRAWN, level("1.6")) for p in patients],
        [p.encode() for p in patients],
    )


def _follow_ups(reader: AlertReader, action: str = "trigger") -> list[dict[str, object]]:
    return [a for a in reader.alerts if a["category"] == "follow_up" and a["action"] == action]


def _wait_follow_ups(reader: AlertReader, count: int, timeout_s: float, services: list[object]) -> None:
    deadline = time.monotonic() + timeout_s
    while len(_follow_ups(reader)) < count:
        reader.read()
        assert time.monotonic() < deadline, (
            f"{len(_follow_ups(reader))} of {count} follow-ups after {timeout_s} s\n"
            + "\n".join(s.diagnosis() for s in services)  # type: ignore[attr-defined]
        )


def test_a_follow_up_fires_once_on_an_idle_topic_and_its_antibodies_resolve_it(
    kafka_bootstrap, topics, start_service, tmp_path
):
    patient = f"FU-{uuid.uuid4().hex[:6]}"
    service = start_service(TDM_RULESET=_ruleset(tmp_path), **SERVICE)
    reader = AlertReader(kafka_bootstrap, topics["alerts"])
    try:
        _levels(topics["input"], kafka_bootstrap, [patient])
        reader.wait_for(1, timeout_s=60, while_alive=[service])
        paged = time.monotonic()
        (page,) = reader.alerts
        # Nothing more arrives on the input: only the clock can fire it.
        _wait_follow_ups(reader, 1, 60, [service])
        fired_after = time.monotonic() - paged
        reader.settle(4.0)  # a second firing would show here
        (follow_up,) = _follow_ups(reader)
        notice = follow_up["follow_up"]
        assert isinstance(notice, dict)
        assert notice["follows_incident"] == page["incident_key"]
        assert (follow_up["severity"], follow_up["alert_schema"]) == ("low", "tdm-alerts/alert@3")
        assert 0 <= int(notice["late_seconds"]) <= 3
        assert fired_after >= WAIT_S - 2  # not before its time (the page is read a moment after)
        produce(
            kafka_bootstrap,
            topics["input"],
            [message(patient, f"R-{patient}", f"S-{patient}", DRAWN, antibodies("160"))],
            [patient.encode()],
        )
        reader.wait_for(4, timeout_s=60, while_alive=[service])
        reader.settle(2.0)
        (resolved,) = _follow_ups(reader, "resolve")
        assert resolved["incident_key"] == follow_up["incident_key"]
        assert resolved["resolve_reason"] == "the antibody result has arrived"
        text = scrape(metrics_port(service.log_text()))
        assert (
            metric_total(text, "tdm_follow_ups_total", kind="antibodies_not_resulted", action="trigger") == 1
        )
        assert '"follow-up fired"' in service.log_text() and patient not in service.log_text()
    finally:
        reader.close()
    assert service.stop() == 0


def _listening_port(endpoint: RunningService) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in endpoint.log_text().splitlines():
            if '"acknowledgement server listening"' in line:
                return int(json.loads(line)["port"])
        assert endpoint.alive(), endpoint.log_text()[-2000:]
        time.sleep(0.2)
    raise AssertionError(f"the acknowledgement server did not start:\n{endpoint.log_text()[-2000:]}")


def _post(port: int, request: dict[str, object], secret: str | None, age_s: int = 0) -> int:
    """POST an acknowledgement signed as the README says (or not at all); the HTTP status."""
    import urllib.error
    import urllib.request

    from consumer.notify.receivers import sign

    body = json.dumps(request).encode()
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        at = str(int(time.time()) - age_s)
        headers |= {"X-TDM-Timestamp": at, "X-TDM-Signature": "v1=" + sign(secret.encode(), at, body)}
    url = f"http://127.0.0.1:{port}/acknowledgements"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=body, headers=headers), timeout=10
        ) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


def test_after_downtime_a_follow_up_fires_late_and_says_how_late(
    kafka_bootstrap, topics, start_service, tmp_path
):
    patient = f"FU-{uuid.uuid4().hex[:6]}"
    ruleset = _ruleset(tmp_path)
    first = start_service(TDM_RULESET=ruleset, **SERVICE)
    reader = AlertReader(kafka_bootstrap, topics["alerts"])
    try:
        _levels(topics["input"], kafka_bootstrap, [patient])
        reader.wait_for(1, timeout_s=60, while_alive=[first])
        read_at = time.monotonic()
        assert first.stop() == 0  # down before its due time, for longer than the wait
        down_for = 20.0
        time.sleep(max(WAIT_S + down_for - (time.monotonic() - read_at), 0))
        second = start_service(TDM_RULESET=ruleset, **SERVICE)
        _wait_follow_ups(reader, 1, 90, [second])
        reader.settle(4.0)
        (follow_up,) = _follow_ups(reader)
        notice = follow_up["follow_up"]
        assert isinstance(notice, dict)
        assert int(notice["late_seconds"]) >= down_for - 2
        assert second.stop() == 0
    finally:
        reader.close()


def test_a_kill_9_at_the_due_time_fires_each_follow_up_exactly_once(
    kafka_bootstrap, topics, start_service, tmp_path
):
    """Deadlines spread over the seconds around the kill: some fired and committed, some fired in
    a transaction the kill cut off, some not yet due. Each fires once in what a pager reads."""
    ruleset = _ruleset(tmp_path)
    patients = [f"K9-{uuid.uuid4().hex[:4]}-{n}" for n in range(12)]
    service = start_service(TDM_RULESET=ruleset, **SERVICE)
    reader = AlertReader(kafka_bootstrap, topics["alerts"])
    try:
        for group in (patients[:4], patients[4:8], patients[8:]):
            _levels(topics["input"], kafka_bootstrap, group)
            time.sleep(1.5)
        reader.wait_for(len(patients), timeout_s=90, while_alive=[service])
        _wait_follow_ups(reader, 1, 60, [service])  # the first deadlines are firing now
        service.kill()
        again = start_service(TDM_RULESET=ruleset, **SERVICE)
        _wait_follow_ups(reader, len(patients), 120, [again])
        reader.settle(5.0)
        fired = Counter(str(a["event_id"]) for a in _follow_ups(reader))
        followed = Counter(str(a["follow_up"]["follows_incident"]) for a in _follow_ups(reader))  # type: ignore[index]
        pages = {str(a["incident_key"]) for a in reader.alerts if a["category"] == "subtherapeutic_level"}
        assert len(pages) == len(patients)
        assert set(followed) == pages and set(followed.values()) == {1}
        assert set(fired.values()) == {1}
        assert again.stop() == 0
    finally:
        reader.close()


@pytest.mark.input_partitions(4)
def test_a_follow_up_moves_with_its_partition_and_fires_once_on_the_new_owner(
    kafka_bootstrap, topics, start_service, tmp_path
):
    ruleset = _ruleset(tmp_path, wait_s=15.0)
    group = f"fu-move-{uuid.uuid4().hex[:6]}"
    patients = [f"MV-{uuid.uuid4().hex[:4]}-{n}" for n in range(8)]
    env = {"TDM_RULESET": ruleset, "TDM_GROUP_ID": group, **SERVICE}
    leaving = start_service(TDM_INSTANCE_ID="a", TDM_STATE_DIR=str(tmp_path / "a"), **env)
    reader = AlertReader(kafka_bootstrap, topics["alerts"])
    try:
        wait_for_log(leaving, '"partitions assigned"', timeout_s=60)
        _levels(topics["input"], kafka_bootstrap, patients)
        reader.wait_for(len(patients), timeout_s=90, while_alive=[leaving])
        assert not _follow_ups(reader)
        # Its own disk: the deadlines must come from the changelog (the tdm.due header).
        staying = start_service(TDM_INSTANCE_ID="b", TDM_STATE_DIR=str(tmp_path / "b"), **env)
        wait_for_log(staying, '"partitions assigned"', timeout_s=60)
        assert leaving.stop() == 0
        _wait_follow_ups(reader, len(patients), 120, [staying])
        reader.settle(4.0)
        assert Counter(str(a["event_id"]) for a in _follow_ups(reader)).most_common(1)[0][1] == 1
        assert len(_follow_ups(reader)) == len(patients)
        assert staying.stop() == 0
    finally:
        reader.close()


def _ack_topic(bootstrap: str, topics: dict[str, str]) -> str:
    from kafka.admin import KafkaAdminClient, NewTopic

    name = f"{topics['input']}.acks"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, 3, 1)])
    finally:
        admin.close()
    return name


def test_an_acknowledgement_by_the_cli_stops_the_escalation_and_an_unknown_one_changes_nothing(
    kafka_bootstrap, topics, start_service, service_env
):
    """Two pages: one acknowledged in time (no escalation, the decision on record), one not
    (escalated once, critical); an acknowledgement of an incident nobody has is dead-lettered."""
    acks = _ack_topic(kafka_bootstrap, topics)
    escalate_s = 9.0
    env = {"TDM_ACK_TOPIC": acks, "TDM_ESCALATE_AFTER_MINUTES": f"{escalate_s / 60:.4f}", **SERVICE}
    answered, ignored = f"ACK-{uuid.uuid4().hex[:6]}", f"ESC-{uuid.uuid4().hex[:6]}"
    by_hospital = f"SIG-{uuid.uuid4().hex[:6]}"
    service = start_service(**env)
    secret = "integration-ack-secret"
    endpoint = RunningService(
        {**service_env, **env, "TDM_ACK_SECRET": secret, "TDM_ACK_SERVER_PORT": "0"},
        service.log_path.with_name("ack-server.log"),
        command="ack-server",
    )
    reader = AlertReader(kafka_bootstrap, topics["alerts"])
    try:
        _levels(topics["input"], kafka_bootstrap, [answered, ignored, by_hospital])
        reader.wait_for(3, timeout_s=60, while_alive=[service])
        paged = time.monotonic()
        page = {str(a["patient_id"]): a for a in reader.alerts}
        port = _listening_port(endpoint)
        request = {
            "incident_key": page[by_hospital]["incident_key"],
            "patient_id": by_hospital,
            "decision": "switched",
            "by": "gastroenterologist",
        }
        assert _post(port, request, secret) == 202
        assert _post(port, request, None) == 401  # unsigned
        assert _post(port, request, secret, age_s=600) == 401  # stale: a replay
        assert _post(port, request, "not-the-secret") == 401
        cli_env = {**service_env, **env}
        run_cli(
            cli_env,
            "ack",
            str(page[answered]["incident_key"]),
            "--patient",
            answered,
            "--decision",
            "dose_changed",
            "--by",
            "pharmacist",
            "--note",
            "Spoke to the IBD nurse",
        )
        run_cli(cli_env, "ack", "f" * 32, "--patient", answered, "--decision", "other", "--by", "pharmacist")
        reader.wait_for(5, timeout_s=60, while_alive=[service])
        _wait_follow_ups(reader, 1, 60, [service])
        reader.settle(max(escalate_s + 3 - (time.monotonic() - paged), 3.0))
        by_patient: dict[str, list[dict[str, object]]] = {}
        for alert in reader.alerts:
            by_patient.setdefault(str(alert["patient_id"]), []).append(alert)
        acked = [a for a in by_patient[answered] if a["acknowledgements"]]
        assert [(a["action"], a["incident_key"]) for a in acked] == [
            ("update", page[answered]["incident_key"])
        ]
        (entry,) = acked[0]["acknowledgements"]  # type: ignore[misc]
        assert (entry["by"], entry["decision"], entry["via"]) == ("pharmacist", "dose_changed", "cli")
        assert "Spoke" not in json.dumps(reader.alerts) and "Spoke" not in service.log_text()
        assert not [a for a in by_patient[answered] if a["category"] == "follow_up"]
        signed = [a for a in by_patient[by_hospital] if a["acknowledgements"]]
        assert [(e["by"], e["decision"], e["via"]) for e in signed[0]["acknowledgements"]] == [  # type: ignore[union-attr]
            ("gastroenterologist", "switched", "webhook")
        ]
        assert not [a for a in by_patient[by_hospital] if a["category"] == "follow_up"]
        (escalated,) = [a for a in by_patient[ignored] if a["category"] == "follow_up"]
        assert escalated["severity"] == "critical"
        assert escalated["follow_up"]["kind"] == "not_acknowledged"  # type: ignore[index]
        assert escalated["follow_up"]["follows_incident"] == page[ignored]["incident_key"]  # type: ignore[index]
        (dead,) = read_topic(kafka_bootstrap, topics["dlq"], 1, timeout_s=30)
        headers = dict(dead.headers)  # type: ignore[attr-defined]
        assert any(k.endswith("reason") and v == b"unknown_incident" for k, v in headers.items())
        log = service.log_text()
        assert '"acknowledgement applied"' in log and "nothing changed" in log
        assert answered not in log and ignored not in log
        text = scrape(metrics_port(log))
        assert (
            metric_total(text, "tdm_acknowledgements_total", outcome="applied", decision="dose_changed") == 1
        )
        assert (
            metric_total(text, "tdm_acknowledgements_total", outcome="unknown_incident", decision="other")
            == 1
        )
        ack_metrics = scrape(port)
        assert metric_total(ack_metrics, "tdm_ack_requests_total", outcome="accepted") == 1
        assert metric_total(ack_metrics, "tdm_ack_requests_total", outcome="stale") == 1
        assert by_hospital not in endpoint.log_text()
    finally:
        reader.close()
        endpoint.stop()
    assert service.stop() == 0
