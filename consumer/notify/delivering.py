"""The notifier's stage and topology: each alert event delivered to the receivers routed for it.

At least once to every receiver: the event's offset is committed only after every routed
receiver accepted it, or it was dead-lettered (refused for good, or still failing when the
retry budget ran out). Events of one incident share a partition (alerts are keyed by patient),
so they are delivered in order. While a receiver fails transiently the event waits in that
receiver's lane for its incident (`consumer/notify/lanes.py`), retried on the loop's clock; the
other receivers and incidents go on, and a receiver that already has an event is not asked again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import structlog

from consumer.clients.seam import Client, GroupConsumer, Partition, Record
from consumer.dead_letters import ORIGIN_HEADER, DeadLetter, Reason, Stage
from consumer.loop.waiting import NotYet
from consumer.notify.events import AlertEvent, Unreadable, read_event
from consumer.notify.fhir import options_from
from consumer.notify.fhir_auth import BackendServices, TokenFile, TokenSource
from consumer.notify.hl7v2 import options_from as hl7_options_from
from consumer.notify.incidents import Incidents
from consumer.notify.lanes import MAX_WAITING_EVENTS, Entry, Lanes
from consumer.notify.metrics import NO_RECEIVER, NotifyMetrics
from consumer.notify.notifiers import (
    AlertmanagerNotifier,
    FhirNotifier,
    FhirServer,
    Hl7v2,
    Hl7v2Notifier,
    Notifier,
    PagerDutyNotifier,
    WebhookNotifier,
)
from consumer.notify.receivers import Alertmanager, OpenIncident, PagerDuty, Webhook
from consumer.notify.sending import WAIT_MIN_S, Failing, Sender, Undelivered
from consumer.outputs import Outputs
from consumer.pipeline import Outcome, Processed
from consumer.settings import Route, Settings

log = structlog.get_logger("tdm_alerts.notify")


class Delivered(NamedTuple):
    """What became of one alert event; always committed promptly (the receivers have it)."""

    # delivered; waiting (a receiver failing, retried); undelivered (dead-lettered for a
    # receiver); superseded (every receiver had it or later); unreadable; unrouted
    outcome: str
    urgent: bool = True


@dataclass(frozen=True)
class Receivers:
    alertmanager: Alertmanager | None
    pagerduty: PagerDuty | None
    webhook: Webhook | None
    routes: Mapping[str, Route]
    hl7v2: Hl7v2 | None = None
    fhir: FhirServer | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> Receivers:
        """The configured receivers; ValueError names the variable that is missing or wrong."""
        pagerduty = webhook = None
        if s.notify_pagerduty_routing_key is not None:
            pagerduty = PagerDuty(s.notify_pagerduty_url, s.notify_pagerduty_routing_key.get_secret_value())
        if s.notify_webhook_url is not None:
            if s.notify_webhook_secret is None:
                raise ValueError(
                    "TDM_NOTIFY_WEBHOOK_URL needs TDM_NOTIFY_WEBHOOK_SECRET_FILE (the signing secret)"
                )
            webhook = Webhook(s.notify_webhook_url, s.notify_webhook_secret.get_secret_value().encode())
        alertmanager = None
        if s.notify_alertmanager_url is not None:
            alertmanager = Alertmanager(s.notify_alertmanager_url, s.notify_resend_s, s.notify_generator_url)
        hl7v2 = None
        if s.notify_hl7_host is not None:
            names = hl7_options_from(s)
            hl7v2 = Hl7v2(s.notify_hl7_host, s.notify_hl7_port, s.notify_timeout_s, names)
        routes = {str(k): v for k, v in s.notify_routes.items()}
        fhir = None
        if s.notify_fhir_url is not None:
            fhir = FhirServer(s.notify_fhir_url, _fhir_tokens(s), options_from(s))
        made = cls(alertmanager, pagerduty, webhook, routes, hl7v2, fhir)
        configured = made.names()
        if not configured:
            raise ValueError(
                "no receiver: set TDM_NOTIFY_ALERTMANAGER_URL, TDM_NOTIFY_PAGERDUTY_ROUTING_KEY_FILE, "
                "TDM_NOTIFY_WEBHOOK_URL, TDM_NOTIFY_HL7_HOST or TDM_NOTIFY_FHIR_URL"
            )
        if stray := sorted(set(made.routes) - set(configured)):
            raise ValueError(f"TDM_NOTIFY_ROUTES names {', '.join(stray)}, which is not configured")
        return made

    def names(self) -> list[str]:
        """The configured receivers' names (what routes and the delivery stage's notifiers use)."""
        every = (self.alertmanager, self.pagerduty, self.webhook, self.hl7v2, self.fhir)
        return [r.name for r in every if r is not None]

    def for_event(self, event: AlertEvent) -> list[str]:
        every = Route()
        return [n for n in self.names() if self.routes.get(n, every).takes(event.level, event.kind)]


def _fhir_tokens(s: Settings) -> TokenSource | None:
    """The FHIR receiver's credentials: a token file, SMART Backend Services, or none."""
    if s.notify_fhir_token_file is not None:
        return TokenFile(s.notify_fhir_token_file)
    if s.notify_fhir_client_id is None:
        return None
    url, key_file, key_id = s.notify_fhir_token_url, s.notify_fhir_key_file, s.notify_fhir_key_id
    if url is None or key_file is None or key_id is None:
        raise ValueError(
            "TDM_NOTIFY_FHIR_CLIENT_ID (SMART Backend Services) needs TDM_NOTIFY_FHIR_TOKEN_URL, "
            "TDM_NOTIFY_FHIR_KEY_FILE and TDM_NOTIFY_FHIR_KEY_ID"
        )
    try:
        key = key_file.read_bytes()
    except OSError as err:
        raise ValueError(f"TDM_NOTIFY_FHIR_KEY_FILE cannot be read ({type(err).__name__})") from None
    return BackendServices(
        url, s.notify_fhir_client_id, key, key_id, s.notify_fhir_scope, algorithm=s.notify_fhir_key_algorithm
    )


def place_of(record: Record) -> int:
    """The event's place in its incident's order: its offset, or where a replay first found it."""
    origin = dict(record.headers).get(ORIGIN_HEADER)
    if origin:
        where, _, offset = origin.decode(errors="replace").rpartition("/")
        topic, _, partition = where.rpartition("/")
        if topic == record.topic and partition == str(record.partition) and offset.isdigit():
            return int(offset)
    return record.offset


class DeliveryStage:
    def __init__(
        self,
        receivers: Receivers,
        sender: Sender,
        incidents: Incidents,
        *,
        dead_letters: Outputs,
        metrics: NotifyMetrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.receivers = receivers
        self.sender = sender
        self.incidents = incidents
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.clock = clock
        self.lanes = Lanes()
        self.notifiers = self._notifiers()

    def _notifiers(self) -> dict[str, Notifier]:
        """Each configured receiver behind the one interface the stage delivers through."""
        r, sender = self.receivers, self.sender
        found: list[Notifier] = []
        if r.alertmanager is not None:
            found.append(AlertmanagerNotifier(r.alertmanager, sender, self.incidents, self._show))
        if r.pagerduty is not None:
            found.append(PagerDutyNotifier(r.pagerduty, sender))
        if r.webhook is not None:
            found.append(WebhookNotifier(r.webhook, sender))
        if r.hl7v2 is not None:
            found.append(Hl7v2Notifier(r.hl7v2, sender))
        if r.fhir is not None:
            found.append(FhirNotifier(r.fhir, sender, sender.client))
        return {n.name: n for n in found}

    def process(self, record: Record) -> Delivered:
        try:
            event = read_event(record.value)
        except Unreadable as err:
            self.metrics.deliveries.labels(NO_RECEIVER, "unreadable").inc()
            log.error(
                "alert event unreadable; dead-lettered",
                partition=f"{record.topic}/{record.partition}",
                offset=record.offset,
                why=err.why,
            )
            self._dead(record, DeadLetter(Reason.INVALID, Stage.DECODE, err.why))
            self.lanes.read(record)
            return Delivered("unreadable")
        if not event.known:
            log.warning(
                "alert event from a newer version; delivered with this version's fallbacks",
                event_id=event.event_id,
                alert_schema=event.alert_schema[:64],
                action=event.act.value,
                severity=event.level.value,
                known_category=event.kind is not None,
            )
        routed = self.receivers.for_event(event)
        if not routed:
            self.lanes.read(record)
            return Delivered("unrouted")
        if self.lanes.size >= MAX_WAITING_EVENTS:
            # Memory stays bounded: this partition waits, its events stay on the topic.
            due = self.lanes.next_due() or self.sender.clock()
            raise NotYet(max(due - self.sender.clock(), WAIT_MIN_S), f"{self.lanes.size} events wait")
        tp = Partition(record.topic, record.partition)
        place = place_of(record)
        outcomes = set()
        known = self.incidents.get(record.partition, event.incident_key)  # before this event's deliveries
        for name in routed:
            if known is not None and known.has(name, place):
                outcomes.add(self._superseded(name, event, place))
            elif self.lanes.holds(name, record):
                outcomes.add("waiting")  # read again after a rewind: it already waits
            elif self.lanes.busy(name, tp, event.incident_key):
                self.lanes.append(name, Entry(record, event, place))  # behind its incident's earlier events
                outcomes.add("waiting")
            else:
                entry = Entry(record, event, place)
                outcome = self._attempt(name, entry)
                if outcome == "waiting":
                    self.lanes.append(name, entry)
                outcomes.add(outcome)
        self.lanes.read(record)
        for worst in ("undelivered", "waiting", "delivered"):
            if worst in outcomes:
                return Delivered(worst)
        return Delivered("superseded")

    def retry_due(self) -> bool:
        due = self.lanes.next_due()
        return due is not None and due <= self.sender.clock()

    def retry(self) -> bool:
        """Ask each receiver again for the waiting events whose wait is over, each lane in order;
        True if any event was settled (delivered or dead-lettered)."""
        settled = False
        now = self.sender.clock()
        for key in self.lanes.due(now):
            while (entry := self.lanes.head(key)) is not None and entry.due <= now:
                if self._attempt(key[0], entry) == "waiting":
                    break
                self.lanes.pop(key)
                settled = True
        return settled

    def oldest_waiting_s(self) -> float:
        """Age of the oldest event a receiver has not taken yet (0 when none waits)."""
        stamps = [e.record.timestamp_ms for _, e in self.lanes.entries() if e.record.timestamp_ms is not None]
        return max(time.time() - min(stamps) / 1000, 0.0) if stamps else 0.0

    def waiting_by_receiver(self) -> dict[str, int]:
        return dict(Counter(receiver for receiver, _ in self.lanes.entries()))

    def _attempt(self, name: str, entry: Entry) -> str:
        """One try of one receiver: delivered, undelivered (dead-lettered for it), or waiting."""
        record, event = entry.record, entry.event
        try:
            self._deliver(name, entry)
        except NotYet as later:
            entry.due = self.sender.clock() + later.after_s
            return "waiting"
        except Undelivered as err:
            self.metrics.deliveries.labels(name, "dead_lettered").inc()
            log.error(
                "delivery failed; dead-lettered",
                receiver=name,
                status=err.status,
                reason=err.reason,
                event_id=event.event_id,
                incident_key=event.incident_key,
            )
            self._dead(record, DeadLetter(Reason.UNDELIVERED, Stage.DELIVER, f"{name}: {err.reason}"))
            return "undelivered"
        self.metrics.deliveries.labels(name, "delivered").inc()
        if record.timestamp_ms is not None:
            self.metrics.delivery_seconds.observe(max(time.time() - record.timestamp_ms / 1000, 0.0))
        self.incidents.delivered(record.partition, event.incident_key, name, entry.place, self.clock())
        return "delivered"

    def _superseded(self, name: str, event: AlertEvent, place: int) -> str:
        self.metrics.deliveries.labels(name, "superseded").inc()
        log.info(
            "receiver already has this event or a later one of its incident; not sent again",
            receiver=name,
            event_id=event.event_id,
            incident_key=event.incident_key,
            place=place,
        )
        return "superseded"

    def _deliver(self, name: str, entry: Entry) -> None:
        self.notifiers[name].notify(entry, self.clock())

    def _show(self, partition: int, key: str, incident: OpenIncident | None, now: datetime) -> None:
        self.incidents.shown(partition, key, incident, now)
        self.metrics.open_incidents.set(self.incidents.count())

    def _dead(self, record: Record, why: DeadLetter) -> None:
        self.dead_letters.send(record, Processed(Outcome.DEAD_LETTERED, dead_letter=why))


FORGET_EVERY_S = 3600.0  # resolved incidents past TDM_NOTIFY_INCIDENT_MEMORY_DAYS are dropped hourly


class DeliveryTopology:
    """The alert topic's one stage, the incidents' restore, the retries of waiting events on the
    loop's clock, and the re-sends to Alertmanager."""

    def __init__(self, stage: DeliveryStage, client: Client, metrics: NotifyMetrics, resend_s: float) -> None:
        self.stage = stage
        self.client = client
        self.metrics = metrics
        self.resend_s = resend_s
        self.resend_at = 0.0  # monotonic
        self.resend_failing = Failing()
        self.forget_at = time.monotonic() + FORGET_EVERY_S

    def stage_for(self, topic: str) -> DeliveryStage:
        return self.stage

    def assigned(self, partitions: Collection[Partition], consumer: GroupConsumer) -> None:
        # Before anything of these partitions is delivered: their open incidents, for the re-sends.
        # They are few (open incidents only, compacted), so the read is short (kafka-python K6).
        reader = self.client.reader("open-incidents")
        try:
            self.stage.incidents.restore([tp.partition for tp in partitions], reader, self.stage.clock())
        finally:
            reader.close()
        self.metrics.open_incidents.set(self.stage.incidents.count())
        self.resend_at = 0.0  # tell Alertmanager at once: it may not have heard for a while

    def revoked(self, partitions: Collection[Partition]) -> None:
        self.stage.incidents.revoke([tp.partition for tp in partitions])
        for tp in partitions:
            self.stage.lanes.revoke(tp)  # the next owner reads them again from the committed offset

    def chores_due(self) -> bool:
        return False

    def chores(self, consumer: GroupConsumer) -> None:
        pass

    def _resend_due(self) -> bool:
        return (
            self.stage.receivers.alertmanager is not None
            and time.monotonic() >= self.resend_at
            and self.stage.incidents.count() > 0
        )

    def _resend(self) -> None:
        """Re-send every open incident, so Alertmanager keeps it active (it resolves silence)."""
        self.resend_at = time.monotonic() + self.resend_s
        alertmanager = self.stage.receivers.alertmanager
        if alertmanager is None:
            return
        request = alertmanager.post(self.stage.incidents.all(), [], self.stage.clock())
        try:
            self.stage.sender.send(request, self.resend_failing)
        except NotYet as later:  # sooner than the interval, backing off while it fails
            self.resend_at = time.monotonic() + min(later.after_s, self.resend_s)
            self.metrics.resends.labels("failed").inc()
            return
        except Undelivered as err:
            self.resend_failing = Failing()
            self.metrics.resends.labels("failed").inc()
            log.error(
                "re-send to Alertmanager failed; trying again next interval",
                status=err.status,
                reason=err.reason,
            )
            return
        self.resend_failing = Failing()
        self.metrics.resends.labels("sent").inc()

    def punctuate_due(self) -> bool:
        return self.stage.retry_due() or time.monotonic() >= self.forget_at or self._resend_due()

    def punctuate(self) -> bool:
        """On the loop's clock, inside the open batch: retry the waiting events that are due,
        re-send the open incidents to Alertmanager, forget old resolved incidents."""
        if time.monotonic() >= self.forget_at:
            self.forget_at = time.monotonic() + FORGET_EVERY_S
            self.stage.incidents.forget_old(self.stage.clock())
        settled = self.stage.retry()
        if self._resend_due():
            self._resend()
        return settled

    def offsets(self, read: Mapping[Partition, int]) -> dict[Partition, int]:
        """Each alert partition commits up to its oldest event a receiver has not settled."""
        offsets = dict(read)
        for tp in set(read) | set(self.stage.lanes.read_to):
            floor = self.stage.lanes.floor(tp)
            if floor is not None:
                offsets[tp] = min(offsets.get(tp, floor), floor)
        return offsets

    def admit(
        self, consumer: GroupConsumer, polled: Mapping[Partition, Sequence[Record]]
    ) -> Mapping[Partition, Sequence[Record]]:
        return polled

    def holds(self, partition: Partition) -> bool:
        return False

    def batch_opened(self) -> None:
        pass

    def batch_committed(self, processed: Sequence[tuple[Record, Any]], seconds: float) -> None:
        for record, result in processed:
            self.metrics.messages.labels(record.topic, result.outcome).inc()
        self.metrics.batch_seconds.observe(seconds)
        self.metrics.last_processed.set(time.time())

    def batch_discarded(self) -> None:
        # The batch's records are read again from its first offsets: until they are, what was
        # read says nothing (a lost dead letter must not be committed past).
        self.stage.lanes.read_to.clear()

    def close(self) -> None:
        self.stage.sender.client.close()
