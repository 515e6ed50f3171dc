"""Service configuration from `TDM_*` environment variables (documented in README.md)."""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from consumer.formats import Format
from interpretation.alerts import Category, Severity
from interpretation.patient_state import CorrelationRules

CommaList = Annotated[list[str], NoDecode]


class Route(BaseModel):
    """Which alert events a receiver gets: every one unless severities or categories narrow it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    severities: frozenset[Severity] | None = None
    categories: frozenset[Category] | None = None

    def takes(self, severity: Severity, category: Category | None) -> bool:
        """`category` None is one this version does not know (an event from a newer `run`): it
        passes the category filter, so a new kind of page is delivered, not dropped."""
        return (self.severities is None or severity in self.severities) and (
            self.categories is None or category is None or category in self.categories
        )


class Settings(BaseSettings):
    """Every setting the service reads; each has a default that works against a local broker."""

    model_config = SettingsConfigDict(env_prefix="TDM_", extra="ignore", frozen=True)

    bootstrap_servers: CommaList = ["localhost:9092"]
    input_topics: CommaList = ["lab.results"]
    input_pattern: str | None = None
    topic_formats: Annotated[dict[str, Format], NoDecode] = {}
    alert_topic: str = "lab.alerts"
    dlq_topic: str = "lab.results.dlq"
    group_id: Annotated[str, Field(min_length=1)] = "tdm-alerts"
    client_id: str = "tdm-alerts"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"

    # The Kafka client library behind consumer/clients/seam.py. confluent-kafka (librdkafka) moves
    # records several times faster and speaks KIP-848; install the `confluent` extra for it.
    kafka_client: Literal["kafka-python", "confluent-kafka"] = "kafka-python"
    # "consumer": KIP-848's broker-side assignment (Kafka 4), confluent-kafka only.
    group_protocol: Literal["classic", "consumer"] = "classic"

    delivery: Literal["exactly_once", "at_least_once"] = "exactly_once"
    instance_id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")] = Field(
        default_factory=socket.gethostname
    )
    commit_interval_ms: Annotated[int, Field(gt=0, le=60_000)] = 100
    session_timeout_ms: Annotated[int, Field(ge=1000, le=300_000)] = 10_000
    # An instance killed mid-transaction holds every read_committed reader of the partitions it
    # wrote until the broker aborts the transaction at this timeout (kafka-python's default is a
    # minute). Kafka Streams uses 10 s for exactly-once; a batch lasts TDM_COMMIT_INTERVAL_MS.
    transaction_timeout_ms: Annotated[int, Field(ge=1000, le=900_000)] = 10_000

    max_message_bytes: Annotated[int, Field(gt=0)] = 1_048_576
    batch_max_records: Annotated[int, Field(gt=0, le=100_000)] = 5000
    poll_timeout_ms: Annotated[int, Field(ge=0)] = 100
    retry_backoff_max_s: Annotated[float, Field(gt=0)] = 30.0
    liveness_timeout_s: Annotated[float, Field(ge=5)] = 60.0
    # A page is due within seconds: a minute without progress is already an incident, and the
    # restart (state restored from the changelog, nothing lost) costs seconds.
    stall_timeout_s: Annotated[float, Field(ge=10)] = 60.0

    metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped from outside the pod
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9108

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    ruleset: Path | None = None

    # Patient state (see README "Patient state").
    patient_state: bool = True
    context_topic: str | None = None  # the treatment-context topic (compacted, keyed by patient id)
    # The acknowledgement topic (keyed by patient id): `tdm-alerts ack` writes it (README "Follow-ups").
    ack_topic: str | None = None
    # A critical or high page not acknowledged this long escalates (a critical follow-up event);
    # unset: never. The hospital's escalation policy.
    escalate_after_minutes: Annotated[float, Field(gt=0, le=7 * 24 * 60)] | None = None
    # Read serum albumin and body weight results on the lab feed too, as the forecast's
    # covariates (README "Forecast of the next trough": what it costs).
    lab_covariates: bool = False
    input_keyed_by_patient: bool = False  # skip the repartition hop (single input topic only)
    state_dir: Path = Path("state")
    state_partitions: Annotated[int, Field(ge=1, le=1000)] = 6
    create_internal_topics: bool = True
    patient_retention_days: Annotated[int, Field(ge=1, le=36500)] = 400
    pair_window_hours: Annotated[int, Field(ge=0, le=336)] = 24
    partner_keep_days: Annotated[int, Field(ge=1, le=3650)] = 30
    previous_levels: Annotated[int, Field(ge=0, le=20)] = 5

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None  # a mounted Kubernetes secret, read at start
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None  # of an encrypted TDM_SSL_KEYFILE
    ssl_password_file: Path | None = None
    ssl_check_hostname: bool = True

    # `tdm-alerts notify`: delivering alert events to the pager (README "Paging").
    notify_group_id: Annotated[str, Field(min_length=1)] = "tdm-alerts-notify"
    notify_alertmanager_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    # Shorter than the receiver's resolve_timeout (5 min by default): Alertmanager resolves an
    # alert whose client stops re-sending it.
    notify_resend_s: Annotated[float, Field(ge=1, le=600)] = 60.0
    notify_generator_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    notify_pagerduty_url: Annotated[str, Field(pattern=r"^https?://")] = (
        "https://events.pagerduty.com/v2/enqueue"
    )
    notify_pagerduty_routing_key: SecretStr | None = None
    notify_pagerduty_routing_key_file: Path | None = None
    notify_webhook_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    notify_webhook_secret: SecretStr | None = None
    notify_webhook_secret_file: Path | None = None
    # FHIR R4 output (`interpret --as fhir`): the system of the lab feed's patient identifiers
    # (an MRN's urn:oid:...) and whom the CommunicationRequest is for (a reference).
    fhir_patient_system: Annotated[str, Field(pattern=r"^(urn:|https?://)\S+$")] = "urn:tdm-alerts:patient-id"
    fhir_recipient: Annotated[str, Field(pattern=r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")] | None = None
    # `tdm-alerts cds-hooks`: where the CDS Hooks service listens.
    cds_hooks_host: str = "0.0.0.0"  # noqa: S104 - a server for the hospital network, in a pod
    cds_hooks_port: Annotated[int, Field(ge=0, le=65535)] = 9120
    # The CDS clients trusted: issuer -> the URL of its JWKS (JSON); this service's public base
    # URL, which a token's `aud` names; or, only where nothing but the EHR can reach it, none.
    cds_hooks_issuers: Annotated[dict[str, Annotated[str, Field(pattern=r"^https?://")]], NoDecode] = {}
    cds_hooks_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    cds_hooks_allow_unauthenticated: bool = False
    # `tdm-alerts ack-server`: signed acknowledgements over HTTP, written to TDM_ACK_TOPIC.
    ack_secret: SecretStr | None = None
    ack_secret_file: Path | None = None
    ack_server_host: str = "0.0.0.0"  # noqa: S104 - a server for the hospital network, in a pod
    ack_server_port: Annotated[int, Field(ge=0, le=65535)] = 9110
    ack_max_age_s: Annotated[int, Field(ge=10, le=3600)] = 300
    # An interface engine's MLLP listener: each event as an HL7 v2 ORU^R01, or an MDM document
    # (T02, then T08 edits of it) where the EHR files such notes as documents (issue 41).
    notify_hl7_host: str | None = None
    notify_hl7_port: Annotated[int, Field(ge=1, le=65535)] = 2575
    notify_hl7_message: Literal["ORU^R01", "MDM^T02"] = "ORU^R01"
    hl7_sending_facility: Annotated[str, Field(min_length=1, max_length=20)] = "TDM"
    hl7_receiving_application: Annotated[str, Field(min_length=1, max_length=20)] = "EHR"
    hl7_receiving_facility: Annotated[str, Field(min_length=1, max_length=20)] = "HOSPITAL"
    hl7_assigning_authority: Annotated[str, Field(max_length=20)] = ""
    # A FHIR R4 server: each event as a transaction Bundle (issue 41), authenticated by a token
    # file or SMART Backend Services (client id, token endpoint, private key file and its kid).
    notify_fhir_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    notify_fhir_token_file: Path | None = None
    notify_fhir_client_id: str | None = None
    notify_fhir_token_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    notify_fhir_key_file: Path | None = None
    notify_fhir_key_id: str | None = None
    notify_fhir_key_algorithm: Literal["RS384", "ES384", "RS256", "ES256"] = "RS384"
    notify_fhir_scope: str = (
        "system/DetectedIssue.write system/Flag.write system/CommunicationRequest.write "
        "system/RiskAssessment.write system/Task.write"
    )
    notify_routes: Annotated[
        dict[Literal["alertmanager", "pagerduty", "webhook", "hl7v2", "fhir"], Route], NoDecode
    ] = {}
    notify_retry_budget_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    notify_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    notify_dlq_topic: str = "lab.alerts.undelivered"
    # How long a resolved incident is remembered, so a replayed older event is not news to a receiver.
    notify_incident_memory_days: Annotated[int, Field(ge=1, le=3650)] = 30
    notify_incidents_topic: str = "tdm-alerts-notify.open-incidents"

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: object) -> object:
        """TDM_X_FILE fills secret X (unless X is also set): secrets mounted as files, not in env."""
        if not isinstance(data, dict):
            return data
        for secret in (
            "sasl_password",
            "ssl_password",
            "notify_pagerduty_routing_key",
            "notify_webhook_secret",
            "ack_secret",
        ):
            path = data.get(f"{secret}_file")
            if path and not data.get(secret):
                variable = f"TDM_{secret.upper()}_FILE"
                try:
                    value = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
                except OSError as err:
                    raise ValueError(f"{variable} {path} cannot be read: {err.strerror}") from None
                except UnicodeDecodeError:
                    raise ValueError(f"{variable} {path} is not UTF-8 text") from None
                if not value.strip():
                    raise ValueError(f"{variable} {path} is empty")
                data[secret] = value
        return data

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_variables(cls, data: object) -> object:
        """A TDM_ variable no setting reads is a typo until shown otherwise (TDM_INPUT_TOPIC left
        the service reading the default topic)."""
        unknown = unknown_variables(os.environ)
        if unknown:
            raise ValueError("; ".join(unknown))
        return data

    @field_validator("input_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"not a valid regular expression: {err}") from None
        return value

    @field_validator("bootstrap_servers", "input_topics", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("notify_routes", "cds_hooks_issuers", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        """JSON read here, not by pydantic-settings: its parse error was a traceback naming the
        field, where every other configuration error is a line naming the variable."""
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"not valid JSON ({err.msg} at character {err.pos})") from None

    @field_validator("topic_formats", mode="before")
    @classmethod
    def _split_pairs(cls, value: object) -> object:
        """`lab.hl7=hl7v2,lab.fhir=fhir`: a fixed format for some topics; the rest are detected."""
        if not isinstance(value, str):
            return value
        pairs: dict[str, str] = {}
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            topic, sep, fmt = item.partition("=")
            if not sep or not topic.strip():
                raise ValueError(f"item {len(pairs) + 1} is not topic=format")
            pairs[topic.strip()] = fmt.strip()
        return pairs

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if not self.bootstrap_servers:
            raise ValueError("TDM_BOOTSTRAP_SERVERS must name at least one broker")
        if not self.input_topics and not self.input_pattern:
            raise ValueError("set TDM_INPUT_TOPICS or TDM_INPUT_PATTERN")
        if self.ack_topic and not self.patient_state:
            raise ValueError("TDM_ACK_TOPIC needs TDM_PATIENT_STATE=true (an incident is kept per patient)")
        if self.context_topic and not self.patient_state:
            raise ValueError(
                "TDM_CONTEXT_TOPIC needs TDM_PATIENT_STATE=true (the record is kept per patient)"
            )
        if self.input_keyed_by_patient and (self.input_pattern or len(self.input_topics) != 1):
            raise ValueError("TDM_INPUT_KEYED_BY_PATIENT needs exactly one topic in TDM_INPUT_TOPICS")
        if self.transaction_timeout_ms < 2 * self.commit_interval_ms:
            raise ValueError(
                "TDM_TRANSACTION_TIMEOUT_MS must be at least twice TDM_COMMIT_INTERVAL_MS "
                "(a batch's transaction stays open for the interval)"
            )
        outputs = {self.alert_topic, self.dlq_topic}
        if outputs & set(self.input_topics):
            raise ValueError("the alert and dead-letter topics must not also be input topics")
        if self.sasl_mechanism and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                "TDM_SASL_MECHANISM needs TDM_SASL_USERNAME and TDM_SASL_PASSWORD (or TDM_SASL_PASSWORD_FILE)"
            )
        if self.group_protocol == "consumer" and self.kafka_client != "confluent-kafka":
            raise ValueError(
                "TDM_GROUP_PROTOCOL=consumer (KIP-848) needs TDM_KAFKA_CLIENT=confluent-kafka: "
                "kafka-python speaks only the classic protocol"
            )
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            raise ValueError(f"TDM_SECURITY_PROTOCOL={self.security_protocol} needs TDM_SASL_MECHANISM")
        return self

    @property
    def producer_max_request_bytes(self) -> int:
        """The largest record our producers send: a whole message of TDM_MAX_MESSAGE_BYTES
        dead-lettered with its headers, and never below Kafka's own default."""
        return max(self.max_message_bytes + 65_536, 1_048_576)

    def correlation_rules(self) -> CorrelationRules:
        """How a patient's results are put together: one source for the service and `interpret`."""
        return CorrelationRules(
            pair_window_hours=self.pair_window_hours,
            partner_keep_days=self.partner_keep_days,
            previous_levels=self.previous_levels,
            escalate_after_minutes=self.escalate_after_minutes,
        )

    def kafka_security(self) -> dict[str, object]:
        """kafka-python keyword arguments for TLS/SASL, shared by consumer, producer and admin."""
        options: dict[str, object] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if (path := getattr(self, name)) is not None:
                options[name] = str(path)
        if self.ssl_password is not None:
            options["ssl_password"] = self.ssl_password.get_secret_value()
        if "SSL" in self.security_protocol:
            options["ssl_check_hostname"] = self.ssl_check_hostname
        return options


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Each TDM_ variable that names no setting, with the closest one that does."""
    known = {f"TDM_{name.upper()}" for name in Settings.model_fields}
    found = []
    for name in sorted(environ):
        if name.upper().startswith("TDM_") and name.upper() not in known:
            close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            found.append(f"unknown setting {name}{hint}")
    return found


def describe_settings_error(err: ValidationError) -> str:
    """A configuration error by variable name and rule, never by the value given (it may be a secret)."""
    lines = []
    for e in err.errors(include_url=False, include_input=False, include_context=False):
        field = str(e["loc"][0]) if e["loc"] else ""
        where = f"TDM_{field.upper()}" if field else "settings"
        lines.append(f"  - {where}: {e['msg']}")
    return "\n".join(lines)


def describe_decode_error(err: Exception) -> str:
    """pydantic-settings' own decode error by variable name (it names the field, with no value)."""
    found = re.search(r'field "(\w+)"', str(err))
    where = f"TDM_{found.group(1).upper()}" if found else "a TDM_ variable"
    return f"  - {where}: not valid JSON"
