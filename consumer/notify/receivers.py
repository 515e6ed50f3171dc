"""Each receiver's request for an alert event, the way that receiver expects it. No I/O.

- Alertmanager (`POST /api/v2/alerts`) keeps an alert active only while its client re-sends it:
  an alert is posted with `endsAt` a few re-send intervals ahead (as Prometheus does) and
  re-posted while the incident is open (`consumer/notify/incidents.py`), then posted once
  with `endsAt` = now when it resolves. One incident is one alert: the label set (the
  fingerprint) is the incident's; a change of severity ends the old label set.
- PagerDuty Events API v2: `dedup_key` = incident key; `trigger` and `update` trigger (an update
  re-triggers with the new summary), `resolve` resolves.
- A generic webhook: the event as published, `Idempotency-Key` = event id, and an HMAC-SHA256
  signature over the timestamp and the body, so a receiver can verify it and refuse replays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from consumer.notify.events import AlertEvent
from interpretation.alerts import Action, Severity
from interpretation.lab_result import Frozen

ALERTNAME = "InfliximabTDM"
# PagerDuty's severities; a `high` page is PagerDuty's `error`, a `low` (review) one `info`.
PAGERDUTY_SEVERITY = {Severity.CRITICAL: "critical", Severity.HIGH: "error", Severity.LOW: "info"}
PAGERDUTY_SUMMARY_MAX = 1024  # characters, Events API v2
SIGNATURE_HEADER = "X-TDM-Signature"
TIMESTAMP_HEADER = "X-TDM-Timestamp"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    receiver: str
    url: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class OpenIncident(Frozen):
    """What Alertmanager is told about an open incident, re-sent until it resolves."""

    incident_key: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def opened(event: AlertEvent, previous: OpenIncident | None, now: datetime) -> OpenIncident:
    """The incident as Alertmanager shows it after a trigger or update."""
    annotations = {"summary": event.summary}
    if event.recommendation:
        annotations["recommendation"] = event.recommendation
    return OpenIncident(
        incident_key=event.incident_key,
        labels={
            "alertname": ALERTNAME,
            "incident": event.incident_key,
            "severity": event.level.value,
            "category": event.category,
            "service": "tdm-alerts",
        },
        annotations={**annotations, "event_id": event.event_id},
        starts_at=previous.starts_at if previous is not None else now,
    )


@dataclass(frozen=True, slots=True)
class Alertmanager:
    url: str  # the API root, e.g. http://alertmanager:9093
    resend_s: float
    generator_url: str | None = None
    name: str = "alertmanager"

    def post(self, active: list[OpenIncident], ended: list[OpenIncident], now: datetime) -> HttpRequest:
        """One request for active incidents (ending a few re-sends ahead) and ended ones (now)."""
        until = now + timedelta(seconds=self.resend_s * 4)
        alerts = [self._alert(i, until) for i in active] + [self._alert(i, now) for i in ended]
        body = json.dumps(alerts, separators=(",", ":")).encode()
        return HttpRequest(
            self.name, self.url.rstrip("/") + "/api/v2/alerts", body, {"Content-Type": "application/json"}
        )

    def _alert(self, incident: OpenIncident, ends: datetime) -> dict[str, object]:
        alert: dict[str, object] = {
            "labels": incident.labels,
            "annotations": incident.annotations,
            "startsAt": _iso(incident.starts_at),
            "endsAt": _iso(ends),
        }
        if self.generator_url:
            alert["generatorURL"] = self.generator_url
        return alert


@dataclass(frozen=True, slots=True)
class PagerDuty:
    url: str
    routing_key: str = field(repr=False)
    name: str = "pagerduty"

    def event(self, event: AlertEvent) -> HttpRequest:
        action = "resolve" if event.act is Action.RESOLVE else "trigger"
        body: dict[str, object] = {
            "routing_key": self.routing_key,
            "event_action": action,
            "dedup_key": event.incident_key,
        }
        if action == "trigger":
            payload: dict[str, object] = {
                "summary": event.summary[:PAGERDUTY_SUMMARY_MAX],
                "source": "tdm-alerts",
                "severity": PAGERDUTY_SEVERITY[event.level],
                "group": event.category,
                # What a clinician needs to find the result, without the patient's identifier:
                # PagerDuty is a third party, and the accession leads to the patient inside the
                # hospital's own systems.
                "custom_details": event.details(),
            }
            if event.analyte:
                payload["component"] = event.analyte
            if event.finding:
                payload["class"] = event.finding
            body["payload"] = payload
        return HttpRequest(
            self.name,
            self.url,
            json.dumps(body, separators=(",", ":")).encode(),
            {"Content-Type": "application/json"},
        )


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    secret: bytes = field(repr=False)
    name: str = "webhook"

    def event(self, event_bytes: bytes, event: AlertEvent, now: datetime) -> HttpRequest:
        timestamp = str(int(now.timestamp()))
        return HttpRequest(
            self.name,
            self.url,
            event_bytes,
            {
                "Content-Type": "application/json",
                "Idempotency-Key": event.event_id,
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: "v1=" + sign(self.secret, timestamp, event_bytes),
            },
        )


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over `timestamp.body`, hex: what a receiver recomputes to verify a request."""
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
