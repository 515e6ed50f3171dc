"""One interface for every receiver: tell it of one event, or say why not.

As Alertmanager's notifiers share `Notify(ctx, alerts) -> (retry, error)`, each receiver here is
a `Notifier`: `notify(entry, now)` returns once the receiver took the event, raises NotYet when
it may take it later (the event waits in its lane, retried on the loop's clock) and Undelivered
when it never will (the event is dead-lettered with the receiver's answer). The delivery stage
(`consumer/notify/delivering.py`) routes, orders and retries; it knows no receiver by name. What
each receiver is sent is built in its own module: `receivers.py` (Alertmanager, PagerDuty, the
webhook), `hl7v2.py` (an ORU^R01 over MLLP), `fhir.py` (a transaction Bundle; `fhir_auth.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import httpx

from consumer.notify.fhir import FhirOptions, transaction
from consumer.notify.fhir_auth import TokenSource
from consumer.notify.hl7v2 import Hl7Options, deliver, outbound
from consumer.notify.incidents import Incidents
from consumer.notify.lanes import Entry
from consumer.notify.receivers import Alertmanager, OpenIncident, PagerDuty, Webhook, opened
from consumer.notify.sending import Sender, Transient, Undelivered
from interpretation.alerts import Action


class Notifier(Protocol):
    @property
    def name(self) -> str:
        """The receiver's name: its routes', metrics' and dead letters' label."""

    def notify(self, entry: Entry, now: datetime) -> None:
        """Returns once the receiver took the event; NotYet: ask again later; Undelivered: never."""


@dataclass(frozen=True, slots=True)
class PagerDutyNotifier:
    pagerduty: PagerDuty
    sender: Sender

    @property
    def name(self) -> str:
        return self.pagerduty.name

    def notify(self, entry: Entry, now: datetime) -> None:
        self.sender.send(self.pagerduty.event(entry.event), entry.failing)


@dataclass(frozen=True, slots=True)
class WebhookNotifier:
    webhook: Webhook
    sender: Sender

    @property
    def name(self) -> str:
        return self.webhook.name

    def notify(self, entry: Entry, now: datetime) -> None:
        self.sender.send(self.webhook.event(entry.record.value or b"", entry.event, now), entry.failing)


@dataclass(frozen=True, slots=True)
class AlertmanagerNotifier:
    alertmanager: Alertmanager
    sender: Sender
    incidents: Incidents
    # The open incidents as the event leaves them (and the gauge that counts them).
    shown: Callable[[int, str, OpenIncident | None, datetime], None]

    @property
    def name(self) -> str:
        return self.alertmanager.name

    def notify(self, entry: Entry, now: datetime) -> None:
        """Post the incident's change, and keep the open incidents as the event leaves them.

        They follow the event even when its post is dead-lettered after the retry budget (an
        Alertmanager down that long): the re-sends then show an opened incident as soon as it is
        back, and stop re-sending a resolved one, which Alertmanager ends at the `endsAt` of its
        last post. Only a refusal (4xx) of a trigger or update leaves them as they were: re-sending
        what Alertmanager refuses would fail every interval.
        """
        event, partition = entry.event, entry.record.partition
        previous = self.incidents.open_incident(partition, event.incident_key)
        after: OpenIncident | None = None  # resolved
        if event.act is Action.RESOLVE:
            request = self.alertmanager.post([], [previous or opened(event, None, now)], now)
        else:
            after = opened(event, previous, now)
            # A new severity is a new label set: end the old one, so one incident stays one alert.
            ended = [previous] if previous is not None and previous.labels != after.labels else []
            request = self.alertmanager.post([after], ended, now)
        try:
            self.sender.send(request, entry.failing)
        except Undelivered as err:
            if not err.permanent or after is None:
                self.shown(partition, event.incident_key, after, now)
            raise
        self.shown(partition, event.incident_key, after, now)


@dataclass(frozen=True, slots=True)
class Hl7v2:
    """An interface engine's MLLP listener and the names the messages carry."""

    host: str
    port: int
    timeout_s: float
    options: Hl7Options
    name: str = "hl7v2"


@dataclass(frozen=True, slots=True)
class Hl7v2Notifier:
    hl7v2: Hl7v2
    sender: Sender

    @property
    def name(self) -> str:
        return self.hl7v2.name

    def notify(self, entry: Entry, now: datetime) -> None:
        r = self.hl7v2
        message = outbound(entry.event, now, r.options)
        self.sender.attempt(
            r.name, entry.failing, lambda: deliver(r.host, r.port, message, r.timeout_s, r.name)
        )


@dataclass(frozen=True, slots=True)
class FhirServer:
    """A FHIR R4 server's base URL, how to prove who we are, and what the Bundles say."""

    base_url: str
    tokens: TokenSource | None  # None: the server asks for no token
    options: FhirOptions
    name: str = "fhir"


@dataclass(frozen=True, slots=True)
class FhirNotifier:
    """Each event as one transaction Bundle posted to the server's base (`consumer/notify/fhir.py`).

    A transaction is applied whole or not at all: 2xx taken; 401 asks for a new token and
    tries again; 429 and 5xx retried; another 4xx refused for good, with the OperationOutcome's
    issue codes (never its text: a server may echo the patient identifier a request named)."""

    server: FhirServer
    sender: Sender
    client: httpx.Client

    @property
    def name(self) -> str:
        return self.server.name

    def notify(self, entry: Entry, now: datetime) -> None:
        body = json.dumps(transaction(entry.event, now, self.server.options)).encode()
        self.sender.attempt(self.name, entry.failing, lambda: self._post(body))

    def _post(self, body: bytes) -> int:
        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
        tokens = self.server.tokens
        if tokens is not None:
            headers["Authorization"] = f"Bearer {tokens.bearer()}"
        try:
            answer = self.client.post(self.server.base_url.rstrip("/"), content=body, headers=headers)
        except httpx.TransportError as err:
            raise Transient(None, type(err).__name__) from err
        status = answer.status_code
        if status == 401 and tokens is not None:
            tokens.refused()
            raise Transient(status, "HTTP 401: the token was refused; a new one is asked for")
        if status == 429 or status >= 500:
            raise Transient(status, f"HTTP {status}")
        if status >= 400:
            raise Undelivered(self.name, status, f"HTTP {status}: {_outcome_codes(answer)}", permanent=True)
        return status


def _outcome_codes(answer: httpx.Response) -> str:
    """An OperationOutcome's issue severities and codes (`error/invalid`), or what it is not."""
    try:
        body = answer.json()
    except ValueError:
        return "no OperationOutcome"
    issues = body.get("issue") if isinstance(body, dict) else None
    codes = [f"{i.get('severity', '?')}/{i.get('code', '?')}" for i in issues or () if isinstance(i, dict)]
    return "OperationOutcome " + ", ".join(codes[:5]) if codes else "no OperationOutcome"
