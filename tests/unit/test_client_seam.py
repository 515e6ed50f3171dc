"""The confluent-kafka adapter's reading of librdkafka errors (work in progress, issue #15)."""

import pytest
from confluent_kafka import KafkaError

from consumer.clients.librdkafka import failure_of
from consumer.clients.seam import Failure


@pytest.mark.parametrize(
    ("code", "text", "failure"),
    [
        (KafkaError.PRODUCER_FENCED, "", Failure.FENCED),
        (KafkaError.INVALID_PRODUCER_EPOCH, "", Failure.FENCED),
        (KafkaError.UNKNOWN_MEMBER_ID, "", Failure.REBALANCED),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "", Failure.NOT_AUTHORISED_TOPIC),
        (KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, "", Failure.NOT_AUTHORISED_TRANSACTIONAL_ID),
        (KafkaError.SASL_AUTHENTICATION_FAILED, "", Failure.AUTHENTICATION),
        # librdkafka's own words (Kafka 4.1.1, OpenSSL 3); a host-name mismatch reads as the first
        # and is told apart by a TLS handshake (confluent._names_another_host).
        (
            KafkaError._SSL,
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: "
            "broker certificate could not be verified",
            Failure.TLS_TRUST,
        ),
        (
            KafkaError._TRANSPORT,
            "Receive failed: error:0A000412:SSL routines::sslv3 alert bad certificate: SSL alert number 42",
            Failure.TLS_CLIENT_CERTIFICATE,
        ),
        (KafkaError._FATAL, "Failed to add partitions: This instance has been fenced", Failure.FENCED),
        (KafkaError._ALL_BROKERS_DOWN, "", Failure.TRANSIENT),
        (KafkaError._TRANSPORT, "", Failure.TRANSIENT),
    ],
)
def test_librdkafka_errors_read_as_the_service_decides(code, text, failure):
    assert failure_of(KafkaError(code, text)) is failure


def test_a_producer_librdkafka_calls_fatal_is_replaced_not_the_service_stopped():
    """INVALID_TXN_STATE after a broker restart (seen in the suite): the delivery replaces the
    producer whose abort fails; exiting with 'restarting will not help' was wrong."""
    error = KafkaError(KafkaError.INVALID_TXN_STATE, "Failed to end transaction", fatal=True)
    assert error.fatal() and failure_of(error) is Failure.TRANSIENT
    fenced = KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)
    assert failure_of(fenced) is Failure.FENCED  # still decided by the transaction's age


def test_only_transient_and_rebalance_failures_are_retried_in_place():
    assert {f for f in Failure if f.retried} == {Failure.TRANSIENT, Failure.REBALANCED}


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        ("ProducerFencedError", Failure.FENCED),
        ("InvalidProducerEpochError", Failure.FENCED),
        ("CommitFailedError", Failure.REBALANCED),
        ("UnknownMemberIdError", Failure.REBALANCED),
        ("TopicAuthorizationFailedError", Failure.NOT_AUTHORISED_TOPIC),
        ("GroupAuthorizationFailedError", Failure.NOT_AUTHORISED_GROUP),
        ("KafkaTimeoutError", Failure.TRANSIENT),
        ("KafkaConnectionError", Failure.TRANSIENT),
    ],
)
def test_kafka_python_errors_read_the_same_way(error, failure):
    from kafka import errors as kafka_errors

    from consumer.clients import kafka_python

    assert kafka_python.failure_of(getattr(kafka_errors, error)()) is failure


def test_a_fence_kafka_python_wraps_at_send_time_is_still_a_fence():
    from kafka import errors as kafka_errors

    from consumer.clients import kafka_python

    wrapped = kafka_errors.KafkaError("Cannot perform send", kafka_errors.ProducerFencedError())
    assert kafka_python.failure_of(wrapped) is Failure.FENCED


def test_the_confluent_client_without_its_package_is_a_clear_fatal_error(monkeypatch):
    import sys

    from consumer.clients import client_for
    from consumer.fatal import FatalError
    from consumer.settings import Settings

    monkeypatch.setenv("TDM_KAFKA_CLIENT", "confluent-kafka")
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # what an install without the extra sees
    monkeypatch.delitem(sys.modules, "consumer.clients.confluent", raising=False)
    with pytest.raises(FatalError, match=r"pip install 'tdm-alerts\[confluent\]'"):
        client_for(Settings())


def test_kip848_needs_the_confluent_client(monkeypatch):
    from pydantic import ValidationError

    from consumer.settings import Settings

    monkeypatch.setenv("TDM_GROUP_PROTOCOL", "consumer")
    with pytest.raises(ValidationError, match="TDM_KAFKA_CLIENT=confluent-kafka"):
        Settings()
    monkeypatch.setenv("TDM_KAFKA_CLIENT", "confluent-kafka")
    assert Settings().group_protocol == "consumer"


@pytest.mark.parametrize("call", ["send_offsets", "commit", "abort"])
def test_confluent_transaction_calls_are_watched_for_outliving_their_timeout(call):
    """librdkafka#5456: the watchdog can only see a hung transaction call that is registered."""
    from consumer.clients import confluent
    from consumer.clients.deadlines import DEADLINES

    seen = []

    class Librdkafka:
        def __getattr__(self, name):
            def transaction_call(*args):
                seen.append((args[-1], DEADLINES.overdue(grace_s=-confluent.CALL_TIMEOUT_S)))

            return transaction_call

    producer = object.__new__(confluent.Producer)
    producer._producer = Librdkafka()
    producer._sent = []
    getattr(producer, call)(*([{}, None] if call == "send_offsets" else []))
    [(timeout, registered)] = seen
    assert timeout == confluent.CALL_TIMEOUT_S
    assert registered is not None and registered.timeout_s == confluent.CALL_TIMEOUT_S
    assert DEADLINES.overdue(grace_s=-confluent.CALL_TIMEOUT_S) is None  # gone once it returned
