"""`tdm-alerts cds-hooks`: the second touch, when the chart is opened or an infusion is ordered.

A CDS Hooks 2.0 service (https://cds-hooks.hl7.org): `GET /cds-services` (discovery), `POST
/cds-services/tdm-alerts-patient-view` and `/cds-services/tdm-alerts-order-sign` (a card per
open incident of the patient; on order-sign only when a draft order is for infliximab), `POST
/cds-services/{id}/feedback` (a card accepted or overridden, recorded as an acknowledgement on
TDM_ACK_TOPIC and counted). Also `/metrics` and `/healthz`.

The open incidents come from Kafka, not a database of its own: a reader replays the alert topic
from its beginning into memory (`OpenIncidents`: trigger and update open, resolve closes) and
follows it; `/healthz` answers 503 until the replay reached the end offsets it saw at start.
The patient is found by the identifier the lab feed used: in the prefetched Patient's
identifiers (system TDM_FHIR_PATIENT_SYSTEM), else the request's `context.patientId`. A hook or
feedback request must carry the EHR's signed JWT (`consumer/cds_auth.py`): the cards carry
patient data.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

from consumer.cds_auth import TokenCheck, Unauthorized
from consumer.clients.seam import ClientError, Partition, Producer, Reader
from consumer.http_endpoint import Endpoint, JsonHandler
from interpretation.acknowledgement import Acknowledgement, read_acknowledgement
from interpretation.recognition import mentions_infliximab
from interpretation.ruleset import Recognition

log = structlog.get_logger("tdm_alerts.cds_hooks")

PATIENT_VIEW = "tdm-alerts-patient-view"
ORDER_SIGN = "tdm-alerts-order-sign"
SERVICES = {
    PATIENT_VIEW: {
        "hook": "patient-view",
        "id": PATIENT_VIEW,
        "title": "Infliximab TDM: open findings",
        "description": "A card for each open infliximab drug-level or antibody finding of the patient, "
        "with the forecast's least change when there is one.",
        "prefetch": {"patient": "Patient/{{context.patientId}}"},
    },
    ORDER_SIGN: {
        "hook": "order-sign",
        "id": ORDER_SIGN,
        "title": "Infliximab TDM: before signing an infliximab order",
        "description": "When a draft order is for infliximab, the patient's open TDM findings.",
        "prefetch": {"patient": "Patient/{{context.patientId}}"},
    },
}
INDICATOR = {"critical": "critical", "high": "warning", "low": "info"}
SUMMARY_CHARS = 140  # a card's summary, by the specification
MAX_BODY_BYTES = 1 << 20
# Why a clinician overrode a card: the decision it puts on record.
OVERRIDE_REASONS = (
    ("no_change", "Level acceptable for this patient: no change"),
    ("repeat_level", "Repeat the level first"),
    ("switched", "Switching biologic"),
    ("other", "Other"),
)
_CARD_NAMESPACE = uuid.UUID("0b7f6c52-7e0e-4a43-8f1d-5d0a4f0c2c9e")


@dataclass
class OpenIncident:
    patient_id: str
    incident_key: str
    event_id: str
    severity: str
    summary: str
    recommendation: str | None
    least_change: str | None  # the forecast's least change, as a sentence


@dataclass
class OpenIncidents:
    """The open incidents by patient, as the alert topic's events leave them."""

    by_patient: dict[str, dict[str, OpenIncident]] = field(default_factory=dict)
    by_card: dict[str, OpenIncident] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def apply(self, event: Mapping[str, Any]) -> None:
        patient, key = event.get("patient_id"), event.get("incident_key")
        if not isinstance(patient, str) or not isinstance(key, str):
            return
        with self._lock:
            held = self.by_patient.setdefault(patient, {})
            if (gone := held.pop(key, None)) is not None:
                self.by_card.pop(card_id(gone), None)
            if event.get("action") != "resolve":
                incident = OpenIncident(
                    patient,
                    key,
                    str(event.get("event_id", "")),
                    str(event.get("severity", "high")),
                    str(event.get("summary", "")),
                    event.get("recommendation"),
                    _least_change(event.get("forecast")),
                )
                held[key] = incident
                self.by_card[card_id(incident)] = incident
            if not held:
                del self.by_patient[patient]

    def of(self, patient_id: str) -> list[OpenIncident]:
        with self._lock:
            return list(self.by_patient.get(patient_id, {}).values())

    def card(self, card: str) -> OpenIncident | None:
        with self._lock:
            return self.by_card.get(card)


def _least_change(forecast: object) -> str | None:
    if not isinstance(forecast, dict) or forecast.get("status") != "forecast":
        return None
    for regimen in forecast.get("regimens") or ():
        if isinstance(regimen, dict) and regimen.get("least_change"):
            chance = round(float(regimen.get("probability_at_target", 0)) * 100)
            return (
                f"{regimen.get('mg_per_kg')} mg/kg every {regimen.get('every_weeks')} weeks "
                f"(forecast trough {regimen.get('trough_ug_per_ml')} ug/mL, {chance}% likely at target)"
            )
    return None


def card_id(incident: OpenIncident) -> str:
    """A card is one event of one incident: a newer event is a new card."""
    return str(uuid.uuid5(_CARD_NAMESPACE, f"{incident.incident_key}/{incident.event_id}"))


def cards(incidents: Iterable[OpenIncident]) -> list[dict[str, Any]]:
    """The CDS Hooks cards for a patient's open incidents, most severe first."""
    order = {"critical": 0, "high": 1, "low": 2}
    found = []
    for incident in sorted(incidents, key=lambda i: (order.get(i.severity, 1), i.incident_key)):
        summary = incident.summary if len(incident.summary) <= SUMMARY_CHARS else incident.summary[:139] + "…"
        card: dict[str, Any] = {
            "uuid": card_id(incident),
            "summary": summary,
            "detail": "\n\n".join(t for t in (incident.summary, incident.recommendation) if t),
            "indicator": INDICATOR.get(incident.severity, "warning"),
            "source": {"label": "tdm-alerts (infliximab therapeutic drug monitoring)"},
            "overrideReasons": [
                {"code": code, "system": "urn:tdm-alerts:override-reason", "display": text}
                for code, text in OVERRIDE_REASONS
            ],
        }
        if incident.least_change:
            card["suggestions"] = [
                {
                    "label": f"Least change: {incident.least_change}",
                    "uuid": str(uuid.uuid5(_CARD_NAMESPACE, card_id(incident) + "/least-change")),
                }
            ]
            card["selectionBehavior"] = "at-most-one"
        found.append(card)
    return found


def patient_of(request: Mapping[str, Any], patient_system: str) -> str | None:
    """The lab feed's identifier of the request's patient: from the prefetched Patient (its
    identifier of `patient_system`), else the EHR's own patient id."""
    prefetch = request.get("prefetch")
    patient = prefetch.get("patient") if isinstance(prefetch, dict) else None
    if isinstance(patient, dict):
        for identifier in patient.get("identifier") or ():
            if isinstance(identifier, dict) and identifier.get("system") == patient_system:
                value = identifier.get("value")
                if isinstance(value, str) and value:
                    return value
    context = request.get("context")
    found = context.get("patientId") if isinstance(context, dict) else None
    return found if isinstance(found, str) and found else None


def orders_infliximab(request: Mapping[str, Any], recognition: Recognition) -> bool:
    """Whether an order-sign request's draft orders hold an infliximab medication order."""
    context = request.get("context")
    drafts = context.get("draftOrders") if isinstance(context, dict) else None
    entries = drafts.get("entry") if isinstance(drafts, dict) else None
    for entry in entries or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        concept = resource.get("medicationCodeableConcept") or {}
        texts = [concept.get("text")] + [
            c.get("display") for c in concept.get("coding") or () if isinstance(c, dict)
        ]
        if any(isinstance(t, str) and mentions_infliximab("", t, recognition) for t in texts):
            return True
    return False


def feedback_acknowledgements(
    body: Mapping[str, Any], incidents: OpenIncidents, now: float
) -> list[tuple[str, Acknowledgement]]:
    """The acknowledgements a feedback request puts on record, with their outcome (accepted,
    overridden): for cards of incidents still open; ValueError for one that cannot be read."""
    found = []
    for item in body.get("feedback") or ():
        if not isinstance(item, dict) or not isinstance(item.get("card"), str):
            continue
        incident = incidents.card(item["card"])
        if incident is None:
            continue
        outcome = item.get("outcome")
        if outcome == "accepted":
            decision = "dose_changed" if item.get("acceptedSuggestions") else "other"
        elif outcome == "overridden":
            reason = (item.get("overrideReason") or {}).get("reason") or {}
            code = reason.get("code") if isinstance(reason, dict) else None
            decision = code if code in {c for c, _ in OVERRIDE_REASONS} else "other"
        else:
            continue
        at = item.get("outcomeTimestamp") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        digest = hashlib.sha256(f"{item['card']}/{outcome}/{at}".encode()).hexdigest()[:32]
        ack = read_acknowledgement(
            {
                "ack_id": digest,
                "incident_key": incident.incident_key,
                "patient_id": incident.patient_id,
                "decision": decision,
                "by": "ehr-user",  # CDS Hooks names the user by its FHIR id: not a role, never kept
                "at": at,
                "via": "cds-hooks",
            }
        )
        found.append((str(outcome), ack))
    return found


class CdsHooksServer(Endpoint):
    def __init__(
        self,
        host: str,
        port: int,
        *,
        incidents: OpenIncidents,
        recognition: Recognition,
        patient_system: str,
        ack_topic: str | None,
        producer: Producer | None,
        auth: TokenCheck | None,
        ready: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.auth = auth  # None: every caller is trusted (TDM_CDS_HOOKS_ALLOW_UNAUTHENTICATED)
        self.incidents = incidents
        self.recognition = recognition
        self.patient_system = patient_system
        self.ack_topic = ack_topic
        self.producer = producer
        self.ready = ready
        self.clock = clock
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tdm_cds_requests",
            "CDS Hooks requests, by service and outcome.",
            ["service", "outcome"],
            registry=self.registry,
        )
        self.cards_shown = Counter(
            "tdm_cds_cards", "Cards returned, by indicator.", ["indicator"], registry=self.registry
        )
        self.feedback = Counter(
            "tdm_cds_feedback",
            "Card feedback, by outcome (accepted, overridden).",
            ["outcome"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "tdm_cds_request_seconds",
            "Time to answer a hook.",
            ["service"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self._lock = threading.Lock()
        super().__init__(host, port, _Handler)

    def hook(self, service: str, request: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        began = time.perf_counter()
        try:
            if request.get("hook") != SERVICES[service]["hook"]:
                self.requests.labels(service, "invalid").inc()
                return 400, {"error": f"this service answers the {SERVICES[service]['hook']} hook"}
            patient = patient_of(request, self.patient_system)
            if patient is None:
                self.requests.labels(service, "invalid").inc()
                return 400, {"error": "no patient: context.patientId or a prefetched Patient is required"}
            if service == ORDER_SIGN and not orders_infliximab(request, self.recognition):
                self.requests.labels(service, "not_infliximab").inc()
                return 200, {"cards": []}
            found = cards(self.incidents.of(patient))
            for card in found:
                self.cards_shown.labels(card["indicator"]).inc()
            self.requests.labels(service, "cards" if found else "none").inc()
            return 200, {"cards": found}
        finally:
            self.seconds.labels(service).observe(time.perf_counter() - began)

    def feedback_for(self, service: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            found = feedback_acknowledgements(body, self.incidents, self.clock())
        except ValueError as err:
            return 400, {"error": str(err)[:500]}
        if found and self.ack_topic and self.producer is not None:
            try:
                with self._lock:
                    for _, ack in found:
                        value = ack.model_dump_json().encode()
                        self.producer.send(self.ack_topic, ack.patient_id.encode(), value, [])
                    self.producer.flush(10)
            except ClientError as err:
                log.warning("card feedback not written; the EHR should retry", error=err.name)
                return 503, {"error": "Kafka did not take it; retry"}
        for outcome, _ in found:
            self.feedback.labels(outcome).inc()
        log.info("card feedback", service=service, recorded=len(found))
        return 200, {}


class _Handler(JsonHandler):
    server_of: CdsHooksServer

    def do_GET(self) -> None:
        if self.path == "/cds-services":
            self._send(200, {"services": list(SERVICES.values())})
        elif self.path == "/metrics":
            self.send_metrics(self.server_of.registry)
        elif self.path == "/healthz":
            ready = self.server_of.ready()
            self._send(200 if ready else 503, {"ready": ready})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        parts = self.path.strip("/").split("/")
        if len(parts) < 2 or parts[0] != "cds-services" or parts[1] not in SERVICES:
            self._send(404, {"error": "no such service"})
            return
        server = self.server_of
        if server.auth is not None:  # before the body is read: nothing of a stranger's is parsed
            try:
                server.auth.check(self.headers.get("Authorization"), self.path)
            except Unauthorized as err:
                server.requests.labels(parts[1], "unauthorized").inc()
                log.warning("cds hooks request refused", service=parts[1], reason=str(err))
                self._send(401, {"error": str(err)}, {"WWW-Authenticate": "Bearer"})
                return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._send(413, {"error": f"at most {MAX_BODY_BYTES} bytes"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, UnicodeDecodeError):
            self._send(400, {"error": "the body is not JSON"})
            return
        if not isinstance(body, dict):
            self._send(400, {"error": "the body is not a JSON object"})
            return
        if len(parts) == 3 and parts[2] == "feedback":
            self._send(*self.server_of.feedback_for(parts[1], body))
        elif len(parts) == 2:
            self._send(*self.server_of.hook(parts[1], body))
        else:
            self._send(404, {"error": "no such service"})

    def _send(self, status: int, answer: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        # CDS clients are often browser apps of the EHR.
        self.send_json(status, answer, {"Access-Control-Allow-Origin": "*", **(headers or {})})


def follow_alerts(
    reader: Reader, topic: str, incidents: OpenIncidents, caught_up: threading.Event, stop: threading.Event
) -> None:
    """Replay the alert topic from its beginning into `incidents`, then follow it until `stop`;
    `caught_up` is set once the end offsets seen at the start are reached."""
    partitions = [Partition(topic, p) for p in reader.partitions_for(topic) or []]
    reader.assign(partitions)
    for tp in partitions:
        reader.seek_to_beginning(tp)
    ends = reader.end_offsets(partitions)
    waiting = {tp for tp in partitions if ends.get(tp, 0) > 0}
    if not waiting:
        caught_up.set()
    while not stop.is_set():
        for records in reader.poll(200, 5000).values():
            for record in records:
                try:
                    event = json.loads(record.value or b"")
                except ValueError:
                    continue  # the notifier dead-letters what is not an event; here it is passed over
                if isinstance(event, dict):
                    incidents.apply(event)
        if waiting:
            waiting = {tp for tp in waiting if reader.position(tp) < ends[tp]}
            if not waiting:
                caught_up.set()
                log.info("open incidents replayed from the alert topic", patients=len(incidents.by_patient))
