"""A patient's state is restored before any of their records is read (issue 27), on the real broker.

The records wait on the patient topic before the instance that restores their partitions
starts, so the client can hand them over in the very poll that assigns the partitions: that is
where confluent-kafka delivered them while "paused" and they were read against an empty store.
"""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaProducer

from consumer.patient_topic import result_value
from interpretation import LabResult, SourceRef
from tests.conftest import metric_total, metrics_port, read_topic, scrape
from tests.integration.test_exactly_once import SERVICE, AlertReader
from tests.integration.test_patient_state import DAY0, antibodies, level, message, send

pytestmark = pytest.mark.integration

PATIENTS = 30


def _reflex(patient: str) -> LabResult:
    """The reflex antibody result as the intake forwards it to the patient topic."""
    return LabResult(
        patient_id=patient,
        code="INXAB",
        value="180",
        unit="U/mL",
        accession=f"R-{patient}",
        specimen_id=f"S-{patient}",
        collected_at=DAY0,
        result_id=f"B-{patient}",
    )


@pytest.mark.parametrize("keyed", [False, True], ids=["repartition", "keyed-input"])
def test_records_waiting_at_assignment_are_read_only_after_the_restore(
    kafka_bootstrap, topics, start_service, tmp_path, keyed
):
    patients = [f"RS-{uuid.uuid4().hex[:4]}-{n:02d}" for n in range(PATIENTS)]
    group = f"restore-{uuid.uuid4().hex[:6]}"
    env = dict(TDM_GROUP_ID=group, **SERVICE)
    if keyed:
        env["TDM_INPUT_KEYED_BY_PATIENT"] = "true"
    reader = AlertReader(kafka_bootstrap, topics["alerts"])
    try:
        first = start_service(TDM_STATE_DIR=str(tmp_path / "first"), **env)
        for p in patients:
            send(kafka_bootstrap, topics["input"], p, message(p, f"A-{p}", f"S-{p}", DAY0, level("1.6")))
        reader.wait_for(PATIENTS, timeout_s=90, while_alive=[first])
        assert first.stop() == 0

        # Each patient's reflex antibody result waits on the topic their state's partition reads.
        if keyed:
            for p in patients:
                send(
                    kafka_bootstrap,
                    topics["input"],
                    p,
                    message(p, f"R-{p}", f"S-{p}", DAY0, antibodies("180")),
                )
        else:
            producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)  # murmur2, as the service
            source = SourceRef(topic=topics["input"], partition=0, offset=0)
            for p in patients:
                producer.send(f"{group}.patient-results", result_value(_reflex(p), source), p.encode())
            producer.flush()
            producer.close()

        # A new disk: everything the stage knows must come from the changelog first.
        second = start_service(TDM_STATE_DIR=str(tmp_path / "second"), **env)
        reader.wait_for(2 * PATIENTS, timeout_s=90, while_alive=[second])
        reader.settle(2.0)
        assert second.stop() == 0
    finally:
        reader.close()
    triggers = {e["patient_id"]: e for e in reader.alerts[:PATIENTS]}
    later = reader.alerts[PATIENTS:]
    assert [e["action"] for e in later] == ["update"] * PATIENTS, (
        "a reflex result was read before its patient's state was restored"
    )
    for event in later:
        assert event["pattern"] == "immunogenic_failure"
        assert event["incident_key"] == triggers[event["patient_id"]]["incident_key"]


def _first_run(bootstrap, topics, start_service, env, *, state_dir, patients) -> None:
    """Each patient's low level pages once; the instance stops cleanly, its store on disk."""
    reader = AlertReader(bootstrap, topics["alerts"])
    try:
        first = start_service(TDM_STATE_DIR=str(state_dir), **env)
        for p in patients:
            send(bootstrap, topics["input"], p, message(p, f"A-{p}", f"S-{p}", DAY0, level("1.6")))
        reader.wait_for(len(patients), timeout_s=90, while_alive=[first])
        assert first.stop() == 0
    finally:
        reader.close()


def _reflexes_after(bootstrap, topics, service, patients) -> list[dict[str, object]]:
    """The events of the reflex antibody results, and proof no level was read again."""
    reader = AlertReader(bootstrap, topics["alerts"])
    try:
        for p in patients:
            send(bootstrap, topics["input"], p, message(p, f"R-{p}", f"S-{p}", DAY0, antibodies("180")))
        reader.wait_for(2 * len(patients), timeout_s=90, while_alive=[service])
        reader.settle(2.0)
    finally:
        reader.close()
    # Read from the start across three partitions: the first run's events are not all first.
    levels = [e for e in reader.alerts if e["analyte"] == "infliximab"]
    assert len(levels) == len(patients), "a level was read again"
    return [e for e in reader.alerts if e["analyte"] != "infliximab"]


def test_a_damaged_store_is_rebuilt_from_the_changelog(kafka_bootstrap, topics, start_service, tmp_path):
    patients = [f"DM-{uuid.uuid4().hex[:4]}-{n:02d}" for n in range(12)]
    env = dict(TDM_GROUP_ID=f"damaged-{uuid.uuid4().hex[:6]}", **SERVICE)
    state = tmp_path / "state"
    _first_run(kafka_bootstrap, topics, start_service, env, state_dir=state, patients=patients)
    damaged = list(state.rglob("*.sqlite"))
    assert damaged
    for path in damaged:
        with path.open("r+b") as f:
            f.write(b"\x00" * 100)  # the first bytes overwritten
    second = start_service(TDM_STATE_DIR=str(state), **env)
    later = _reflexes_after(kafka_bootstrap, topics, second, patients)
    assert [e["action"] for e in later] == ["update"] * len(patients)  # every level found again
    assert {e["pattern"] for e in later} == {"immunogenic_failure"}
    assert metric_total(scrape(metrics_port(second.log_text())), "tdm_state_rebuilds_total") >= len(damaged)
    assert metric_total(scrape(metrics_port(second.log_text())), "tdm_dead_letters_total") == 0
    assert second.stop() == 0
    assert "rebuilding it from the changelog" in second.log_text()


def test_a_store_ahead_of_a_recreated_changelog_is_not_trusted(
    kafka_bootstrap, topics, start_service, tmp_path
):
    patients = [f"AH-{uuid.uuid4().hex[:4]}-{n:02d}" for n in range(12)]
    group = f"ahead-{uuid.uuid4().hex[:6]}"
    env = dict(TDM_GROUP_ID=group, **SERVICE)
    state = tmp_path / "state"
    _first_run(kafka_bootstrap, topics, start_service, env, state_dir=state, patients=patients)
    # The changelog starts again empty (recreated, or a new cluster), the old disk stays.
    internal = [f"{group}.patient-state-changelog", f"{group}.patient-results"]
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_topics(internal)
        deadline = time.monotonic() + 30
        while set(internal) & set(admin.list_topics()) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        admin.close()
    second = start_service(TDM_STATE_DIR=str(state), **env)
    later = _reflexes_after(kafka_bootstrap, topics, second, patients)
    # The changelog knows none of them: each antibody result is a page of its own, not an
    # update of an incident only the stale disk remembers.
    assert [(e["action"], e["category"]) for e in later] == [("trigger", "anti_drug_antibodies")] * len(
        patients
    )
    assert second.stop() == 0
    assert "not_this_changelog" in second.log_text()


def test_a_state_dir_that_cannot_be_written_is_fatal_and_named(
    kafka_bootstrap, topics, start_service, tmp_path
):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    service = start_service(TDM_STATE_DIR=str(blocker), **SERVICE)
    send(kafka_bootstrap, topics["input"], "PT-X", message("PT-X", "A-X", "S-X", DAY0, level("1.6")))
    deadline = time.monotonic() + 60
    while service.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not service.alive()
    assert service.stop() == 1
    text = service.log_text()
    assert '"fatal"' in text and "TDM_STATE_DIR" in text and "Traceback" not in text
    assert read_topic(kafka_bootstrap, topics["dlq"], expected=0, timeout_s=3) == []
