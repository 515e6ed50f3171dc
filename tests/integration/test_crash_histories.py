"""Whole patient histories through crashes, lost disks, a broker restart and a takeover (issue 27).

The service's committed events must equal what `tdm-alerts interpret` reads from the same feed:
the same (event id, action, incident key) multiset, the same details, the same order per
patient. Each history is what a TDM service sees: low troughs, reflex antibody results days
later, corrections, withdrawals, indeterminate results, identical resends and a later trough.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import gauges, produce, run_cli
from tests.integration.test_exactly_once import SERVICE, AlertReader, wait_for_log, wait_until
from tests.integration.test_patient_state import _topics, antibodies, level, message

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY0 = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)


def _message(patient: str, accession: str, specimen: str, at: datetime, result: dict[str, object]) -> str:
    return message(patient, accession, specimen, at, result).decode()


def _result(code: str, value: str, unit: str, status: str, result_id: str) -> dict[str, object]:
    made = level if code == "39803-2" else antibodies
    return {**made(value, status, result_id), "unit": unit}


def _history(rng: random.Random, patient: str) -> list[str]:
    """One patient's messages in the order the lab sends them."""
    at = DAY0 + timedelta(minutes=rng.randrange(60 * 24 * 20))
    low = rng.random() < 0.6
    chain = [
        _message(
            patient,
            "A1",
            "S1",
            at,
            _result("39803-2", rng.choice(["1.2", "2.4"]) if low else "5.1", "ug/mL", "final", "L1"),
        )
    ]
    antibody = rng.choice(["180", "20", "indeterminate"])
    chain.append(_message(patient, "A1R", "S1", at, _result("INXAB", antibody, "U/mL", "final", "B1")))
    if rng.random() < 0.2:
        chain.append(chain[-1])  # an identical resend
    roll = rng.random()
    if roll < 0.25:
        corrected = rng.choice(["4.2", "1.9"])
        chain.append(
            _message(patient, "A1", "S1", at, _result("39803-2", corrected, "ug/mL", "corrected", "L1"))
        )
    elif roll < 0.4:
        chain.append(
            _message(patient, "A1R", "S1", at, _result("INXAB", antibody, "U/mL", "entered_in_error", "B1"))
        )
    if rng.random() < 0.5:  # the next trough, eight weeks on
        later = at + timedelta(weeks=8)
        chain.append(
            _message(
                patient,
                "A2",
                "S2",
                later,
                _result("39803-2", rng.choice(["0.9", "3.8"]), "ug/mL", "final", "L2"),
            )
        )
    return chain


def history_feed(patients: int, filler: int, seed: int) -> tuple[list[str], list[bytes]]:
    """Histories interleaved across patients (each patient's order kept), with filler."""
    rng = random.Random(seed)
    chains = {f"CH-{seed}-{n:04d}": _history(rng, f"CH-{seed}-{n:04d}") for n in range(patients)}
    glucose = json.dumps(
        {"patient_id": "X", "results": [{"code": "2345-7", "display": "Glucose", "value": "98"}]}
    )
    slots = [p for p, chain in chains.items() for _ in chain] + [""] * filler
    rng.shuffle(slots)
    step: Counter[str] = Counter()
    messages, keys = [], []
    for slot in slots:
        if not slot:
            messages.append(glucose)
            keys.append(f"f{len(keys)}".encode())
            continue
        messages.append(chains[slot][step[slot]])
        keys.append(slot.encode())  # a feed keyed by patient keeps each patient's order
        step[slot] += 1
    return messages, keys


def _expected(service_env: dict[str, str], messages: list[str], tmp_path) -> list[dict[str, object]]:
    feed = tmp_path / "feed.jsonl"
    feed.write_text("\n".join(messages) + "\n")
    out = run_cli(service_env, "interpret", str(feed)).stdout
    return [
        {**e, "patient_id": line["patient_id"]}
        for line in map(json.loads, out.splitlines())
        for e in line.get("events", [])
    ]


def _shared(*services: object) -> bool:
    """Both instances hold partitions (all nine: three input, six patient)."""
    try:
        held = gauges(list(services), "tdm_assigned_partitions")
    except AssertionError:  # a metrics port not logged yet
        return False
    return sum(held) == 9 and 0 not in held


def _detail(event: dict[str, object]) -> tuple[object, ...]:
    previous = event.get("previous_levels") or []
    values = [float(p["value"]) if isinstance(p, dict) else float(p) for p in previous]  # type: ignore[arg-type]
    return (
        event["action"],
        event["incident_key"],
        event["severity"],
        event["category"],
        event["pattern"],
        values,
    )


def test_histories_through_kills_wiped_disks_a_broker_restart_and_a_takeover(
    kafka_broker, service_env, start_service, tmp_path
):
    seed = int(os.environ.get("TEST_SEED") or random.randrange(1_000_000))  # to replay a failure
    print(f"seed {seed}")
    rng = random.Random(seed)
    messages, keys = history_feed(patients=240, filler=1_500, seed=seed)
    expected = _expected(service_env, messages, tmp_path)
    total = len(expected)
    assert total > 240

    bootstrap = kafka_broker.bootstrap
    names = _topics(bootstrap, f"ch-{uuid.uuid4().hex[:6]}")
    group = f"g-ch-{uuid.uuid4().hex[:6]}"
    env = dict(
        TDM_INPUT_TOPICS=names["input"],
        TDM_ALERT_TOPIC=names["alerts"],
        TDM_DLQ_TOPIC=names["dlq"],
        TDM_GROUP_ID=group,
        TDM_RETRY_BACKOFF_MAX_S="2",
        **SERVICE,
    )
    half = len(messages) // 2
    produce(bootstrap, names["input"], [m.encode() for m in messages[:half]], keys[:half])
    reader = AlertReader(bootstrap, names["alerts"])
    disk = tmp_path / "disk"
    try:
        targets = iter(sorted(rng.sample(range(20, total // 3), 4)))  # within the first half's events
        for wipe in (False, True, False, True):  # kill -9, then restart on the same disk or a new one
            one = start_service(TDM_INSTANCE_ID="one", TDM_STATE_DIR=str(disk), **env)
            reader.wait_for(next(targets), timeout_s=120, while_alive=[one])
            time.sleep(rng.uniform(0, 0.2))
            one.kill()
            if wipe:
                shutil.rmtree(disk, ignore_errors=True)
        one = start_service(TDM_INSTANCE_ID="one", TDM_STATE_DIR=str(disk), **env)
        time.sleep(1.5)  # in the restore of a wiped disk, or just after
        one.kill()
        shutil.rmtree(disk, ignore_errors=True)

        # The broker restarts under a running instance, then the rest of the feed arrives.
        one = start_service(TDM_INSTANCE_ID="one", TDM_STATE_DIR=str(disk), **env)
        # An instance killed while joining holds the group for up to the rebalance timeout (60 s).
        wait_for_log(one, '"patient state restored"', timeout_s=150)
        reader.consumer.close()
        kafka_broker.stop()
        time.sleep(3)
        kafka_broker.start()
        reader = AlertReader(bootstrap, names["alerts"])
        produce(bootstrap, names["input"], [m.encode() for m in messages[half:]], keys[half:])

        # A second instance joins; the first is killed and the second takes over its patients.
        two = start_service(TDM_INSTANCE_ID="two", TDM_STATE_DIR=str(tmp_path / "disk-two"), **env)
        wait_for_log(two, '"partitions assigned"', timeout_s=60)
        wait_until(lambda: _shared(one, two), 90)
        one.kill()
        reader.wait_for(total, timeout_s=300, while_alive=[two])
        reader.settle(3.0)
        assert two.stop() == 0
    finally:
        reader.close()

    found = reader.alerts
    key = lambda e: (e["event_id"], e["action"], e["incident_key"])  # noqa: E731
    assert Counter(map(key, found)) == Counter(map(key, expected))
    by_id = {e["event_id"]: _detail(e) for e in expected}
    assert {e["event_id"]: _detail(e) for e in found} == by_id
    order: dict[str, list[object]] = defaultdict(list)
    for e in expected:
        order[str(e["patient_id"])].append(e["event_id"])
    seen: dict[str, list[object]] = defaultdict(list)
    for e in found:
        seen[str(e["patient_id"])].append(e["event_id"])
    assert seen == order
    print(f"{total} events, {Counter(str(e['action']) for e in found)}")


@pytest.mark.parametrize("keyed", [False, True], ids=["repartition", "keyed-input"])
def test_interpret_and_the_service_agree_with_non_default_correlation_settings(
    kafka_bootstrap, service_env, start_service, tmp_path, keyed
):
    """Issue 23, class 7: one settings object feeds both readings."""
    settings = {"TDM_PAIR_WINDOW_HOURS": "1", "TDM_PREVIOUS_LEVELS": "1", "TDM_PARTNER_KEEP_DAYS": "2"}
    patient = f"AG-{uuid.uuid4().hex[:6]}"
    at = DAY0
    messages = [
        _message(patient, "A1", "S1", at, _result("39803-2", "2.0", "ug/mL", "final", "L1")),
        # Another draw three hours later: a partner within 24 h, not within 1.
        _message(
            patient, "A2", "S2", at + timedelta(hours=3), _result("INXAB", "180", "U/mL", "final", "B1")
        ),
        _message(
            patient, "A3", "S3", at + timedelta(weeks=8), _result("39803-2", "1.5", "ug/mL", "final", "L2")
        ),
        _message(
            patient, "A4", "S4", at + timedelta(weeks=16), _result("39803-2", "1.1", "ug/mL", "final", "L3")
        ),
    ]
    env = {**service_env, **settings}
    expected = _expected(env, messages, tmp_path)
    default = _expected(service_env, messages, tmp_path)
    assert [_detail(e) for e in expected] != [_detail(e) for e in default]  # the settings matter here
    produce(
        kafka_bootstrap,
        env["TDM_INPUT_TOPICS"],
        [m.encode() for m in messages],
        [patient.encode()] * len(messages),
    )
    extra = {"TDM_INPUT_KEYED_BY_PATIENT": "true"} if keyed else {}
    service = start_service(**settings, **extra, **SERVICE)
    reader = AlertReader(kafka_bootstrap, env["TDM_ALERT_TOPIC"])
    try:
        reader.wait_for(len(expected), timeout_s=90, while_alive=[service])
        reader.settle(2.0)
    finally:
        reader.close()
    assert service.stop() == 0
    assert [(e["event_id"], *_detail(e)) for e in reader.alerts] == [
        (e["event_id"], *_detail(e)) for e in expected
    ]
