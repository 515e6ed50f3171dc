"""The signed acknowledgement endpoint (issue 39): what it writes, and what it refuses."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from consumer.ack_server import AckServer
from consumer.clients.seam import ClientError, Failure
from consumer.notify.receivers import sign

SECRET = b"s3cret-for-tests"
NOW = 1_900_000_000
KEY = "a" * 32


class Sent:
    def offset(self, timeout_s: float) -> int:
        return 0


class Producer:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []
        self.fail = fail

    def send(self, topic, key, value, headers, *, partition=None, timestamp_ms=None):
        if self.fail:
            raise ClientError(Failure.TRANSIENT, "no broker", "KafkaTimeoutError")
        self.sent.append((topic, key, value))
        return Sent()

    def flush(self, timeout_s: float) -> None:
        pass

    def close(self, timeout_s: float) -> None:
        pass


def server(producer: Producer | None = None) -> AckServer:
    return AckServer(
        "127.0.0.1",
        0,
        secret=SECRET,
        max_age_s=300,
        topic="acks",
        producer=producer or Producer(),
        clock=lambda: NOW,
    )


def body(**fields: object) -> bytes:
    data = {
        "incident_key": KEY,
        "patient_id": "PT-1",
        "decision": "dose_changed",
        "by": "pharmacist",
        **fields,
    }
    return json.dumps(data).encode()


def signed(data: bytes, at: int = NOW, secret: bytes = SECRET) -> dict[str, str]:
    return {"x-tdm-timestamp": str(at), "x-tdm-signature": "v1=" + sign(secret, str(at), data)}


def test_a_signed_acknowledgement_is_written_keyed_by_patient_with_its_note_for_people_only():
    producer = Producer()
    status, answer = server(producer).handle(signed(data := body(note="called the ward")), data)
    assert (status, answer["outcome"]) == (202, "accepted")
    ((topic, key, value),) = producer.sent
    record = json.loads(value or b"")
    assert (topic, key) == ("acks", b"PT-1")
    assert (record["via"], record["by"], record["decision"], record["note"]) == (
        "webhook",
        "pharmacist",
        "dose_changed",
        "called the ward",
    )
    assert record["ack_id"] == answer["ack_id"]


def test_the_same_signed_request_twice_is_the_same_acknowledgement():
    producer = Producer()
    s = server(producer)
    data = body()
    s.handle(signed(data), data)
    s.handle(signed(data), data)
    first, second = (json.loads(v or b"") for _, _, v in producer.sent)
    assert first == second  # the service reads the second as a repeat


@pytest.mark.parametrize(
    ("headers", "outcome"),
    [
        ({}, "unsigned"),
        ({"x-tdm-timestamp": str(NOW)}, "unsigned"),
        ({"x-tdm-timestamp": "yesterday", "x-tdm-signature": "v1=00"}, "unsigned"),
        ({"x-tdm-timestamp": str(NOW), "x-tdm-signature": "v1=" + "0" * 64}, "bad_signature"),
    ],
    ids=["nothing", "no-signature", "not-a-time", "wrong"],
)
def test_an_unsigned_or_wrongly_signed_request_is_refused_and_writes_nothing(headers, outcome):
    producer = Producer()
    status, answer = server(producer).handle(headers, body())
    assert (status, answer["outcome"]) == (401, outcome) and producer.sent == []


def test_another_secret_or_another_body_does_not_verify():
    producer = Producer()
    s = server(producer)
    data = body()
    assert s.handle(signed(data, secret=b"other"), data)[1]["outcome"] == "bad_signature"
    assert s.handle(signed(data), body(decision="switched"))[1]["outcome"] == "bad_signature"
    assert producer.sent == []


@pytest.mark.parametrize("skew", [-301, 301])
def test_a_stale_request_is_refused_as_a_replay(skew):
    producer = Producer()
    data = body()
    status, answer = server(producer).handle(signed(data, at=NOW + skew), data)
    assert (status, answer["outcome"]) == (401, "stale") and producer.sent == []


def test_a_rotated_secret_may_sign_beside_the_old_one():
    data = body()
    headers = signed(data)
    headers["x-tdm-signature"] = "v1=" + sign(b"next", str(NOW), data) + "," + headers["x-tdm-signature"]
    assert server().handle(headers, data)[0] == 202


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        body(by="Dr Jane Smith"),
        body(decision="maybe"),
        body(incident_key="x"),
        body(note=7),
    ],
    ids=["text", "list", "a-name-not-a-role", "decision", "key", "note"],
)
def test_what_is_not_an_acknowledgement_is_refused_with_the_reason(data):
    producer = Producer()
    status, answer = server(producer).handle(signed(data), data)
    assert (status, answer["outcome"]) == (400, "invalid") and answer["reason"] and producer.sent == []


def test_kafka_down_is_a_503_to_retry():
    data = body()
    status, answer = server(Producer(fail=True)).handle(signed(data), data)
    assert (status, answer["outcome"]) == (503, "unavailable")


def test_over_http():
    s = server()
    threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        data = body()
        url = f"http://127.0.0.1:{s.port}/acknowledgements"
        request = urllib.request.Request(url, data=data, headers={k: v for k, v in signed(data).items()})
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 202
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5)
        assert refused.value.code == 401
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{s.port}/metrics", timeout=5).read().decode()
        assert 'tdm_ack_requests_total{outcome="accepted"} 1.0' in metrics
        assert 'tdm_ack_requests_total{outcome="unsigned"} 1.0' in metrics
    finally:
        s.shutdown()
