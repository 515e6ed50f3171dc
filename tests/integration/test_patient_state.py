"""Remembering the patient on the real broker: pairs across messages and days, corrections,
kill -9 recovery of state, and state moving between instances.

Expected events are derived from the clinical reading of each generated result (see `feed`),
and the crash run is also compared, event id for event id, with a clean run of the same input.
"""

from __future__ import annotations

import functools
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic

from tests.conftest import gauges, metric_total, metrics_port, produce, read_topic, run_cli, scrape
from tests.integration.test_exactly_once import (
    SERVICE,
    AlertReader,
    wait_for_log,
    wait_until,
)

pytestmark = pytest.mark.integration

DAY0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def message(patient: str, accession: str, specimen: str, at: datetime, result: dict[str, object]) -> bytes:
    return json.dumps(
        {
            "patient_id": patient,
            "accession": accession,
            "specimen_id": specimen,
            "collected_at": at.isoformat(),
            "results": [result],
        }
    ).encode()


def level(value: str, status: str = "final", result_id: str | None = None) -> dict[str, object]:
    return {"code": "39803-2", "value": value, "unit": "ug/mL", "status": status, "result_id": result_id}


def antibodies(value: str, status: str = "final", result_id: str | None = None) -> dict[str, object]:
    return {"code": "INXAB", "value": value, "unit": "U/mL", "status": status, "result_id": result_id}


def send(bootstrap: str, topic: str, patient: str, *messages: bytes) -> None:
    """Produce messages keyed by the patient, as a patient-keyed feed would."""
    produce(bootstrap, topic, list(messages), [patient.encode()] * len(messages))


def events_of(reader: AlertReader) -> list[dict[str, object]]:
    reader.settle(2.0)
    return reader.alerts


def alerts_after(
    bootstrap: str,
    topics: dict[str, str],
    start_service,
    *,
    patient: str,
    chain: list[bytes],
    count: int,
    **env,
) -> tuple[list[dict[str, object]], str]:
    """Send `chain` for `patient`, run the service until `count` alerts and stop it cleanly:
    the alerts (read a little longer, so an extra one shows) and the service's log."""
    send(bootstrap, topics["input"], patient, *chain)
    service = start_service(**env)
    reader = AlertReader(bootstrap, topics["alerts"])
    try:
        reader.wait_for(count, timeout_s=60, while_alive=[service])
        found = events_of(reader)
    finally:
        reader.close()
    assert service.stop() == 0
    return found, service.log_text()


@pytest.mark.parametrize("antibody_first", [False, True], ids=["level-first", "antibodies-first"])
def test_a_reflex_antibody_days_later_turns_the_page_critical(
    kafka_bootstrap, topics, start_service, antibody_first
):
    patient = f"PT-{uuid.uuid4().hex[:6]}"
    first = message(patient, "ACC-1", "SPM-1", DAY0, level("1.4"))
    # The reflex test runs two days later at the reference lab, on the same specimen.
    reflex = message(patient, "ACC-1-R", "SPM-1", DAY0, antibodies("180"))
    ordered = [reflex, first] if antibody_first else [first, reflex]
    service = start_service()
    reader = AlertReader(kafka_bootstrap, topics["alerts"])
    try:
        send(kafka_bootstrap, topics["input"], patient, ordered[0])
        reader.wait_for(1, timeout_s=60, while_alive=[service])
        send(kafka_bootstrap, topics["input"], patient, ordered[1])
        reader.wait_for(2, timeout_s=60, while_alive=[service])
        trigger, update = events_of(reader)
    finally:
        reader.close()
    assert (trigger["action"], trigger["severity"]) == ("trigger", "high")
    assert (update["action"], update["severity"], update["pattern"]) == (
        "update",
        "critical",
        "immunogenic_failure",
    )
    assert update["incident_key"] == trigger["incident_key"]
    assert update["partner"] is not None
    assert service.stop() == 0


def test_one_incident_from_trigger_to_resolve(kafka_bootstrap, topics, start_service):
    """Low level; reflex antibodies; the level corrected into range; the antibody result withdrawn."""
    patient = f"PT-{uuid.uuid4().hex[:6]}"
    chain = [
        message(patient, "ACC-9", "SPM-9", DAY0, level("2.0", result_id="LVL-9")),
        message(patient, "ACC-9-R", "SPM-9", DAY0, antibodies("150", result_id="ATI-9")),
        message(patient, "ACC-9", "SPM-9", DAY0, level("4.5", status="corrected", result_id="LVL-9")),
        message(
            patient, "ACC-9-R", "SPM-9", DAY0, antibodies("150", status="entered_in_error", result_id="ATI-9")
        ),
    ]
    expected = [
        ("trigger", "high", None),  # 2.0 < 3: intensify, check antibodies
        ("update", "critical", "immunogenic_failure"),  # low level with antibodies
        ("update", "high", "antibodies_with_adequate_level"),  # 4.5 is in range, antibodies remain
        ("resolve", "high", None),  # without the antibody result nothing calls for attention
    ]
    found, _ = alerts_after(
        kafka_bootstrap, topics, start_service, patient=patient, chain=chain, count=len(expected)
    )
    assert [(e["action"], e["severity"], e["pattern"]) for e in found] == expected
    assert len({e["incident_key"] for e in found}) == 1
    assert "entered in error" in str(found[-1]["resolve_reason"])


@dataclass(frozen=True)
class StatefulFeed:
    messages: list[bytes]
    keys: list[bytes]
    actions: Counter[str]  # expected events by action, from the clinical reading of each patient


def feed(patients: int, total: int, seed: int) -> StatefulFeed:
    """Per patient: a level, its reflex antibody result in a later message, sometimes a correction.

    Read clinically: a low level (2.0) opens an incident; its antibody partner updates it
    (critical when detected); a correction to 4.0 then updates it (antibodies still detected) or
    resolves it. A normal level (5.0) with antibodies detected opens one incident; without, nothing.
    """
    rng = random.Random(seed)
    per_patient: list[list[bytes]] = []
    actions: Counter[str] = Counter()
    for n in range(patients):
        patient, at = f"SP-{seed}-{n:05d}", DAY0 + timedelta(minutes=n)
        low, detected, corrected = rng.random() < 0.6, rng.random() < 0.5, rng.random() < 0.25
        spm = f"S{n}"
        chain = [
            message(patient, f"A{n}", spm, at, level("2.0" if low else "5.0", result_id=f"L{n}")),
            message(patient, f"A{n}R", spm, at, antibodies("180" if detected else "20", result_id=f"B{n}")),
        ]
        if low:
            actions["trigger"] += 1
            actions["update"] += 1
            if corrected:
                chain.append(message(patient, f"A{n}", spm, at, level("4.0", "corrected", f"L{n}")))
                actions["update" if detected else "resolve"] += 1
        elif detected:
            actions["trigger"] += 1
        per_patient.append(chain)
    messages, keys = [], []
    pending = [(i, 0) for i in range(patients)]
    filler = total - sum(len(c) for c in per_patient)
    assert filler >= 0
    glucose = json.dumps(
        {"patient_id": "X", "results": [{"code": "2345-7", "display": "Glucose", "value": "98"}]}
    )
    slots = ["p"] * sum(len(c) for c in per_patient) + ["f"] * filler
    rng.shuffle(slots)
    for slot in slots:
        if slot == "f":
            messages.append(glucose.encode())
            keys.append(f"f{len(messages)}".encode())
            continue
        at = rng.randrange(len(pending))
        patient, step = pending[at]
        chain = per_patient[patient]
        messages.append(chain[step])
        keys.append(f"SP-{seed}-{patient:05d}".encode())  # keyed by patient: one input partition each
        if step + 1 < len(chain):
            pending[at] = (patient, step + 1)
        else:
            pending.pop(at)
    return StatefulFeed(messages, keys, actions)


def _topics(bootstrap: str, stem: str) -> dict[str, str]:
    names = {"input": f"{stem}.in", "alerts": f"{stem}.alerts", "dlq": f"{stem}.dlq"}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            [NewTopic(names["input"], 3, 1), NewTopic(names["alerts"], 3, 1), NewTopic(names["dlq"], 1, 1)]
        )
    finally:
        admin.close()
    return names


def _changelog(bootstrap: str, group: str) -> dict[str, object]:
    """The last changelog value per patient: the state a from-scratch rebuild would restore."""
    reader = KafkaConsumer(
        f"{group}.patient-state-changelog",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        group_id=None,
    )
    state: dict[str, object] = {}
    idle = 0
    try:
        while idle < 5:
            polled = reader.poll(timeout_ms=400)
            idle = 0 if polled else idle + 1
            for records in polled.values():
                for r in records:
                    if r.value is None:
                        state.pop(r.key.decode(), None)
                    else:
                        state[r.key.decode()] = json.loads(r.value)
    finally:
        reader.close()
    return state


@pytest.mark.slow
def test_kill_9_during_a_stateful_stream_matches_a_clean_run(kafka_bootstrap, start_service, tmp_path):
    seed = random.randrange(1_000_000)
    print(f"seed {seed}")
    rng = random.Random(seed)
    data = feed(patients=2_000, total=20_000, seed=seed)
    expected = sum(data.actions.values())
    # The same records in both runs, timestamps included: a result's follow-ups and its incident's
    # opening time count from when it reached the feed (its record's timestamp).
    arrived = int(time.time() * 1000) - len(data.messages)
    stamps = [arrived + n for n in range(len(data.messages))]
    results = {}
    for run in ("clean", "crash"):
        stem = f"sp-{run}-{uuid.uuid4().hex[:6]}"
        names = _topics(kafka_bootstrap, stem)
        produce(kafka_bootstrap, names["input"], data.messages, data.keys, timestamps_ms=stamps)
        group = f"g-{stem}"
        env = dict(
            TDM_INPUT_TOPICS=names["input"],
            TDM_ALERT_TOPIC=names["alerts"],
            TDM_DLQ_TOPIC=names["dlq"],
            TDM_GROUP_ID=group,
            TDM_INSTANCE_ID="one",
            TDM_STATE_DIR=str(tmp_path / run),
            TDM_STALL_TIMEOUT_S="45",  # a hung re-join is restarted, as an orchestrator would
            **SERVICE,
        )
        start = functools.partial(start_service, **env)
        reader = AlertReader(kafka_bootstrap, names["alerts"])
        kills = 0
        try:
            if run == "crash":
                for target in sorted(rng.sample(range(50, expected - 50), 5)):
                    service = start()
                    reader.wait_for(target, timeout_s=120, while_alive=[service])
                    time.sleep(rng.uniform(0, 0.2))
                    service.kill()
                    kills += 1
            final = start()
            reader.wait_for(expected, timeout_s=300, while_alive=[final])
            reader.settle(3.0)
            assert final.stop() == 0
        finally:
            reader.close()
        events = reader.alerts
        results[run] = {
            "event_ids": Counter(str(e["event_id"]) for e in events),
            "actions": Counter(str(e["action"]) for e in events),
            "state": _changelog(kafka_bootstrap, group),
        }
        print(f"{run}: {len(events)} events {dict(results[run]['actions'])}, kills {kills}")
    assert results["clean"]["actions"] == data.actions
    assert results["crash"]["event_ids"] == results["clean"]["event_ids"]  # none lost, none twice
    assert results["crash"]["state"] == results["clean"]["state"]
    assert len(results["clean"]["state"]) == 2_000


@pytest.mark.slow
@pytest.mark.input_partitions(6)
def test_state_moves_with_its_partitions_when_an_instance_stops(
    kafka_bootstrap, topics, start_service, tmp_path
):
    group = f"move-{topics['input']}"
    patients = [f"MV-{n:03d}" for n in range(60)]
    levels = [message(p, f"A-{p}", f"S-{p}", DAY0, level("1.8")) for p in patients]
    reflexes = [message(p, f"R-{p}", f"S-{p}", DAY0, antibodies("200")) for p in patients]
    keys = [p.encode() for p in patients]
    services = []
    for n in range(3):
        # Each instance its own disk, as pods have: a moved partition must come from the changelog.
        services.append(
            start_service(
                TDM_INSTANCE_ID=f"m{n}", TDM_GROUP_ID=group, TDM_STATE_DIR=str(tmp_path / f"m{n}"), **SERVICE
            )
        )
        wait_for_log(services[-1], '"partitions assigned"', timeout_s=60)
    reader = AlertReader(kafka_bootstrap, topics["alerts"])
    try:
        # 6 input and 6 patient partitions, shared by three.
        wait_until(lambda: gauges(services, "tdm_assigned_partitions") == [4, 4, 4], 90)
        produce(kafka_bootstrap, topics["input"], levels, keys)
        reader.wait_for(len(patients), timeout_s=90, while_alive=services)
        # The instance about to leave holds some patients' state (the gauge refreshes every 10 s).
        wait_until(lambda: gauges(services[1:2], "tdm_state_patients") > [0], 30)

        leaving = services.pop(1)
        assert leaving.stop() == 0
        wait_until(lambda: sum(gauges(services, "tdm_assigned_partitions")) == 12, 60)
        produce(kafka_bootstrap, topics["input"], reflexes, keys)
        reader.wait_for(2 * len(patients), timeout_s=120, while_alive=services)
        updates = [e for e in events_of(reader) if e["action"] == "update"]
        # Every reflex found its level, including those whose state had to move.
        assert len(updates) == len(patients)
        assert {e["pattern"] for e in updates} == {"immunogenic_failure"}
        wait_until(lambda: sum(gauges(services, "tdm_state_patients")) == len(patients), 30)
        for service in services:
            assert service.stop() == 0
    finally:
        reader.close()


def test_forget_removes_a_patients_state(kafka_bootstrap, topics, start_service, service_env):
    patient = f"PT-{uuid.uuid4().hex[:6]}"
    group = service_env["TDM_GROUP_ID"]
    service = start_service()
    reader = AlertReader(kafka_bootstrap, topics["alerts"])
    try:
        send(kafka_bootstrap, topics["input"], patient, message(patient, "F1", "FS1", DAY0, level("1.0")))
        reader.wait_for(1, timeout_s=60, while_alive=[service])
        assert patient in _changelog(kafka_bootstrap, group)
        run_cli(service_env, "forget", patient, timeout=60)
        wait_until(lambda: patient not in _changelog(kafka_bootstrap, group), 30)
        # Forgotten: the reflex result that follows finds no level to pair with.
        reflex = message(patient, "F1R", "FS1", DAY0, antibodies("200"))
        send(kafka_bootstrap, topics["input"], patient, reflex)
        reader.wait_for(2, timeout_s=60, while_alive=[service])
        assert [e["action"] for e in events_of(reader)] == ["trigger", "trigger"]
    finally:
        reader.close()
    assert service.stop() == 0
    assert patient not in service.log_text()


@pytest.mark.parametrize("keyed", [False, True], ids=["repartition-hop", "input-keyed-by-patient"])
def test_the_treatment_context_topic_sets_the_target(kafka_bootstrap, topics, start_service, keyed):
    """A subcutaneous patient's 15 ug/mL is low (threshold 17.5), not above the IV range."""
    context = f"{topics['input']}.context"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        # Keyed input reads the context beside it, so the two are co-partitioned (3 each).
        partitions = 3 if keyed else 2
        admin.create_topics([NewTopic(context, partitions, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        admin.close()
    sc, iv = f"SC-{uuid.uuid4().hex[:6]}", f"IV-{uuid.uuid4().hex[:6]}"
    send(kafka_bootstrap, context, sc, json.dumps({"route": "subcutaneous", "phase": "maintenance"}).encode())
    # A third patient's dose history from a pharmacy feed (HL7 RAS^O17) and a weight (FHIR):
    # their low level's alert carries the next-trough forecast.
    fc = f"FC-{uuid.uuid4().hex[:6]}"
    send(kafka_bootstrap, context, fc, json.dumps({"route": "intravenous", "phase": "maintenance"}).encode())
    send(kafka_bootstrap, context, fc, _weight(70), _administrations(fc, DAY0, (210, 196, 168, 112, 56)))
    # A messy dose history (issue 37: it cost the page): the last infusion paused and restarted 90
    # minutes later, and re-sent with a corrected start; the same report holds antibodies.
    mx = f"MX-{uuid.uuid4().hex[:6]}"
    messy = [_given(mx, f"MA-{n}", DAY0 - timedelta(days=d)) for n, d in enumerate((210, 196, 168, 112, 56))]
    messy.append(_given(mx, "MA-5", DAY0 - timedelta(days=56, minutes=-90)))
    messy.append(_given(mx, "MA-4", DAY0 - timedelta(days=56, minutes=-30)))
    send(kafka_bootstrap, context, mx, _weight(70), *messy)
    service = start_service(
        TDM_CONTEXT_TOPIC=context, TDM_INPUT_KEYED_BY_PATIENT=str(keyed).lower(), TDM_LAB_COVARIATES="true"
    )
    reader = AlertReader(kafka_bootstrap, topics["alerts"])
    try:
        # A real assignment, not kafka-python's empty first one (K3): an instance restarted after
        # a hung join would otherwise meet the context record and the results together, in any
        # order, and a result read before its record is judged without it.
        wait_until(lambda: '"partitions": ["' in _assigned_lines(service), timeout_s=90)
        time.sleep(2)  # the context record is read and kept before the results arrive
        results = [message(p, f"A-{p}", f"S-{p}", DAY0, level("15")) for p in (sc, iv)]
        # The forecast patient's albumin comes from the lab feed, in a chemistry panel before the level.
        results.append(_chemistry_panel(fc, DAY0, albumin_g_per_l="31"))
        results.append(message(fc, f"A-{fc}", f"S-{fc}", DAY0, level("1.6")))
        report = json.loads(message(mx, f"A-{mx}", f"S-{mx}", DAY0, level("1.2")))
        report["results"].append(antibodies("650"))
        results.append(json.dumps(report).encode())
        keys = [sc.encode(), iv.encode(), fc.encode(), fc.encode(), mx.encode()]
        produce(kafka_bootstrap, topics["input"], results, keys)
        reader.wait_for(4, timeout_s=60, while_alive=[service])
        found = events_of(reader)
    finally:
        reader.close()
    # The messy history's patient is paged (the antibodies' trigger, the level's critical update),
    # the level's forecast withheld (antibodies in the same report), nothing dead-lettered.
    paged = [e for e in found if e["patient_id"] == mx]
    assert [e["action"] for e in paged] == ["trigger", "update"] and paged[-1]["severity"] == "critical"
    assert paged[-1]["forecast"]["status"] == "refused" and paged[-1]["forecast"]["code"] == "withheld"
    assert "processing_error" not in service.log_text()
    found = [e for e in found if e["patient_id"] != mx]
    # The IV patient's 15 is above range: no page.
    assert sorted(e["patient_id"] for e in found) == sorted([sc, fc])
    (alert,) = [e for e in found if e["patient_id"] == sc]
    assert alert["target"]["low"] == 17.5
    assert alert["context_source"]["route"] == "patient_record"
    assert alert["forecast"]["status"] == "refused" and "subcutaneous" in alert["forecast"]["reason"]
    (forecast,) = [e["forecast"] for e in found if e["patient_id"] == fc]
    assert forecast["status"] == "forecast", forecast
    assert forecast["current"]["mg_per_kg"] == 5 and forecast["current"]["every_weeks"] == 8
    covariates = {c["name"]: c for c in forecast["covariates"]}
    assert covariates["weight_kg"]["value"] == 70
    assert covariates["albumin_g_per_dl"]["value"] == 3.1 and not covariates["albumin_g_per_dl"]["assumed"]
    # The readings counted are the ones made with the records: two low, one above.
    port = metrics_port(service.log_text())

    def findings() -> dict[str, float]:
        text = scrape(port)
        counted = ("subtherapeutic", "above_target")
        return {f: metric_total(text, "tdm_interpretations_total", finding=f) for f in counted}

    wait_until(lambda: sum(findings().values()) == 4, timeout_s=30)
    assert findings() == {"subtherapeutic": 3, "above_target": 1}
    kept = metric_total(scrape(port), "tdm_covariates_total", covariate="albumin", outcome="kept")
    assert kept == 1
    assert service.stop() == 0


def _chemistry_panel(patient: str, drawn: datetime, albumin_g_per_l: str) -> bytes:
    """An HL7 v2 chemistry panel with a serum albumin among other analytes, no infliximab."""
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


def _weight(kg: float) -> bytes:
    return json.dumps(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "valueQuantity": {"value": kg, "unit": "kg"},
        }
    ).encode()


def _given(patient: str, ident: str, start: datetime) -> bytes:
    """A FHIR MedicationAdministration: 5 mg/kg of infliximab begun at `start`."""
    return json.dumps(
        {
            "resourceType": "MedicationAdministration",
            "id": ident,
            "status": "completed",
            "subject": {"reference": f"Patient/{patient}"},
            "medicationCodeableConcept": {"text": "Infliximab"},
            "effectiveDateTime": start.isoformat(),
            "dosage": {"dose": {"value": 5, "unit": "mg/kg"}},
        }
    ).encode()


def _administrations(patient: str, drawn: datetime, days_before: tuple[int, ...]) -> bytes:
    """One RAS^O17 message: 5 mg/kg infusions this many days before the level was drawn."""
    segments = ["MSH|^~\\&|PHARM|H|TDM|H|20261102||RAS^O17^RAS_O17|R1|P|2.5", f"PID|1||{patient}^^^H^MR"]
    for days in days_before:
        start = (drawn - timedelta(days=days, hours=-1)).strftime("%Y%m%d%H%M%S")
        segments.append(
            "|".join(["RXA", "0", "1", start, "", "INFX^Infliximab^L", "5", "mg/kg"] + [""] * 12 + ["CP"])
        )
        segments.append("RXR|IV^Intravenous^HL70162")
    return "\r".join(segments).encode()


def test_a_low_level_corrected_into_range_resolves_its_incident(kafka_bootstrap, topics, start_service):
    patient = f"PT-{uuid.uuid4().hex[:6]}"
    chain = [
        message(patient, "ACC-C", "SPM-C", DAY0, level("1.9", result_id="LVL-C")),
        message(patient, "ACC-C", "SPM-C", DAY0, level("3.6", status="corrected", result_id="LVL-C")),
    ]
    found, _ = alerts_after(kafka_bootstrap, topics, start_service, patient=patient, chain=chain, count=2)
    assert [(e["action"], e["resolve_reason"]) for e in found] == [
        ("trigger", None),
        ("resolve", "corrected into range"),  # 3.6 is within 3-7
    ]
    assert found[0]["incident_key"] == found[1]["incident_key"]


def test_input_already_keyed_by_patient_skips_the_repartition_hop(kafka_bootstrap, topics, start_service):
    patient = f"KY-{uuid.uuid4().hex[:6]}"
    results = [
        message(patient, "ACC-K", "SPM-K", DAY0, level("1.2")),
        message(patient, "ACC-K-R", "SPM-K", DAY0, antibodies("150")),
    ]
    found, log = alerts_after(
        kafka_bootstrap,
        topics,
        start_service,
        patient=patient,
        chain=results,
        count=2,
        TDM_INPUT_KEYED_BY_PATIENT="true",
    )
    assert [(e["action"], e["severity"]) for e in found] == [("trigger", "high"), ("update", "critical")]
    assert ".patient-results" not in log  # no repartition topic was created or consumed


def test_a_patient_record_the_service_cannot_read_is_dead_lettered_and_the_stream_goes_on(
    kafka_bootstrap, topics, start_service, service_env
):
    """A record on the patient topic this version cannot read (another version's, or one written
    by hand) goes to the dead-letter topic with its reason; it does not stop the service, and the
    next patient's result is still paged."""
    patient, other = f"BAD-{uuid.uuid4().hex[:6]}", f"PT-{uuid.uuid4().hex[:6]}"
    patient_topic = f"{service_env['TDM_GROUP_ID']}.patient-results"
    service = start_service()
    reader = AlertReader(kafka_bootstrap, topics["alerts"])
    try:
        wait_for_log(service, '"partitions assigned"', timeout_s=60)  # the patient topic exists
        unreadable = json.dumps({"result": {"patient_id": patient, "code": "39803-2"}}).encode()
        produce(kafka_bootstrap, patient_topic, [unreadable], [patient.encode()])
        send(kafka_bootstrap, topics["input"], other, message(other, "B1", "BS1", DAY0, level("1.0")))
        reader.wait_for(1, timeout_s=60, while_alive=[service])
        found = events_of(reader)
    finally:
        reader.close()
    assert [e["patient_id"] for e in found] == [other]
    (dead,) = read_topic(kafka_bootstrap, topics["dlq"], expected=1)
    headers = dict(dead.headers)
    assert dead.value == unreadable and dead.key == patient.encode()  # kept as it was
    assert headers["tdm.dlq.reason"] == b"processing_error"
    assert headers["tdm.dlq.stage"] == b"interpret"
    assert headers["tdm.dlq.source.topic"].decode() == patient_topic
    assert service.stop() == 0
    assert patient not in service.log_text()  # the error names a type, not the record


def _assigned_lines(service) -> str:
    return "\n".join(line for line in service.log_text().splitlines() if '"partitions assigned"' in line)
