"""The notifier's metrics: the loop's own (lag, batches, readiness) and its deliveries."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from consumer.metrics import Metrics

NO_RECEIVER = "none"  # the receiver label of an event no receiver was asked about (unreadable)
# From the alert's commit (its record time) to the receiver's acceptance.
_DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class NotifyMetrics(Metrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        r.unregister(self.ruleset)  # the notifier reads no rule set
        self.deliveries = Counter(
            "tdm_notify_deliveries",
            "Alert events by receiver and outcome: delivered; dead_lettered (refused, or out of "
            "retries); superseded (the receiver had it or a later event of its incident); "
            "unreadable (receiver none: not an alert event, dead-lettered).",
            ["receiver", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "tdm_notify_retries",
            "Requests retried after a transient failure, by receiver.",
            ["receiver"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "tdm_notify_delivery_seconds",
            "From an alert event's commit to its acceptance by a receiver.",
            buckets=_DELIVERY_BUCKETS,
            registry=r,
        )
        self.open_incidents = Gauge(
            "tdm_notify_open_incidents",
            "Open incidents re-sent to Alertmanager by this instance.",
            registry=r,
        )
        self.resends = Counter(
            "tdm_notify_resends",
            "Re-sends of every open incident to Alertmanager, by outcome (sent, failed).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("sent", "failed"):  # from the first scrape: a rule watches their increase
            self.resends.labels(outcome)
        self.waiting_partitions = Gauge(
            "tdm_notify_waiting_partitions",
            "Alert partitions with an event a receiver keeps failing (retried with back-off; "
            "the other receivers go on).",
            registry=r,
        )
        self.oldest_undelivered = Gauge(
            "tdm_notify_oldest_undelivered_seconds",
            "Age of the oldest alert event a routed receiver has not accepted yet (0 when none waits).",
            registry=r,
        )
