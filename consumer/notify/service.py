"""`tdm-alerts notify`: alert events from the alert topic to the pager, at least once.

Its own consumer group (`TDM_NOTIFY_GROUP_ID`) on `TDM_ALERT_TOPIC`, read_committed; offsets are
committed after the receivers accepted the batch's events (or their dead letters are written
to `TDM_NOTIFY_DLQ_TOPIC`). The open incidents live in `TDM_NOTIFY_INCIDENTS_TOPIC`.
"""

from __future__ import annotations

from datetime import timedelta

import httpx

from consumer.access import check_topic_access, dead_letter_limit, notifier_needs
from consumer.clients.seam import ClientError, Failure, TopicSpec
from consumer.delivery import AtLeastOnceDelivery
from consumer.fatal import FatalError
from consumer.lifecycle import Built, Lifecycle
from consumer.notify.delivering import DeliveryStage, DeliveryTopology, Receivers
from consumer.notify.incidents import Incidents
from consumer.notify.metrics import NO_RECEIVER, NotifyMetrics
from consumer.notify.sending import Sender
from consumer.outputs import Outputs
from consumer.settings import Settings


class Notifier(Lifecycle):
    def __init__(self, settings: Settings, metrics: NotifyMetrics) -> None:
        # The group is the notifier's own; the rest of the settings (brokers, security) are shared.
        receivers = Receivers.from_settings(settings)  # first: a receiver that cannot work is exit 2
        own = settings.model_copy(update={"group_id": settings.notify_group_id, "delivery": "at_least_once"})
        super().__init__(own, metrics, AtLeastOnceDelivery)
        self.receivers = receivers
        self.notify_metrics = metrics
        for name in receivers.names():  # every series from the first scrape, for rates and rules
            metrics.retries.labels(name)
            for outcome in ("delivered", "dead_lettered", "superseded"):
                metrics.deliveries.labels(name, outcome)
        metrics.deliveries.labels(NO_RECEIVER, "unreadable")
        self.http = httpx.Client(timeout=settings.notify_timeout_s)
        self.stage: DeliveryStage | None = None

    def readiness_detail(self) -> str:
        """Ready, and honest about a receiver that keeps failing: the probe's body says so."""
        stage = self.stage
        waiting = stage.waiting_by_receiver() if stage is not None else {}
        if stage is None or not waiting:
            return super().readiness_detail()
        by_receiver = ", ".join(f"{receiver} {n}" for receiver, n in sorted(waiting.items()))
        return super().readiness_detail() + (
            f"{sum(waiting.values())} alert event(s) waiting on a failing receiver ({by_receiver}); "
            f"oldest undelivered event {stage.oldest_waiting_s():.0f} s old\n"
        )

    def build(self) -> Built:
        s = self.settings
        # Made first if missing (it is the notifier's own), then every topic's ACLs are checked.
        self.backoff(self._ensure_incidents_topic, "admin")
        self.backoff(lambda: check_topic_access(self.client, notifier_needs(s)), "admin")
        limit = self.backoff(
            lambda: dead_letter_limit(s.model_copy(update={"dlq_topic": s.notify_dlq_topic}), self.client),
            "admin",
        )
        sender = Sender(self.http, s.notify_retry_budget_s, self._retried)
        stage = DeliveryStage(
            self.receivers,
            sender,
            Incidents(s.notify_incidents_topic, self.delivery, timedelta(days=s.notify_incident_memory_days)),
            dead_letters=Outputs(self.delivery, s.alert_topic, s.notify_dlq_topic, dead_letter_limit=limit),
            metrics=self.notify_metrics,
        )
        topology = DeliveryTopology(stage, self.client, self.notify_metrics, s.notify_resend_s)
        self.stage = stage
        self.notify_metrics.waiting_partitions.set_function(lambda: len(stage.lanes.partitions()))
        self.notify_metrics.oldest_undelivered.set_function(stage.oldest_waiting_s)
        return Built(topology, [s.alert_topic], None)

    def _retried(self, receiver: str) -> None:
        self.notify_metrics.retries.labels(receiver).inc()

    def _ensure_incidents_topic(self) -> None:
        """Compacted, with as many partitions as the alert topic (partition N holds N's incidents)."""
        s = self.settings
        admin = self.client.admin()
        try:
            found = admin.describe_topics([s.alert_topic, s.notify_incidents_topic])
            alerts, incidents = found[s.alert_topic], found[s.notify_incidents_topic]
            if (
                alerts.failure is Failure.NOT_AUTHORISED_TOPIC
                or incidents.failure is Failure.NOT_AUTHORISED_TOPIC
            ):
                return  # the access check names the ACL to grant
            if alerts.failure is not None:
                raise FatalError(
                    f"alert topic {s.alert_topic} (TDM_ALERT_TOPIC) cannot be read: {alerts.error}"
                )
            if incidents.failure is None:
                if incidents.partitions != alerts.partitions:
                    raise FatalError(
                        f"{s.notify_incidents_topic} has {incidents.partitions} partitions; it needs "
                        f"as many as {s.alert_topic} ({alerts.partitions})"
                    )
                return
            spec = TopicSpec(s.notify_incidents_topic, alerts.partitions, {"cleanup.policy": "compact"})
            admin.create_topics([spec])
            # Retried (with back-off) until the new topic shows in the metadata: the access
            # check that follows would otherwise find it missing (seen in a test).
            if admin.describe_topics([s.notify_incidents_topic])[s.notify_incidents_topic].failure:
                raise ClientError(Failure.TRANSIENT, f"{s.notify_incidents_topic} created; not yet described")
        finally:
            admin.close()
