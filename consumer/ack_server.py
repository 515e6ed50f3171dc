"""`tdm-alerts ack-server`: acknowledgements from a hospital system over HTTP, signed as our own
outgoing webhook signs its requests, written to TDM_ACK_TOPIC for the patient stage.

POST /acknowledgements with a JSON body (`incident_key`, `patient_id`, `decision`, `by`, and
optionally `at`, `note`), headers `X-TDM-Timestamp` (epoch seconds) and `X-TDM-Signature`
(`v1=` + hex HMAC-SHA256 over `timestamp.body` with TDM_ACK_SECRET; several comma-separated
for a key rotation). Answers: 202 written (the body says the acknowledgement's id), 401
unsigned, wrongly signed or stale (older or newer than TDM_ACK_MAX_AGE_S: a replay), 400 not an
acknowledgement, 503 Kafka did not take it (retry). Whether the incident is open is the patient
stage's to say: one it does not know is dead-lettered (`unknown_incident`) and changes nothing.
Also serves /metrics and /healthz.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, NamedTuple

import structlog
from prometheus_client import CollectorRegistry, Counter

from consumer.clients.seam import ClientError, Producer
from consumer.http_endpoint import Endpoint, JsonHandler
from consumer.notify.receivers import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from interpretation.acknowledgement import Acknowledgement, read_acknowledgement

log = structlog.get_logger("tdm_alerts.ack_server")

PATH = "/acknowledgements"
MAX_BODY_BYTES = 16_384  # an acknowledgement is a few hundred bytes
NOTE_MAX_CHARS = 2000


class Refused(StrEnum):
    """Why a request was not written; the `outcome` label of tdm_ack_requests_total."""

    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    STALE = "stale"
    INVALID = "invalid"


class Verdict(NamedTuple):
    refused: Refused | None
    reason: str


def verify(
    secret: bytes, body: bytes, *, timestamp: str | None, signatures: str | None, now: float, max_age_s: int
) -> Verdict:
    """Whether the request is signed with the secret, recently: a stale one is a replay."""
    if not timestamp or not signatures:
        return Verdict(Refused.UNSIGNED, f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required")
    try:
        sent = int(timestamp)
    except ValueError:
        return Verdict(Refused.UNSIGNED, f"{TIMESTAMP_HEADER} is not epoch seconds")
    expected = "v1=" + sign(secret, timestamp, body)
    offered = [s.strip() for s in signatures.split(",")]
    if not any(hmac.compare_digest(expected, s) for s in offered):
        return Verdict(Refused.BAD_SIGNATURE, "the signature does not match the body and timestamp")
    if abs(now - sent) > max_age_s:
        return Verdict(
            Refused.STALE, f"signed {int(now - sent)} s from now; at most {max_age_s} s is accepted"
        )
    return Verdict(None, "")


def acknowledgement(body: bytes, timestamp: str) -> tuple[Acknowledgement, dict[str, Any]]:
    """The acknowledgement a verified body holds, and the record written for it; ValueError."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    note = data.pop("note", None)
    if note is not None and (not isinstance(note, str) or len(note) > NOTE_MAX_CHARS):
        raise ValueError(f"note: text of at most {NOTE_MAX_CHARS} characters")
    data.setdefault("at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(timestamp))))
    # The same signed request again (a retry, a replay inside the window) is the same acknowledgement.
    data.setdefault("ack_id", hashlib.sha256(timestamp.encode() + b"." + body).hexdigest()[:32])
    data["via"] = "webhook"
    ack = read_acknowledgement(data)
    record = ack.model_dump(mode="json")
    if note:
        record["note"] = note  # for the people reading the topic; the service keeps none of it
    return ack, record


class AckServer(Endpoint):
    """The HTTP server: verify, read, write to the ack topic (a plain producer, acks=all)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secret: bytes,
        max_age_s: int,
        topic: str,
        producer: Producer,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secret = secret
        self.max_age_s = max_age_s
        self.topic = topic
        self.producer = producer
        self.clock = clock
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tdm_ack_requests",
            "Acknowledgement requests, by outcome: accepted (written to the ack topic), unsigned, "
            "bad_signature, stale (a replay or a wrong clock), invalid, unavailable (Kafka).",
            ["outcome"],
            registry=self.registry,
        )
        self._lock = threading.Lock()  # one producer, requests on several threads
        super().__init__(host, port, _Handler)

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        """(status, JSON answer) for one request: never raises."""
        timestamp = headers.get(TIMESTAMP_HEADER.lower())
        verdict = verify(
            self.secret,
            body,
            timestamp=timestamp,
            signatures=headers.get(SIGNATURE_HEADER.lower()),
            now=self.clock(),
            max_age_s=self.max_age_s,
        )
        if verdict.refused is not None:
            return self._answer(401, verdict.refused.value, verdict.reason)
        try:
            ack, record = acknowledgement(body, timestamp or "")
        except ValueError as err:
            return self._answer(400, Refused.INVALID.value, str(err)[:500])
        try:
            with self._lock:
                sent = self.producer.send(
                    self.topic, ack.patient_id.encode(), json.dumps(record).encode(), []
                )
                self.producer.flush(10)
                sent.offset(10)
        except ClientError as err:
            log.warning("acknowledgement not written; the sender should retry", error=err.name)
            return self._answer(503, "unavailable", "Kafka did not take it; retry")
        self.requests.labels("accepted").inc()
        log.info("acknowledgement accepted", ack_id=ack.ack_id, decision=ack.decision.value, by=ack.by)
        return 202, {"outcome": "accepted", "ack_id": ack.ack_id}

    def _answer(self, status: int, outcome: str, reason: str) -> tuple[int, dict[str, str]]:
        self.requests.labels(outcome).inc()
        if outcome != "unavailable":
            log.warning("acknowledgement refused", outcome=outcome, reason=reason)
        return status, {"outcome": outcome, "reason": reason}


class _Handler(JsonHandler):
    server_of: AckServer

    def do_POST(self) -> None:
        if self.path != PATH:
            self.send_json(404, {"outcome": "not_found", "reason": f"POST {PATH}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.send_json(413, {"outcome": "invalid", "reason": f"at most {MAX_BODY_BYTES} bytes"})
            return
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, answer = self.server_of.handle(headers, body)
        self.send_json(status, answer)

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self.send_metrics(self.server_of.registry)
        elif self.path in ("/healthz", "/readyz"):
            self.send_json(200, {"status": "ok"})
        else:
            self.send_json(404, {"outcome": "not_found", "reason": f"POST {PATH}, GET /metrics, /healthz"})
