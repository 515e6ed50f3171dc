"""Secrets from files, configuration errors that echo nothing, failure causes, safe correlation ids."""

from __future__ import annotations

import logging
import ssl

import pytest
from kafka import errors as kafka_errors

from consumer.cli import main
from consumer.clients.kafka_python_failures import FailureWatch, classify
from consumer.clients.seam import Failure, Record
from consumer.connecting import check_tls_material
from consumer.fatal import FatalError
from consumer.outputs import correlation_id
from consumer.settings import Settings

pytestmark = pytest.mark.usefixtures("clean_env")


def test_sasl_password_is_read_from_a_file(monkeypatch, tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret-from-file\n")
    monkeypatch.setenv("TDM_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("TDM_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("TDM_SASL_USERNAME", "tdm-alerts")
    monkeypatch.setenv("TDM_SASL_PASSWORD_FILE", str(secret))
    options = Settings().kafka_security()
    assert options["sasl_plain_password"] == "s3cret-from-file"  # the trailing newline is not part of it


def test_an_unreadable_secret_file_names_the_variable_not_the_content(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TDM_SSL_PASSWORD_FILE", str(tmp_path / "missing"))
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "TDM_SSL_PASSWORD_FILE" in err and "No such file" in err


def test_a_configuration_error_never_echoes_any_value(monkeypatch, capsys):
    monkeypatch.setenv("TDM_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("TDM_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("TDM_SASL_USERNAME", "tdm-alerts")
    monkeypatch.setenv("TDM_SASL_PASSWORD", "hunter2-very-secret")
    monkeypatch.setenv("TDM_COMMIT_INTERVAL_MS", "ten-hunter2")
    monkeypatch.setenv("TDM_TOPIC_FORMATS", "Jane Doe")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "TDM_COMMIT_INTERVAL_MS" in err and "TDM_TOPIC_FORMATS" in err
    assert "hunter2" not in err and "Jane" not in err


def test_sasl_protocol_without_a_mechanism_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TDM_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValueError, match="needs TDM_SASL_MECHANISM"):
        Settings()


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (kafka_errors.SaslAuthenticationFailedError("invalid credentials"), Failure.AUTHENTICATION),
        (kafka_errors.UnsupportedSaslMechanismError("no SCRAM"), Failure.SASL_MECHANISM),
        (
            kafka_errors.KafkaConnectionError(
                "Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                "unable to get local issuer certificate"
            ),
            Failure.TLS_TRUST,
        ),
        (
            kafka_errors.KafkaConnectionError(
                "Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                "IP address mismatch, certificate is not valid for '127.0.0.1'"
            ),
            Failure.TLS_HOSTNAME,
        ),
        (
            kafka_errors.KafkaConnectionError(
                ssl.SSLError(1, "[SSL: SSLV3_ALERT_BAD_CERTIFICATE] bad certificate")
            ),
            Failure.TLS_CLIENT_CERTIFICATE,
        ),
        (kafka_errors.KafkaConnectionError("socket disconnected"), None),
        (ConnectionRefusedError(111, "Connection refused"), None),
    ],
)
def test_connection_failures_are_classified_by_cause(error, cause):
    assert classify(error) is cause


def test_the_watch_counts_one_failure_per_exception_however_often_it_is_logged():
    watch = FailureWatch()
    log = logging.getLogger("kafka.test-watch")
    log.addHandler(watch)
    try:
        first, second = (kafka_errors.SaslAuthenticationFailedError("no") for _ in range(2))
        for error in (first, first, first, second):  # kafka-python logs one failure three times
            log.error("Connection lost: %s", error)
        log.error("Connection lost: %s", kafka_errors.KafkaConnectionError("Connection refused"))
        assert watch.take() == (Failure.AUTHENTICATION, 2)
        assert watch.take() == (None, 0)
    finally:
        log.removeHandler(watch)


def test_tls_material_that_cannot_be_loaded_is_fatal_before_any_connection(monkeypatch, tmp_path):
    monkeypatch.setenv("TDM_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("TDM_SSL_CAFILE", str(tmp_path / "no-such-ca.pem"))
    with pytest.raises(FatalError, match=r"TDM_SSL_CAFILE=.*no-such-ca\.pem: no such file"):
        check_tls_material(Settings())
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    monkeypatch.setenv("TDM_SSL_CAFILE", str(bad))
    with pytest.raises(FatalError, match="TDM_SSL_CAFILE"):
        check_tls_material(Settings())


def _record(headers: list[tuple[str, bytes]]) -> Record:
    return Record("lab.results", 2, 41, key=None, value=b"", headers=tuple(headers), timestamp_ms=None)


@pytest.mark.parametrize(
    "sent",
    [
        "Jane.Doe",
        "MRN-4829105",
        "4829105",
        "1980-01-01",
        "x" * 200,
        "ab/cd",
        "deadbeef",
        "9434765919123456",  # 16 digits: a national health number's shape (issue 28)
        "94347659191234569434765919123456",  # 32 digits: hex by the letter, digits alone
        "12345678-1234-1234-1234-123456789012",  # a UUID's shape made of digits
        "a" * 64,  # longer than a W3C trace id
    ],
)
def test_an_upstream_correlation_id_that_could_carry_phi_is_replaced(sent):
    assert correlation_id(_record([("tdm.correlation_id", sent.encode())])) == "lab.results/2/41"


@pytest.mark.parametrize("sent", ["0f8fad5b-d9cb-469f-a165-70867728950e", "4bf92f3577b34da6a3ce929d0e0e4736"])
def test_a_uuid_or_trace_id_correlation_is_kept(sent):
    assert correlation_id(_record([("tdm.correlation_id", sent.encode())])) == sent


def test_a_fence_wrapped_in_a_plain_kafka_error_is_still_fatal():
    from consumer.clients.kafka_python import _raised
    from consumer.delivery import is_fatal

    fenced = kafka_errors.ProducerFencedError()
    wrapped = kafka_errors.KafkaError("Cannot perform send because ... has failed with errors.", fenced)
    seen = _raised(wrapped, "send")
    assert is_fatal(seen) and seen.name == "ProducerFencedError"
    assert not is_fatal(
        _raised(kafka_errors.KafkaError("transient", kafka_errors.KafkaTimeoutError()), "send")
    )


class _Init:
    def __init__(self, failed: bool) -> None:
        self._failed = failed

    def failed(self) -> bool:
        return self._failed


class _Connection:
    """The kafka-python connection attributes the watch reads (a stand-in, not a Kafka client)."""

    def __init__(self, *, sasl: bool, versions_exchanged: bool, init_failed: bool) -> None:
        self.sasl_enabled = sasl
        self.broker_version_data = (4, 1) if versions_exchanged else None
        self._init_future = _Init(init_failed)


@pytest.mark.parametrize(
    ("connection", "cause"),
    [
        (_Connection(sasl=True, versions_exchanged=True, init_failed=True), Failure.AUTHENTICATION),
        (_Connection(sasl=False, versions_exchanged=True, init_failed=True), None),  # no SASL to refuse
        (_Connection(sasl=True, versions_exchanged=False, init_failed=True), None),  # never got that far
    ],
    ids=["closed-during-sasl", "plaintext", "before-versions"],
)
def test_a_socket_closed_during_sasl_counts_as_a_refused_password(connection, cause):
    """A broker that rejects the password often closes the socket before kafka-python reads the
    SASL error: the log then says only "socket disconnected", with the connection in its args."""
    watch = FailureWatch()
    log = logging.getLogger("kafka.test-watch-sasl")
    log.addHandler(watch)
    try:
        lost = kafka_errors.KafkaConnectionError("socket disconnected")
        log.error("%s: Connection lost: %s", connection, lost)
        assert watch.take() == ((cause, 1) if cause else (None, 0))
    finally:
        log.removeHandler(watch)
