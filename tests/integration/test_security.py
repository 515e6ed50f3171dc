"""The service against a secured broker: SASL_SSL with SCRAM-SHA-512, mTLS, and ACLs only.

The broker (`ops/kafka/local-broker start --secure`) denies everything no ACL grants. These
tests grant exactly the ACLs the README lists per delivery mode and check that the service
works end to end; then take one thing away at a time and check that it stops (exit 1) within
seconds, saying what is wrong and which setting or ACL fixes it. An unreachable cluster, by
contrast, is retried until stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DATA, KAFKA_CLIENT, LOCAL_BROKER, REPO, RunningService, read_topic

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("java") is None or shutil.which("openssl") is None, reason="needs java, openssl"
    ),
]

EXIT_WITHIN_S = 40.0  # generous for a loaded CI machine; the note reports what was measured


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A secured broker of our own (whatever broker the rest of the suite uses)."""
    broker_dir = tmp_path_factory.mktemp("secure-broker")
    started = subprocess.run(
        [sys.executable, str(LOCAL_BROKER), "start", "--secure", "--dir", str(broker_dir)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if started.returncode != 0:
        pytest.fail(f"secured broker did not start:\n{started.stderr}", pytrace=False)
    try:
        yield json.loads((broker_dir / "secure.json").read_text())
    finally:
        subprocess.run([sys.executable, str(LOCAL_BROKER), "stop", "--dir", str(broker_dir)], check=False)


class Grants:
    """One test's topics, group and ACLs on the secured broker, made through its admin listener."""

    def __init__(self, secure: dict[str, object], principal: str = "User:tdm-alerts") -> None:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        stem = f"sec-{uuid.uuid4().hex[:8]}"
        self.input, self.alerts, self.dlq, self.group = (
            f"{stem}.in",
            f"{stem}.alerts",
            f"{stem}.dlq",
            f"{stem}-g",
        )
        self.principal = principal
        self.bootstrap = str(secure["admin_bootstrap"])  # PLAINTEXT, super user: the test's own access
        self.admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        self.admin.create_topics([NewTopic(t, 2, 1) for t in (self.input, self.alerts, self.dlq)])

    def grant(self, *, skip: tuple[str, ...] = (), transactional: bool = True) -> None:
        """The README's least-privilege ACLs, less those named in `skip`."""
        from kafka.admin import ACL, ACLOperation, ACLPermissionType, ResourcePattern, ResourceType
        from kafka.admin import ACLResourcePatternType as Pattern

        wanted = {
            "read-input": (ACLOperation.READ, ResourceType.TOPIC, self.input, Pattern.LITERAL),
            "read-group": (ACLOperation.READ, ResourceType.GROUP, self.group, Pattern.LITERAL),
            "write-alerts": (ACLOperation.WRITE, ResourceType.TOPIC, self.alerts, Pattern.LITERAL),
            "write-dlq": (ACLOperation.WRITE, ResourceType.TOPIC, self.dlq, Pattern.LITERAL),
            "describe-configs-dlq": (
                ACLOperation.DESCRIBE_CONFIGS,
                ResourceType.TOPIC,
                self.dlq,
                Pattern.LITERAL,
            ),
        }
        # Patient state: the internal topics, named after the group, created by the service.
        for op in (ACLOperation.CREATE, ACLOperation.READ, ACLOperation.WRITE):
            wanted[f"state-{op.name.lower()}"] = (op, ResourceType.TOPIC, f"{self.group}.", Pattern.PREFIXED)
        if transactional:
            wanted["write-txn"] = (
                ACLOperation.WRITE,
                ResourceType.TRANSACTIONAL_ID,
                f"{self.group}-",
                Pattern.PREFIXED,
            )
        acls = [
            ACL(self.principal, "*", op, ACLPermissionType.ALLOW, ResourcePattern(kind, name, pattern))
            for key, (op, kind, name, pattern) in wanted.items()
            if key not in skip
        ]
        result = self.admin.create_acls(acls)
        assert not result["failed"], result

    def produce(self, values: list[bytes]) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        for i, value in enumerate(values):
            producer.send(self.input, key=f"k{i}".encode(), value=value)
        producer.flush()
        producer.close()


@pytest.fixture
def grants(secure: dict[str, object]) -> Iterator[Grants]:
    made = Grants(secure)
    yield made
    made.admin.close()


def _env(
    secure: dict[str, object],
    grants: Grants,
    tmp_path: Path,
    user: str = "tdm-alerts",
    **overrides: str | None,
) -> dict[str, str]:
    """The service's settings for SASL_SSL as `user`; an override of None unsets one."""
    password_file = tmp_path / f"sasl-password-{user}"
    password_file.write_text(str(secure["users"][user]) + "\n")  # type: ignore[index]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TDM_")}
    settings = dict(
        TDM_KAFKA_CLIENT=KAFKA_CLIENT,
        TDM_BOOTSTRAP_SERVERS=str(secure["bootstrap"]),
        TDM_SECURITY_PROTOCOL="SASL_SSL",
        TDM_SASL_MECHANISM="SCRAM-SHA-512",
        TDM_SASL_USERNAME=user,
        TDM_SASL_PASSWORD_FILE=str(password_file),
        TDM_SSL_CAFILE=str(secure["ca"]),
        TDM_INPUT_TOPICS=grants.input,
        TDM_ALERT_TOPIC=grants.alerts,
        TDM_DLQ_TOPIC=grants.dlq,
        TDM_GROUP_ID=grants.group,
        TDM_INSTANCE_ID="i1",
        TDM_METRICS_PORT="0",
        TDM_LOG_FORMAT="json",
    )
    settings.update(overrides)
    return {**env, **{k: v for k, v in settings.items() if v is not None}}


def _mtls(
    secure: dict[str, object], tmp_path: Path, cert: str = "client_cert", key: str = "client_key"
) -> dict[str, str]:
    key_password = tmp_path / "key-password"
    key_password.write_text(str(secure["client_key_password"]))
    encrypted = key == "client_key"
    return {
        "TDM_BOOTSTRAP_SERVERS": str(secure["mtls_bootstrap"]),
        "TDM_SECURITY_PROTOCOL": "SSL",
        "TDM_SASL_MECHANISM": None,
        "TDM_SASL_USERNAME": None,
        "TDM_SASL_PASSWORD_FILE": None,
        "TDM_SSL_CERTFILE": str(secure[cert]),
        "TDM_SSL_KEYFILE": str(secure["client_key_encrypted" if encrypted else key]),
        **({"TDM_SSL_PASSWORD_FILE": str(key_password)} if encrypted else {}),
    }


def _expected_alerts(feed: Path) -> int:
    """The oracle: how many alerts `interpret` (no Kafka at all) says this feed calls for."""
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "interpret", str(feed)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    return sum(1 for line in done.stdout.splitlines() if json.loads(line)["alert"])


def _run_end_to_end(env: dict[str, str], grants: Grants, tmp_path: Path) -> str:
    feed = DATA / "sample-feed.jsonl"
    expected = _expected_alerts(feed)
    assert expected > 0
    grants.produce([line.encode() for line in feed.read_text().splitlines() if line.strip()])
    service = RunningService(env, tmp_path / "service.log")
    try:
        alerts = read_topic(grants.bootstrap, grants.alerts, expected, timeout_s=60)
        assert len(alerts) == expected, service.log_text()[-3000:]
    finally:
        code = service.stop()
    assert code == 0, service.log_text()[-3000:]
    return service.log_text()


MAX_MESSAGE_BYTES_UNREAD = "max.message.bytes could not be read"


def test_exactly_once_works_with_exactly_the_documented_acls(secure, grants, tmp_path):
    grants.grant()
    log = _run_end_to_end(_env(secure, grants, tmp_path), grants, tmp_path)
    assert MAX_MESSAGE_BYTES_UNREAD not in log


def test_at_least_once_works_without_a_transactional_id_acl(secure, grants, tmp_path):
    """Also without DESCRIBE_CONFIGS on the dead-letter topic: Kafka's default limit is assumed."""
    grants.grant(transactional=False, skip=("describe-configs-dlq",))
    env = _env(secure, grants, tmp_path, TDM_DELIVERY="at_least_once")
    log = _run_end_to_end(env, grants, tmp_path)
    assert MAX_MESSAGE_BYTES_UNREAD in log


def test_mtls_with_an_encrypted_key_maps_the_certificate_to_the_principal(secure, grants, tmp_path):
    grants.grant()
    env = _env(secure, grants, tmp_path, **_mtls(secure, tmp_path))
    _run_end_to_end(env, grants, tmp_path)


def _exits(env: dict[str, str], tmp_path: Path) -> tuple[int, float, str]:
    began = time.monotonic()
    service = RunningService(env, tmp_path / "service.log")
    try:
        code = service.proc.wait(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        service.stop()
        pytest.fail(f"still running after {EXIT_WITHIN_S} s:\n{service.log_text()[-3000:]}")
    took = time.monotonic() - began
    service.stop()
    print(f"\n[time-to-exit] {took:.1f} s", file=sys.stderr)
    return code, took, service.log_text()


FAILURES = {
    "wrong-password": ({"TDM_SASL_PASSWORD": "not-the-password"}, (), "authentication", "TDM_SASL_PASSWORD"),
    "untrusted-ca": ({"TDM_SSL_CAFILE": "rogue_ca"}, (), "tls_trust", "TDM_SSL_CAFILE"),
    "wrong-host-name": ({"TDM_BOOTSTRAP_SERVERS": "wrong_name_bootstrap"}, (), "tls_hostname", "certificate"),
    "rogue-client-cert": ("mtls-rogue", (), "tls_client_certificate", "TDM_SSL_CERTFILE"),
    "no-read-on-input": ({}, ("read-input",), "not authorised to use topic", "TDM_INPUT_TOPICS"),
    "no-write-on-alerts": ({}, ("write-alerts",), "not authorised to use topic", "TDM_ALERT_TOPIC"),
    "no-read-on-group": ({}, ("read-group",), "not authorised to use consumer group", "TDM_GROUP_ID"),
    "no-transactional-id": ({}, ("write-txn",), "not authorised to use transactional id", "TransactionalId"),
    "no-state-topic-acls": (
        {},
        ("state-create", "state-read", "state-write"),
        "internal topics are missing",
        "patient-state-changelog (6 partitions, cleanup.policy=compact)",
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_each_security_failure_stops_the_service_with_its_cause(secure, grants, tmp_path, case):
    overrides, skip, cause, remedy = FAILURES[case]
    grants.grant(skip=skip)
    if overrides == "mtls-rogue":
        env = _env(
            secure, grants, tmp_path, **_mtls(secure, tmp_path, "rogue_client_cert", "rogue_client_key")
        )
    else:
        resolved = {k: str(secure.get(v, v)) for k, v in overrides.items()}  # type: ignore[union-attr]
        env = _env(secure, grants, tmp_path, **resolved)
    code, took, log = _exits(env, tmp_path)
    assert code == 1, log[-3000:]
    fatal = [json.loads(line) for line in log.splitlines() if '"event": "fatal"' in line]
    assert fatal, log[-3000:]
    assert cause in fatal[-1]["error"] and remedy in fatal[-1]["error"], fatal[-1]
    assert "brokers unreachable" not in log
    assert str(secure["users"]["tdm-alerts"]) not in log  # type: ignore[index]
    assert took < EXIT_WITHIN_S


def test_an_unreachable_cluster_is_retried_until_stopped(secure, grants, tmp_path):
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    service = RunningService(_env(secure, grants, tmp_path, TDM_BOOTSTRAP_SERVERS=closed), tmp_path / "s.log")
    time.sleep(12)  # two bootstrap attempts, longer than a fatal failure takes to exit
    assert service.alive(), service.log_text()[-2000:]
    assert service.stop() == 0
    assert "brokers unreachable; retrying" in service.log_text()


def _operator(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_operator_commands_name_a_missing_permission_and_work_with_the_documented_operator_acls(
    secure, grants, tmp_path
):
    """Issue 28: under the service's principal (no READ on the dead-letter topic) `dlq list`
    printed a 46-line traceback after kafka-python's own log lines."""
    from kafka import KafkaProducer
    from kafka.admin import ACL, ACLOperation, ACLPermissionType, ResourcePattern, ResourceType
    from kafka.admin import ACLResourcePatternType as Pattern

    grants.grant()
    producer = KafkaProducer(bootstrap_servers=grants.bootstrap, acks="all")
    dead_letter = [
        ("tdm.dlq.reason", b"invalid"),
        ("tdm.dlq.stage", b"decode"),
        ("tdm.dlq.source.topic", grants.input.encode()),
    ]
    producer.send(grants.dlq, b"{}", key=b"k", headers=dead_letter)
    producer.flush()
    producer.close()

    as_service = _env(secure, grants, tmp_path)
    for command in (["dlq", "list"], ["dlq", "show", "0:0"], ["dlq", "replay", "--dry-run"]):
        done = _operator(as_service, *command)
        assert done.returncode == 1, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr  # one line, no library log lines before it
        assert done.stderr.startswith(f"tdm-alerts: not authorised to READ topic {grants.dlq} "), done.stderr
        assert "README 'Operator access'" in done.stderr

    operator = "User:tdm-operator"  # the README's operator ACLs
    wanted = [
        (ACLOperation.READ, ResourceType.TOPIC, grants.dlq),
        (ACLOperation.WRITE, ResourceType.TOPIC, grants.input),
        (ACLOperation.DESCRIBE, ResourceType.GROUP, grants.group),
    ]
    made = grants.admin.create_acls(
        [
            ACL(operator, "*", op, ACLPermissionType.ALLOW, ResourcePattern(kind, name, Pattern.LITERAL))
            for op, kind, name in wanted
        ]
    )
    assert not made["failed"], made
    as_operator = _env(secure, grants, tmp_path, user="tdm-operator")
    for command in (["dlq", "list"], ["dlq", "show", "0:0"], ["dlq", "replay"], ["status"]):
        done = _operator(as_operator, *command)
        assert done.returncode == 0, (command, done.stderr)
    replayed = read_topic(grants.bootstrap, grants.input, expected=1, timeout_s=30)
    assert [r.value for r in replayed] == [b"{}"]


def test_the_notifier_names_each_acl_it_lacks_at_start(secure, grants, tmp_path):
    """`notify` as the lab-result service's principal: it may write alerts but not read them, and
    has no rights on the notifier's own topics. One fatal line names each missing grant."""
    grants.grant()
    env = _env(
        secure,
        grants,
        tmp_path,
        TDM_NOTIFY_ALERTMANAGER_URL="http://127.0.0.1:9",  # never reached: it stops first
        TDM_NOTIFY_DLQ_TOPIC=f"{grants.alerts}.undelivered",
        TDM_NOTIFY_INCIDENTS_TOPIC=f"{grants.alerts}.incidents",
    )
    began = time.monotonic()
    notifier = RunningService(env, tmp_path / "notify.log", command="notify")
    try:
        code = notifier.proc.wait(timeout=EXIT_WITHIN_S)
    finally:
        notifier.stop()
    log = notifier.log_text()
    assert code == 1, log[-3000:]
    [fatal] = [json.loads(line) for line in log.splitlines() if '"event": "fatal"' in line]
    error = fatal["error"]
    assert f"not authorised to READ topic {grants.alerts} (TDM_ALERT_TOPIC)" in error, error
    assert "(TDM_NOTIFY_DLQ_TOPIC)" in error and "(TDM_NOTIFY_INCIDENTS_TOPIC)" in error, error
    assert error.count("TDM_NOTIFY_INCIDENTS_TOPIC") == 1  # read and written: said once
    assert time.monotonic() - began < EXIT_WITHIN_S
