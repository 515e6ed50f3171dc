"""What every librdkafka client here shares: its configuration from our settings, its errors
read as our failures (TLS and SASL included), the reachability check at creation, and
partitions in each side's type. The consumer and producer (`confluent.py`) and the admin client
(`confluent_admin.py`) are built on it.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as _TopicPartition

from consumer.clients.seam import ClientError, Failure, Partition
from consumer.settings import Settings

T = TypeVar("T")
CONNECT_TIMEOUT_S = 5.0  # as kafka-python's bootstrap time-out (kafka_python.BOOTSTRAP_TIMEOUT_MS)
CALL_TIMEOUT_S = 30.0
# librdkafka's own log lines, through the standard logging the service renders as JSON.
LOG = logging.getLogger("tdm_alerts.librdkafka")

_BY_CODE: dict[int, Failure] = {
    KafkaError._FENCED: Failure.FENCED,
    KafkaError.PRODUCER_FENCED: Failure.FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH: Failure.FENCED,
    KafkaError.UNKNOWN_MEMBER_ID: Failure.REBALANCED,
    KafkaError.ILLEGAL_GENERATION: Failure.REBALANCED,
    KafkaError.REBALANCE_IN_PROGRESS: Failure.REBALANCED,
    KafkaError.FENCED_MEMBER_EPOCH: Failure.REBALANCED,  # KIP-848
    KafkaError.STALE_MEMBER_EPOCH: Failure.REBALANCED,  # KIP-848
    KafkaError.TOPIC_AUTHORIZATION_FAILED: Failure.NOT_AUTHORISED_TOPIC,
    KafkaError.GROUP_AUTHORIZATION_FAILED: Failure.NOT_AUTHORISED_GROUP,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: Failure.NOT_AUTHORISED_TRANSACTIONAL_ID,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: Failure.NOT_AUTHORISED_CLUSTER,
    KafkaError.UNKNOWN_TOPIC_OR_PART: Failure.MISSING_TOPIC,
    KafkaError._UNKNOWN_TOPIC: Failure.MISSING_TOPIC,
    KafkaError._AUTHENTICATION: Failure.AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED: Failure.AUTHENTICATION,
    KafkaError.UNSUPPORTED_VERSION: Failure.UNSUPPORTED,
    KafkaError._UNSUPPORTED_FEATURE: Failure.UNSUPPORTED,
}


def failure_of(error: KafkaError) -> Failure:
    """Our reading of a librdkafka error. TLS problems arrive as _SSL with OpenSSL's words."""
    if (known := _BY_CODE.get(error.code())) is not None:
        return known
    text = error.str().lower()
    if "certificate verify failed" in text:
        # librdkafka words a host-name mismatch the same way: check_reachable tells them apart.
        return Failure.TLS_HOSTNAME if "hostname" in text or "host name" in text else Failure.TLS_TRUST
    if (
        error.code() == KafkaError._SSL
        or "ssl handshake failed" in text
        or ("alert" in text and "certificate" in text)
    ):
        # The broker's TLS alert: it does not accept our certificate (missing, rogue, expired).
        return Failure.TLS_CLIENT_CERTIFICATE
    if error.code() == KafkaError._TRANSPORT and "sasl" in text and "authentication" in text:
        return Failure.AUTHENTICATION
    if error.code() == KafkaError._FATAL and "fenced" in text:
        return Failure.FENCED
    # Any other error librdkafka calls fatal (INVALID_TXN_STATE after a broker restart, say)
    # makes this producer unusable, not the service: the delivery replaces a producer whose
    # abort fails, and the new one fences the old epoch. Fences and refusals are mapped above.
    return Failure.TRANSIENT


def client_error(error: KafkaError, doing: str) -> ClientError:
    # librdkafka's error texts name brokers, topics and ids, never record contents.
    return ClientError(failure_of(error), f"{doing}: {error.name()}: {error.str()[:200]}", name=error.name())


def call(action: Callable[[], T], doing: str) -> T:
    try:
        return action()
    except KafkaException as err:
        raise client_error(err.args[0], doing) from err


class Errors:
    """What librdkafka reported through error_cb that a call's own error does not say."""

    def __init__(self) -> None:
        self.refused: KafkaError | None = None  # the last refusal: credentials, certificates, ACLs
        self.fatal: KafkaError | None = None  # a fatal error's own code (a call reports only _FATAL)

    def __call__(self, error: KafkaError) -> None:
        # "All brokers are down" follows every refused connection: it must not hide the refusal.
        if failure_of(error).fatal:
            self.refused = error
            LOG.warning("client error: %s", error.name())
        if error.fatal():
            self.fatal = error

    def resolve(self, error: KafkaError) -> KafkaError:
        """A call or delivery report says only _FATAL; the callback heard which error it was."""
        return (self.fatal or error) if error.code() == KafkaError._FATAL else error


def client_options(settings: Settings, errors: Errors, purpose: str) -> dict[str, Any]:
    """librdkafka configuration for the shared settings (bootstrap, identity, TLS/SASL)."""
    options: dict[str, Any] = {
        "bootstrap.servers": ",".join(settings.bootstrap_servers),
        "client.id": f"{settings.client_id}-{purpose}",
        "security.protocol": settings.security_protocol,
        "error_cb": errors,
        "logger": LOG,
    }
    if settings.sasl_mechanism:
        options["sasl.mechanism"] = settings.sasl_mechanism
        options["sasl.username"] = settings.sasl_username
        if settings.sasl_password is not None:
            options["sasl.password"] = settings.sasl_password.get_secret_value()
    for ours, theirs in (
        ("ssl_cafile", "ssl.ca.location"),
        ("ssl_certfile", "ssl.certificate.location"),
        ("ssl_keyfile", "ssl.key.location"),
    ):
        if (path := getattr(settings, ours)) is not None:
            options[theirs] = str(path)
    if settings.ssl_password is not None:
        options["ssl.key.password"] = settings.ssl_password.get_secret_value()
    if "SSL" in settings.security_protocol:
        options["ssl.endpoint.identification.algorithm"] = "https" if settings.ssl_check_hostname else "none"
    return options


def check_reachable(client: Any, errors: Errors, settings: Settings, doing: str) -> None:
    """A metadata request: the cluster answers, or the reason it did not becomes a ClientError."""
    try:
        client.list_topics(timeout=CONNECT_TIMEOUT_S)
    except KafkaException as err:
        client.poll(0)  # serves the error callback, which heard why the connections failed
        refused = errors.refused
        failure = client_error(refused if refused is not None else err.args[0], doing)
        if failure.failure is Failure.TLS_TRUST and _names_another_host(settings):
            failure = ClientError(Failure.TLS_HOSTNAME, failure.detail, name=failure.name)
        raise failure from err


def _names_another_host(settings: Settings) -> bool:
    """Whether the broker's certificate verifies against our CA but names another host.

    librdkafka reports both as "certificate verify failed"; Python's TLS handshake with the same
    CA says which (OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH, 62, or _IP_ADDRESS_MISMATCH, 64, for a
    broker named by address). No Kafka bytes are sent.
    """
    host, _, port = settings.bootstrap_servers[0].rpartition(":")
    context = ssl.create_default_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    try:
        with (
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return False
    except ssl.SSLCertVerificationError as err:
        return err.verify_code in (62, 64)
    except (OSError, ValueError):
        return False


def ours(tp: _TopicPartition) -> Partition:
    return Partition(tp.topic, tp.partition)


def theirs(partition: Partition, offset: int | None = None) -> _TopicPartition:
    if offset is None:
        return _TopicPartition(partition.topic, partition.partition)
    return _TopicPartition(partition.topic, partition.partition, offset)
