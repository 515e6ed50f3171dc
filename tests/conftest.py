"""Shared fixtures: a real Kafka broker for the session, unique topics, and the service itself."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
LOCAL_BROKER = REPO / "ops" / "kafka" / "local-broker"
# The client every service under test runs on (TDM_KAFKA_CLIENT); `make test` runs the
# integration suite once per client.
KAFKA_CLIENT = os.environ.get("TEST_KAFKA_CLIENT", "kafka-python")


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


class Broker:
    """The broker under test; `restart` works only for the local jar broker this session started."""

    def __init__(self, bootstrap: str, local_dir: Path | None = None) -> None:
        self.bootstrap = bootstrap
        self.local_dir = local_dir

    def _local(self, command: str) -> None:
        if self.local_dir is None:
            pytest.skip(
                "restarting the broker needs the local jar broker (no KAFKA_BOOTSTRAP_SERVERS, no Docker)"
            )
        subprocess.run(
            [sys.executable, str(LOCAL_BROKER), command, "--dir", str(self.local_dir)],
            check=True,
            capture_output=True,
            timeout=300,
        )

    def stop(self) -> None:
        self._local("stop")

    def start(self) -> None:
        self._local("start")

    def freeze(self, frozen: bool) -> None:
        """SIGSTOP / SIGCONT the broker: connections stay open and nothing answers, the way a
        wedged client or a hung network looks from the service's side."""
        if self.local_dir is None:
            pytest.skip("freezing the broker needs the local jar broker (no KAFKA_BOOTSTRAP_SERVERS)")
        pid = int((self.local_dir / "broker.pid").read_text().strip())
        os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A real broker: $KAFKA_BOOTSTRAP_SERVERS, else testcontainers, else the local jar broker."""
    if existing := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield Broker(existing)
        return
    if _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:8.1.0").with_kraft() as container:
            yield Broker(container.get_bootstrap_server())
        return
    failures = []
    for _attempt in range(2):  # a second try with fresh ports, in case a port was taken meanwhile
        broker_dir = tmp_path_factory.mktemp("kafka-broker")
        started = subprocess.run(
            [sys.executable, str(LOCAL_BROKER), "start", "--dir", str(broker_dir)],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if started.returncode == 0:
            break
        failures.append(started.stderr)
        subprocess.run([sys.executable, str(LOCAL_BROKER), "stop", "--dir", str(broker_dir)], check=False)
    else:
        pytest.fail("local broker did not start:\n" + "\n---\n".join(failures), pytrace=False)
    if failures:
        print(f"local broker started on the second try; the first said:\n{failures[0]}", file=sys.stderr)
    try:
        yield Broker(started.stdout.strip(), broker_dir)
    finally:
        subprocess.run([sys.executable, str(LOCAL_BROKER), "stop", "--dir", str(broker_dir)], check=False)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: Broker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def topics(kafka_bootstrap: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Fresh input, alert and dead-letter topics named after the test, so tests never share data."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    stem = f"t-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}".replace("[", "-").replace("]", "")
    names = {"input": f"{stem}.in", "alerts": f"{stem}.alerts", "dlq": f"{stem}.dlq"}
    marker = request.node.get_closest_marker("input_partitions")
    partitions = marker.args[0] if marker else 3
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics(
            [
                NewTopic(names["input"], partitions, 1),
                NewTopic(names["alerts"], 3, 1),
                NewTopic(names["dlq"], 1, 1),
            ]
        )
    finally:
        admin.close()
    return names


class RunningService:
    """`tdm-alerts run` as a real subprocess, configured through TDM_* variables.

    Supervised (the default), it is restarted when its watchdog ends it (exit 1, "stalled;
    exiting"), as Kubernetes would: kafka-python 3 can hang for good in a join (an empty first
    assignment when a new topic's metadata is late), and every test should survive that the way
    production does. A test that watches the watchdog itself takes over (`unsupervised`).
    """

    def __init__(self, env: dict[str, str], log_path: Path, command: str = "run") -> None:
        self.env = env
        self.command = command  # `run`, or `notify`
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.restarts = 0
        self._lock = threading.Lock()
        self._supervising = True
        self.proc = self._start()
        threading.Thread(target=self._supervise, name=f"supervise-{log_path.name}", daemon=True).start()

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "consumer", self.command],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def _supervise(self) -> None:
        while self._supervising:
            time.sleep(0.5)
            self.revive()

    def revive(self) -> bool:
        """Start it again if its watchdog ended it; True if it is running (again). Never once the
        test has taken over, stopped or killed it."""
        with self._lock:
            if self.alive():
                return True
            if not self._supervising:
                return False
            if self.proc.wait() != 1 or '"stalled; exiting' not in self.log_text()[-2000:]:
                return False
            self.restarts += 1
            print(f"restarted a stalled instance ({self.restarts})")
            self.proc = self._start()
            return True

    def unsupervised(self) -> None:
        """From now on the test is the orchestrator: an exit stays an exit."""
        with self._lock:
            self._supervising = False

    def kill(self) -> None:
        """kill -9: no shutdown, no last commit (and no restart)."""
        with self._lock:
            self._supervising = False
            self.proc.kill()
            self.proc.wait(timeout=30)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and its exit code; one that does not exit in `timeout` is killed, and the
        failure shows what its log says it was doing."""
        with self._lock:
            self._supervising = False
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
                raise AssertionError(
                    f"did not stop within {timeout:.0f} s of SIGTERM:\n{self.diagnosis()}"
                ) from None
            if not self._log.closed:
                self._log.close()
        return code

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def diagnosis(self) -> str:
        """For a time-out: the log's last events (alerts left out) and where open transactions
        hold its topics."""
        env, group = self.env, self.env["TDM_GROUP_ID"]
        names = [env["TDM_ALERT_TOPIC"], env["TDM_DLQ_TOPIC"], *env["TDM_INPUT_TOPICS"].split(",")]
        names += [f"{group}.patient-results", f"{group}.patient-state-changelog"]
        events = [line for line in self.log_text().splitlines() if '"alert published"' not in line]
        return "\n".join(events)[-6000:] + "\n" + open_transactions(env["TDM_BOOTSTRAP_SERVERS"], names)


def open_transactions(bootstrap: str, topics: list[str]) -> str:
    """Partitions whose last stable offset trails the high watermark: an open transaction holds
    read_committed readers (ours and the service's) there until it ends."""
    from kafka import KafkaConsumer, TopicPartition

    lines = []
    readers: list[KafkaConsumer] = []
    try:
        for isolation in ("read_uncommitted", "read_committed"):
            readers.append(
                KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, isolation_level=isolation)
            )
        raw, committed = readers
        known = raw.topics()
        for topic in (t for t in topics if t in known):
            tps = [TopicPartition(topic, p) for p in sorted(raw.partitions_for_topic(topic) or [])]
            high, stable = raw.end_offsets(tps), committed.end_offsets(tps)
            lines += [
                f"{tp.topic}/{tp.partition}: high watermark {high[tp]}, last stable {stable[tp]}"
                for tp in tps
                if high[tp] != stable[tp]
            ]
    except Exception as err:  # a diagnosis must not hide the failure it explains
        lines.append(f"offsets not read: {err!r}")
    finally:
        for reader in readers:
            reader.close()
    return "open transactions: " + ("; ".join(lines) if lines else "none")


@pytest.fixture
def service_env(kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TDM_")}
    env.update(
        TDM_KAFKA_CLIENT=KAFKA_CLIENT,
        TDM_BOOTSTRAP_SERVERS=kafka_bootstrap,
        TDM_INPUT_TOPICS=topics["input"],
        TDM_ALERT_TOPIC=topics["alerts"],
        TDM_DLQ_TOPIC=topics["dlq"],
        TDM_GROUP_ID=f"g-{uuid.uuid4().hex[:8]}",
        TDM_METRICS_PORT="0",
        TDM_LOG_FORMAT="json",
        TDM_STATE_DIR=str(tmp_path / "state"),  # one instance's disk; tests with several give each its own
        # A stalled instance exits soon and the tests start it again (`RunningService.revive`).
        TDM_STALL_TIMEOUT_S="30",
    )
    return env


@pytest.fixture
def start_service(service_env: dict[str, str], tmp_path: Path) -> Iterator[object]:
    started: list[RunningService] = []

    def start(**overrides: str) -> RunningService:
        service = RunningService({**service_env, **overrides}, tmp_path / f"service-{len(started)}.log")
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[object]:
    """Read a topic from the start (read_committed) until `expected` records or the timeout.

    After reaching `expected` it keeps reading briefly, so an unexpected extra record is seen.
    """
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        group_id=None,
    )
    records: list[object] = []
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if len(records) >= expected and settle_until is None:
                settle_until = time.monotonic() + 1.5
            if settle_until is not None and time.monotonic() > settle_until:
                break
    finally:
        consumer.close()
    return records


def produce(
    bootstrap: str,
    topic: str,
    values: list[bytes | None],
    keys: list[bytes] | None = None,
    *,
    timestamps_ms: list[int] | None = None,
) -> None:
    """Produce `values` (acks=all) with keys k0, k1, ... unless `keys` are given; with
    `timestamps_ms`, each record's own (the same input twice is then the same input)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4 << 20)
    for i, value in enumerate(values):
        stamp = timestamps_ms[i] if timestamps_ms else None
        producer.send(topic, key=keys[i] if keys else f"k{i}".encode(), value=value, timestamp_ms=stamp)
    producer.flush()
    producer.close()


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`tdm-alerts ARGS` (as `python -m consumer`) with `env`; it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", "consumer", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def metrics_port(log_text: str) -> int:
    """The metrics port the service logged at its latest start (it binds port 0 in tests)."""
    found = re.findall(r'"metrics_port": (\d+)', log_text)
    assert found, log_text
    return int(found[-1])


def live_port(service: RunningService) -> int:
    """The metrics port of `service` as it runs now. One its watchdog ended (kafka-python 3's
    hung join) is started again first, as an orchestrator would, and binds a new port."""
    assert service.alive() or service.revive(), service.log_text()[-3000:]
    return metrics_port(service.log_text())


def gauges(services: list[RunningService], name: str) -> list[float]:
    """`name` from each instance (OSError while one is still starting)."""
    return [metric_total(scrape(live_port(service)), name) for service in services]


def scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for found, value in re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        if all(f'{k}="{v}"' in found for k, v in labels.items()):
            total += float(value)
    return total
