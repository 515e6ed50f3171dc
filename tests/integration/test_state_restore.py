"""A patient's state is restored before any of their records is read (issue 27), on the real broker.

The records wait on the patient topic before the instance that restores their partitions
starts, so the client can hand them over in the very poll that assigns the partitions: that is
where confluent-kafka delivered them while "paused" and they were read against an empty store.
"""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaProducer

from consumer.state.manager import repartition_value
from interpretation import LabResult, SourceRef
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
                producer.send(f"{group}.patient-results", repartition_value(_reflex(p), source), p.encode())
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
