import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from consumer.formats import Format
from consumer.settings import Settings


def test_defaults(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("TDM_"):
            monkeypatch.delenv(key)
    s = Settings()
    assert (s.input_topics, s.alert_topic, s.dlq_topic) == (["lab.results"], "lab.alerts", "lab.results.dlq")


def test_comma_separated_lists(monkeypatch):
    monkeypatch.setenv("TDM_BOOTSTRAP_SERVERS", "k1:9092, k2:9092")
    monkeypatch.setenv("TDM_INPUT_TOPICS", "lab.results,lab.results.eu")
    s = Settings()
    assert s.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert s.input_topics == ["lab.results", "lab.results.eu"]


def test_output_topic_may_not_be_an_input(monkeypatch):
    monkeypatch.setenv("TDM_INPUT_TOPICS", "lab.alerts")
    with pytest.raises(ValidationError, match="must not also be input topics"):
        Settings()


def test_sasl_needs_credentials(monkeypatch):
    monkeypatch.setenv("TDM_SASL_MECHANISM", "SCRAM-SHA-512")
    with pytest.raises(ValidationError, match="TDM_SASL_USERNAME"):
        Settings()


def test_password_is_never_shown(monkeypatch):
    monkeypatch.setenv("TDM_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("TDM_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("TDM_SASL_USERNAME", "svc")
    monkeypatch.setenv("TDM_SASL_PASSWORD", "hunter2")
    s = Settings()
    assert "hunter2" not in repr(s)
    assert s.kafka_security()["sasl_plain_password"] == "hunter2"


def test_every_setting_is_documented_in_the_readme():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"TDM_{name.upper()}" in readme, name


def test_topic_formats(monkeypatch):
    monkeypatch.setenv("TDM_TOPIC_FORMATS", "lab.hl7=hl7v2, lab.fhir = fhir")
    assert Settings().topic_formats == {"lab.hl7": Format.HL7V2, "lab.fhir": Format.FHIR}
    monkeypatch.setenv("TDM_TOPIC_FORMATS", "lab.hl7")
    with pytest.raises(ValidationError, match="not topic=format"):
        Settings()
    monkeypatch.setenv("TDM_TOPIC_FORMATS", "lab.hl7=xml")
    with pytest.raises(ValidationError):
        Settings()


def test_delivery_and_instance(monkeypatch):
    s = Settings()
    assert s.delivery == "exactly_once" and s.instance_id == socket.gethostname()
    monkeypatch.setenv("TDM_INSTANCE_ID", "pod 1")  # becomes part of the transactional id
    with pytest.raises(ValidationError, match="instance_id"):
        Settings()


def test_transaction_timeout_is_seconds_and_outlasts_a_batch(monkeypatch):
    assert Settings().transaction_timeout_ms == 10_000  # not kafka-python's minute
    monkeypatch.setenv("TDM_COMMIT_INTERVAL_MS", "6000")
    with pytest.raises(ValidationError, match="TDM_TRANSACTION_TIMEOUT_MS must be at least twice"):
        Settings()
    monkeypatch.setenv("TDM_TRANSACTION_TIMEOUT_MS", "12000")
    assert Settings().transaction_timeout_ms == 12_000
