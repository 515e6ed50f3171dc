"""The notifier's stage and topology: each alert event delivered to the receivers routed for it.

At least once to every receiver: the event's offset is committed only after every routed
receiver accepted it, or it was dead-lettered (refused for good, or still failing when the
retry budget ran out). Events of one incident share a partition (alerts are keyed by patient),
so they are delivered in order. While a receiver fails transiently, the event's partition waits
(NotYet) and the others go on; a receiver that already accepted the event is not asked again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import structlog
from pydantic import ValidationError

from consumer.clients.seam import Client, GroupConsumer, Partition, Record
from consumer.dead_letters import DeadLetter, Reason, Stage
from consumer.loop.waiting import NotYet
from consumer.notify.incidents import OpenIncidents
from consumer.notify.metrics import NotifyMetrics
from consumer.notify.receivers import Alertmanager, OpenIncident, PagerDuty, Webhook, opened
from consumer.notify.sending import Failing, Sender, Undelivered
from consumer.outputs import Outputs
from consumer.pipeline import Outcome, Processed
from consumer.settings import Route, Settings
from interpretation.alerts import Action, Alert

log = structlog.get_logger("tdm_alerts.notify")


class Delivered(NamedTuple):
    """What became of one alert event; always committed promptly (the receivers have it)."""

    outcome: str  # delivered, undelivered (dead-lettered for a receiver), unreadable, unrouted
    urgent: bool = True


@dataclass(frozen=True)
class Receivers:
    alertmanager: Alertmanager | None
    pagerduty: PagerDuty | None
    webhook: Webhook | None
    routes: Mapping[str, Route]

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
        made = cls(alertmanager, pagerduty, webhook, {str(k): v for k, v in s.notify_routes.items()})
        configured = made.names()
        if not configured:
            raise ValueError(
                "no receiver: set TDM_NOTIFY_ALERTMANAGER_URL, TDM_NOTIFY_PAGERDUTY_ROUTING_KEY_FILE "
                "or TDM_NOTIFY_WEBHOOK_URL"
            )
        if stray := sorted(set(made.routes) - set(configured)):
            raise ValueError(f"TDM_NOTIFY_ROUTES names {', '.join(stray)}, which is not configured")
        return made

    def names(self) -> list[str]:
        return [r.name for r in (self.alertmanager, self.pagerduty, self.webhook) if r is not None]

    def for_event(self, event: Alert) -> list[str]:
        every = Route()
        return [n for n in self.names() if self.routes.get(n, every).takes(event.severity, event.category)]


@dataclass
class Pending:
    """An event not every routed receiver has taken yet: its partition waits on it."""

    offset: int
    timestamp_ms: int | None
    done: set[str] = field(default_factory=set)  # accepted, or dead-lettered for that receiver
    failing: dict[str, Failing] = field(default_factory=dict)
    outcome: str = "delivered"


class DeliveryStage:
    def __init__(
        self,
        receivers: Receivers,
        sender: Sender,
        incidents: OpenIncidents,
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
        self.pending: dict[Partition, Pending] = {}

    def process(self, record: Record) -> Delivered:
        try:
            event = Alert.model_validate_json(record.value or b"")
        except ValidationError as err:
            self._dead(
                record,
                DeadLetter(Reason.INVALID, Stage.DECODE, f"not an alert event ({err.error_count()} errors)"),
            )
            return Delivered("unreadable")
        routed = self.receivers.for_event(event)
        if not routed:
            return Delivered("unrouted")
        tp = Partition(record.topic, record.partition)
        pending = self.pending.get(tp)
        if pending is None or pending.offset != record.offset:
            pending = Pending(record.offset, record.timestamp_ms)
        for name in routed:
            if name in pending.done:
                continue
            try:
                self._deliver(name, event, record, pending.failing.setdefault(name, Failing()))
            except NotYet:
                self.pending[tp] = pending  # asked again when the partition's wait is over
                raise
            except Undelivered as err:
                pending.outcome = "undelivered"
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
            else:
                self.metrics.deliveries.labels(name, "delivered").inc()
                if record.timestamp_ms is not None:
                    self.metrics.delivery_seconds.observe(max(time.time() - record.timestamp_ms / 1000, 0.0))
            pending.done.add(name)
        if self.pending.get(tp) is pending:
            del self.pending[tp]
        return Delivered(pending.outcome)

    def oldest_waiting_s(self) -> float:
        """Age of the oldest event a receiver has not taken yet (0 when none waits)."""
        stamps = [p.timestamp_ms for p in self.pending.values() if p.timestamp_ms is not None]
        return max(time.time() - min(stamps) / 1000, 0.0) if stamps else 0.0

    def _deliver(self, name: str, event: Alert, record: Record, failing: Failing) -> None:
        now = self.clock()
        r = self.receivers
        if name == "alertmanager" and r.alertmanager is not None:
            self._to_alertmanager(r.alertmanager, event, record.partition, failing, now)
        elif name == "pagerduty" and r.pagerduty is not None:
            self.sender.send(r.pagerduty.event(event), failing)
        elif name == "webhook" and r.webhook is not None:
            self.sender.send(r.webhook.event(record.value or b"", event, now), failing)

    def _to_alertmanager(
        self, alertmanager: Alertmanager, event: Alert, partition: int, failing: Failing, now: datetime
    ) -> None:
        """Post the incident's change, and keep the open incidents as the event leaves them.

        They follow the event even when its post is dead-lettered after the retry budget (an
        Alertmanager down that long): the re-sends then show an opened incident as soon as it is
        back, and stop re-sending a resolved one, which Alertmanager ends at the `endsAt` of its
        last post. Only a refusal (4xx) of a trigger or update leaves them as they were: re-sending
        what Alertmanager refuses would fail every interval.
        """
        previous = self.incidents.get(partition, event.incident_key)
        after: OpenIncident | None = None  # resolved
        if event.action is Action.RESOLVE:
            request = alertmanager.post([], [previous or opened(event, None, now)], now)
        else:
            after = opened(event, previous, now)
            # A new severity is a new label set: end the old one, so one incident stays one alert.
            ended = [previous] if previous is not None and previous.labels != after.labels else []
            request = alertmanager.post([after], ended, now)
        try:
            self.sender.send(request, failing)
        except Undelivered as err:
            if not err.permanent or after is None:
                self._keep(partition, event.incident_key, after)
            raise
        self._keep(partition, event.incident_key, after)

    def _keep(self, partition: int, key: str, incident: OpenIncident | None) -> None:
        if incident is None:
            self.incidents.close(partition, key)
        else:
            self.incidents.put(partition, incident)
        self.metrics.open_incidents.set(self.incidents.count())

    def _dead(self, record: Record, why: DeadLetter) -> None:
        self.dead_letters.send(record, Processed(Outcome.DEAD_LETTERED, dead_letter=why))


class DeliveryTopology:
    """The alert topic's one stage, the open incidents' restore, and the re-sends to Alertmanager."""

    def __init__(self, stage: DeliveryStage, client: Client, metrics: NotifyMetrics, resend_s: float) -> None:
        self.stage = stage
        self.client = client
        self.metrics = metrics
        self.resend_s = resend_s
        self.resend_at = 0.0  # monotonic
        self.resend_failing = Failing()

    def stage_for(self, topic: str) -> DeliveryStage:
        return self.stage

    def assigned(self, partitions: Collection[Partition], consumer: GroupConsumer) -> None:
        # Before anything of these partitions is delivered: their open incidents, for the re-sends.
        # They are few (open incidents only, compacted), so the read is short (kafka-python K6).
        reader = self.client.reader("open-incidents")
        try:
            self.stage.incidents.restore([tp.partition for tp in partitions], reader)
        finally:
            reader.close()
        self.metrics.open_incidents.set(self.stage.incidents.count())
        self.resend_at = 0.0  # tell Alertmanager at once: it may not have heard for a while

    def revoked(self, partitions: Collection[Partition]) -> None:
        self.stage.incidents.revoke([tp.partition for tp in partitions])
        for tp in partitions:
            self.stage.pending.pop(tp, None)

    def chores_due(self) -> bool:
        return (
            self.stage.receivers.alertmanager is not None
            and time.monotonic() >= self.resend_at
            and self.stage.incidents.count() > 0
        )

    def chores(self, consumer: GroupConsumer) -> None:
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
        pass

    def close(self) -> None:
        self.stage.sender.client.close()
