import socket
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import NoDecode

from consumer.formats import Format
from consumer.settings import Settings, describe_settings_error


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


# -- issue 28, class 3: configuration mistakes are refused, by name -----------------------------


def test_an_unknown_tdm_variable_is_refused_naming_the_closest_setting(monkeypatch):
    monkeypatch.setenv("TDM_INPUT_TOPIC", "lab.other")
    monkeypatch.setenv("TDM_SASL_PASSWORD_FIEL", "/run/secrets/x")
    with pytest.raises(ValidationError) as caught:
        Settings()
    said = describe_settings_error(caught.value)
    assert "TDM_INPUT_TOPIC (did you mean TDM_INPUT_TOPICS?)" in said
    assert "TDM_SASL_PASSWORD_FIEL (did you mean TDM_SASL_PASSWORD_FILE?)" in said


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("TDM_INPUT_PATTERN", "lab.(", "TDM_INPUT_PATTERN: Value error, not a valid regular expression"),
        ("TDM_GROUP_ID", "", "TDM_GROUP_ID"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_at_start(monkeypatch, variable, value, said):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert said in describe_settings_error(caught.value)


@pytest.mark.parametrize(
    ("content", "said"), [(b"\xff\xfe\x00bad", "is not UTF-8 text"), (b"\n", "is empty")]
)
def test_a_password_file_that_is_not_text_or_is_empty_names_its_variable(
    monkeypatch, tmp_path, content, said
):
    secret = tmp_path / "password"
    secret.write_bytes(content)
    monkeypatch.setenv("TDM_SASL_PASSWORD_FILE", str(secret))
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert f"TDM_SASL_PASSWORD_FILE {secret} {said}" in describe_settings_error(caught.value)


def test_a_missing_ca_file_is_named(tmp_path):
    from consumer.connecting import check_tls_material
    from consumer.fatal import FatalError

    missing = tmp_path / "ca.pem"
    with pytest.raises(FatalError, match=f"TDM_SSL_CAFILE={missing}: no such file"):
        check_tls_material(Settings(security_protocol="SSL", ssl_cafile=missing))


def test_every_json_setting_that_is_not_json_exits_2_in_one_line_naming_its_variable(monkeypatch, capsys):
    """Issue 42: a malformed TDM_NOTIFY_ROUTES was a 42-line traceback naming the field."""
    from pydantic_settings.sources import EnvSettingsSource

    from consumer.cli import main

    source = EnvSettingsSource(Settings)
    decoded = [
        name
        for name, field in Settings.model_fields.items()
        if source.field_is_complex(field) and not any(m is NoDecode for m in field.metadata)
    ]
    assert decoded == [], f"{decoded}: pydantic-settings would decode these itself"
    json_settings = ["notify_routes"]
    for name in json_settings:
        variable = f"TDM_{name.upper()}"
        monkeypatch.setenv(variable, '{"alertmanager": ')
        assert main(["notify"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and f"{variable}: Value error, not valid JSON" in err, err
        assert len(err.strip().splitlines()) == 2  # the heading and the variable's line
        monkeypatch.delenv(variable)
