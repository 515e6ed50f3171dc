"""Exactly-once alerting under kill -9, a broker restart, and scale-out, on the real broker.

Each test ends by reading the alert topic with read_committed and comparing, by accession
and by event_id, with the alerts the generated feed calls for: none missing, none twice.
"""

from __future__ import annotations

import json
import random
import socket
import time
import urllib.error
import urllib.request

import pytest
from kafka import KafkaConsumer, TopicPartition

from consumer.health import MEMBERSHIP_TIMEOUT_S
from tests.conftest import (
    KAFKA_CLIENT,
    gauges,
    live_port,
    metrics_port,
    produce,
    read_topic,
)
from tests.integration.feeds import Feed, canonical_feed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Small batches make many transactions, so kills and outages land inside one.
SERVICE = {"TDM_BATCH_MAX_RECORDS": "50", "TDM_COMMIT_INTERVAL_MS": "50", "TDM_SESSION_TIMEOUT_MS": "6000"}


class AlertReader:
    """Reads the alert topic as a paging system would (read_committed), incrementally."""

    def __init__(self, bootstrap: str, topic: str, isolation: str = "read_committed") -> None:
        self.consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level=isolation,
            group_id=None,
        )
        self.alerts: list[dict[str, object]] = []

    def read(self, timeout_ms: int = 200) -> int:
        for records in self.consumer.poll(timeout_ms=timeout_ms).values():
            self.alerts.extend(json.loads(r.value) for r in records)
        return len(self.alerts)

    def wait_for(self, count: int, timeout_s: float, while_alive: list[object] | None = None) -> int:
        deadline = time.monotonic() + timeout_s
        while self.read() < count:
            # The services' own logs go with a time-out: a flake on CI is only ever seen once.
            assert time.monotonic() < deadline, (
                f"{len(self.alerts)} of {count} alerts after {timeout_s} s\n"
                + "\n".join(s.diagnosis() for s in while_alive or [])  # type: ignore[attr-defined]
            )
            for service in while_alive or []:
                assert service.alive() or service.revive(), service.log_text()[-3000:]
        return len(self.alerts)

    def settle(self, seconds: float = 3.0) -> None:
        """Keep reading a little longer, so a late duplicate would be seen."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.read()

    def close(self) -> None:
        self.consumer.close()


def assert_exact(reader: AlertReader, feed: Feed) -> dict[str, int]:
    reader.settle()
    accessions = [str(a["accession"]) for a in reader.alerts]
    keys = {str(a["event_id"]) for a in reader.alerts}
    numbers = {
        "expected": len(feed.expected),
        "found": len(reader.alerts),
        "duplicates": len(accessions) - len(set(accessions)),
        "missing": len(feed.expected - set(accessions)),
        "unexpected": len(set(accessions) - feed.expected),
    }
    print(f"alerts: {numbers}")
    assert numbers == {**numbers, "duplicates": 0, "missing": 0, "unexpected": 0}
    assert len(keys) == len(feed.expected)
    return numbers


def aborted_records(bootstrap: str, topic: str, committed: int) -> int:
    """Records the broker holds beyond the committed ones: outputs of aborted transactions."""
    raw = AlertReader(bootstrap, topic, isolation="read_uncommitted")
    try:
        raw.settle(2.0)
        return len(raw.alerts) - committed
    finally:
        raw.close()


def test_kill_9_at_random_points_loses_and_duplicates_nothing(kafka_bootstrap, topics, start_service):
    seed = random.randrange(1_000_000)
    print(f"seed {seed}")
    rng = random.Random(seed)
    feed = canonical_feed(total=20_000, alerting=500, seed=seed)
    produce(kafka_bootstrap, topics["input"], feed.messages, feed.keys)
    reader = AlertReader(kafka_bootstrap, topics["alerts"])
    kills = 0
    try:
        for target in sorted(rng.sample(range(25, 475), 5)):
            service = start_service(TDM_INSTANCE_ID="crash", **SERVICE)
            reader.wait_for(target, timeout_s=90, while_alive=[service])
            time.sleep(rng.uniform(0, 0.2))
            service.kill()
            kills += 1
            print(f"kill -9 number {kills} at {len(reader.alerts)} visible alerts")
        final = start_service(TDM_INSTANCE_ID="crash", **SERVICE)
        reader.wait_for(len(feed.expected), timeout_s=180, while_alive=[final])
        assert final.stop() == 0
        numbers = assert_exact(reader, feed)
    finally:
        reader.close()
    print(
        f"kills {kills}; restarts {kills}; {numbers}; aborted records left by the killed instances: "
        f"{aborted_records(kafka_bootstrap, topics['alerts'], numbers['found'])}"
    )
    assert kills == 5


def test_broker_restart_mid_stream(kafka_broker, topics, start_service):
    bootstrap = kafka_broker.bootstrap
    feed = canonical_feed(total=10_000, alerting=250, seed=4242)
    half = len(feed.messages) // 2
    produce(bootstrap, topics["input"], feed.messages[:half], feed.keys[:half])
    reader = AlertReader(bootstrap, topics["alerts"])
    # A short stall timeout: kafka-python 3 has been seen to stop fetching for minutes after the
    # re-join a broker restart forces. The watchdog then exits 1 and this test restarts the
    # instance, as an orchestrator would; exactly-once delivery must still hold.
    settings = {"TDM_INSTANCE_ID": "restart", "TDM_RETRY_BACKOFF_MAX_S": "2", "TDM_STALL_TIMEOUT_S": "30"}
    service = start_service(**settings, **SERVICE)
    try:
        reader.wait_for(20, timeout_s=90, while_alive=[service])
        reader.consumer.close()  # our reader must not hold the broker up
        kafka_broker.stop()
        time.sleep(3)  # the service keeps running and retrying while the broker is gone
        assert service.alive(), service.log_text()[-3000:]
        kafka_broker.start()
        reader = AlertReader(bootstrap, topics["alerts"])
        produce(bootstrap, topics["input"], feed.messages[half:], feed.keys[half:])
        reader.wait_for(len(feed.expected), timeout_s=240, while_alive=[service])
        assert service.stop() == 0
        assert_exact(reader, feed)
    finally:
        reader.close()


@pytest.mark.slow
def test_a_broker_outage_longer_than_every_timeout_is_ridden_out(kafka_broker, topics, start_service):
    """Down for longer than the send and transaction timeouts (issue 27: kafka-python's producer
    close raised on the abort path and the service exited 1 with a traceback)."""
    bootstrap = kafka_broker.bootstrap
    feed = canonical_feed(total=8_000, alerting=200, seed=2727)
    produce(bootstrap, topics["input"], feed.messages, feed.keys)
    reader = AlertReader(bootstrap, topics["alerts"])
    settings = {"TDM_INSTANCE_ID": "outage", "TDM_RETRY_BACKOFF_MAX_S": "2", "TDM_STALL_TIMEOUT_S": "120"}
    service = start_service(**settings, **SERVICE)
    try:
        reader.wait_for(20, timeout_s=90, while_alive=[service])
        reader.consumer.close()
        kafka_broker.stop()  # mid-stream: a batch is open with sends in flight
        time.sleep(35)  # past the send timeout (30 s) and the transaction timeout (10 s)
        assert service.alive(), service.log_text()[-3000:]
        kafka_broker.start()
        reader = AlertReader(bootstrap, topics["alerts"])
        reader.wait_for(len(feed.expected), timeout_s=240, while_alive=[service])
        assert service.stop() == 0
        assert_exact(reader, feed)
    finally:
        reader.close()
    # kafka-python logs its I/O thread's own errors with a traceback and recovers; what must not
    # appear is one of ours (the close that raised on the abort path ended the service).
    ours = [line for line in service.log_text().splitlines() if '"logger": "kafka.' not in line]
    assert not [line for line in ours if "Traceback" in line]


# KIP-848's consumer group protocol (the broker assigns) is offered by the confluent-kafka client.
GROUP_PROTOCOLS = ["classic", "consumer"] if KAFKA_CLIENT == "confluent-kafka" else ["classic"]


@pytest.mark.input_partitions(6)
@pytest.mark.parametrize("protocol", GROUP_PROTOCOLS)
def test_three_instances_then_two_share_the_work_exactly_once(
    kafka_bootstrap, topics, start_service, tmp_path, protocol
):
    feed = canonical_feed(total=12_000, alerting=300, seed=777)
    half = len(feed.messages) // 2
    reader = AlertReader(kafka_bootstrap, topics["alerts"])
    group = f"scale-{topics['input']}"
    # Instances join one after another, as a scale-out does. Three kafka-python 3.0.12
    # consumers joining in the same second sometimes never converged (revoked, UnknownMemberId)
    # within a minute; see the issue note.
    services = []
    for n in range(3):
        services.append(
            start_service(
                TDM_INSTANCE_ID=f"i{n}",
                TDM_GROUP_ID=group,
                TDM_STATE_DIR=f"{tmp_path}/i{n}",
                TDM_GROUP_PROTOCOL=protocol,
                **SERVICE,
            )
        )
        wait_for_log(services[-1], '"partitions assigned"', timeout_s=60)
    try:
        # 6 input partitions and 6 patient (repartition) partitions, two of each per instance.
        wait_until(lambda: gauges(services, "tdm_assigned_partitions") == [4, 4, 4], 90)
        wait_until(lambda: gauges(services, "tdm_ready") == [1, 1, 1], 30)  # members of a stable group
        produce(kafka_bootstrap, topics["input"], feed.messages[:half], feed.keys[:half])
        reader.wait_for(60, timeout_s=90, while_alive=services)

        leaving = services.pop(1)
        assert leaving.stop() == 0  # SIGTERM: finishes its batch, gives its partitions up
        wait_until(lambda: sum(gauges(services, "tdm_assigned_partitions")) == 12, 60)
        produce(kafka_bootstrap, topics["input"], feed.messages[half:], feed.keys[half:])
        reader.wait_for(len(feed.expected), timeout_s=180, while_alive=services)
        assert_exact(reader, feed)
        assert_group_consumed_everything(kafka_bootstrap, group, topics["input"], 6)
        for service in services:
            assert service.stop() == 0
    finally:
        reader.close()


def wait_until(condition, timeout_s: float, explain=lambda: "") -> None:
    """Until `condition()` holds; on a time-out the assertion carries `explain()`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except OSError:
            pass  # a service still starting its metrics server
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met in {timeout_s:.0f} s\n{explain()}")
        time.sleep(0.3)


def wait_for_log(service, text: str, timeout_s: float = 30) -> str:
    try:
        wait_until(lambda: text in service.log_text(), timeout_s)
    except AssertionError as err:
        raise AssertionError(f"{text} not logged within {timeout_s} s:\n{service.diagnosis()}") from err
    return service.log_text()


def assert_group_consumed_everything(bootstrap: str, group: str, topic: str, partitions: int) -> None:
    """Every partition's committed offset reached its end: no partition was left behind."""
    # A consumer that never subscribes does not join the group; it only reads its offsets.
    probe = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = probe.end_offsets(tps)
        deadline = time.monotonic() + 30
        while (committed := {tp: probe.committed(tp) for tp in tps}) != ends:
            assert time.monotonic() < deadline, f"committed {committed} != ends {ends}"
            time.sleep(0.5)
        assert all(ends[tp] > 0 for tp in tps)  # every partition had work, and all of it was done
    finally:
        probe.close()


def test_broker_unreachable_at_start_up_retries_not_ready_then_stops_cleanly(start_service):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    service = start_service(TDM_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}", TDM_RETRY_BACKOFF_MAX_S="1")
    log = wait_for_log(service, "brokers unreachable; retrying", timeout_s=30)
    metrics = metrics_port(log)
    assert urllib.request.urlopen(f"http://127.0.0.1:{metrics}/healthz", timeout=5).status == 200
    with pytest.raises(urllib.error.HTTPError) as not_ready:
        urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=5)
    assert not_ready.value.code == 503
    assert service.alive()
    began = time.monotonic()
    assert service.stop() == 0
    assert time.monotonic() - began < 15


def test_a_killed_instance_replaced_under_a_new_name_holds_readers_for_seconds_not_a_minute(
    kafka_bootstrap, topics, start_service
):
    """A Deployment's replacement pod has a new name, so its transactional id cannot fence the
    killed pod's open transaction: read_committed readers of every partition that transaction
    wrote wait until the broker aborts it at TDM_TRANSACTION_TIMEOUT_MS (10 s, checked every
    10 s by the broker), not kafka-python's default minute (measured: 66 s with 60000).

    Dead letters make the open transaction deterministic: they do not commit early as alerts
    do, so a batch holding one stays open for the commit interval (5 s here) and the kill lands
    inside it.
    """
    bad = [b'{not json "39803-2"']  # could be ours (names the level's code): dead-lettered
    old = start_service(TDM_INSTANCE_ID="old", TDM_COMMIT_INTERVAL_MS="5000", TDM_PATIENT_STATE="false")
    wait_for_log(old, '"partitions assigned"', timeout_s=60)
    produce(kafka_bootstrap, topics["input"], bad)
    time.sleep(2.0)  # polled within milliseconds; its transaction commits 5 s after opening
    old.kill()
    killed_at = time.monotonic()
    new = start_service(TDM_INSTANCE_ID="new", TDM_PATIENT_STATE="false", **SERVICE)
    produce(kafka_bootstrap, topics["input"], [b'{also not json "39803-2"'])
    # The dead-letter topic has one partition, which the killed transaction wrote.
    letters = read_topic(kafka_bootstrap, topics["dlq"], expected=2, timeout_s=90)
    waited = time.monotonic() - killed_at
    print(f"dead letters readable {waited:.1f} s after the kill")
    assert sorted(r.value for r in letters) == sorted([*bad, b'{also not json "39803-2"'])  # re-done once
    assert waited < 40, f"readers waited {waited:.0f} s for the killed instance's transaction"
    assert new.stop() == 0


def test_a_wedged_service_exits_for_its_orchestrator_and_the_restart_loses_nothing(
    kafka_broker, topics, start_service
):
    """Frozen mid-stream (the broker stops answering on open connections), the main loop stops
    turning; the watchdog exits 1 within the stall timeout instead of hanging on as "alive", and
    the restarted instance finishes the stream exactly once."""
    bootstrap = kafka_broker.bootstrap
    feed = canonical_feed(total=4_000, alerting=120, seed=77)
    produce(bootstrap, topics["input"], feed.messages, feed.keys)
    settings = {"TDM_INSTANCE_ID": "wedged", "TDM_STALL_TIMEOUT_S": "15", **SERVICE}
    reader = AlertReader(bootstrap, topics["alerts"])
    try:
        service = start_service(**settings)
        reader.wait_for(10, timeout_s=90, while_alive=[service])
        service.unsupervised()  # from here this test is the orchestrator: it watches the exit
        reader.consumer.close()  # our own reader must not sit in the broker while it is frozen
        kafka_broker.freeze(True)
        try:
            began = time.monotonic()
            code = service.proc.wait(timeout=90)
            exited_after = time.monotonic() - began
        finally:
            kafka_broker.freeze(False)
        assert code == 1 and '"stalled; exiting' in service.log_text(), service.log_text()[-3000:]
        print(f"exited {exited_after:.0f} s after the freeze (stall timeout 15 s)")
        reader = AlertReader(bootstrap, topics["alerts"])
        restarted = start_service(**settings)
        reader.wait_for(len(feed.expected), timeout_s=180, while_alive=[restarted])
        assert restarted.stop() == 0
        assert_exact(reader, feed)
    finally:
        reader.close()


def ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200
    except urllib.error.HTTPError as err:
        assert err.code == 503
        return False


def readiness(services) -> str:
    """Each instance's /readyz answer and its log's last lines, for a time-out."""
    lines = []
    for n, service in enumerate(services):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{live_port(service)}/readyz", timeout=5) as r:
                answer = f"{r.status} {r.read().decode()}"
        except urllib.error.HTTPError as err:
            answer = f"{err.code} {err.read().decode()}"
        except OSError as err:
            answer = repr(err)
        lines += [f"instance {n} (restarts {service.restarts}): /readyz {answer}", service.diagnosis()]
    return "\n".join(lines)


# Ready within: a join, or a hung join (kafka-python K3) that the watchdog ends once out of the
# group for MEMBERSHIP_TIMEOUT_S, and the restarted instance's join.
JOINED_S = MEMBERSHIP_TIMEOUT_S + 60


@pytest.mark.input_partitions(1)
def test_an_idle_extra_instance_is_ready_and_a_broker_outage_is_not(kafka_broker, topics, start_service):
    """Readiness means a member of the group: an instance left without partitions (more instances
    than partitions) is healthy and must not page as not ready; one cut off from the brokers is not."""
    # The brokers go away for up to 45 s: the default stall timeout, not the tests' short one.
    settings = {"TDM_PATIENT_STATE": "false", "TDM_STALL_TIMEOUT_S": "300", **SERVICE}
    services = [start_service(TDM_INSTANCE_ID=f"i{n}", **settings) for n in (1, 2)]
    for service in services:
        wait_for_log(service, '"metrics_port"')

    def all_ready() -> bool:
        return all(ready(live_port(s)) for s in services)

    wait_until(all_ready, JOINED_S, explain=lambda: readiness(services))
    assert sorted(gauges(services, "tdm_assigned_partitions")) == [0.0, 1.0]
    kafka_broker.stop()
    try:
        wait_until(lambda: not any(ready(live_port(s)) for s in services), 45, lambda: readiness(services))
        assert all(s.alive() for s in services)  # not ready is not dead: they wait for the brokers
    finally:
        kafka_broker.start()
    wait_until(all_ready, JOINED_S, explain=lambda: readiness(services))
    assert all(s.stop() == 0 for s in services)


def test_an_instance_fenced_by_its_successor_exits_non_zero(kafka_bootstrap, topics, start_service):
    feed = canonical_feed(total=2_000, alerting=60, seed=99)
    reader = AlertReader(kafka_bootstrap, topics["alerts"])
    try:
        first = start_service(TDM_INSTANCE_ID="same", **SERVICE)
        produce(kafka_bootstrap, topics["input"], feed.messages[:1000], feed.keys[:1000])
        reader.wait_for(1, timeout_s=60, while_alive=[first])
        second = start_service(
            TDM_INSTANCE_ID="same", **SERVICE
        )  # e.g. a restarted pod while the old one hangs
        wait_for_log(second, "transactions ready")
        produce(kafka_bootstrap, topics["input"], feed.messages[1000:], feed.keys[1000:])
        assert first.proc.wait(timeout=60) == 1
        assert "another instance" in first.log_text()  # fenced at commit, or at a send
        reader.wait_for(len(feed.expected), timeout_s=120, while_alive=[second])
        assert second.stop() == 0
        assert_exact(reader, feed)
    finally:
        reader.close()
