"""Prometheus metrics and the small HTTP server that exposes them with health probes.

Labels are bounded sets (topic names, outcomes, categories, reasons): never a patient,
an accession or free text.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily

# Per-message work is tens of microseconds to a few milliseconds; batches take longer.
_MESSAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5)
# End to end includes time waiting in the topic: sub-second when keeping up, minutes when behind.
_END_TO_END_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
_BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BatchHistogram:
    """A histogram observed a batch at a time, exposed as prometheus_client's Histogram is.

    prometheus_client's `observe` takes ~2 us (a lock and a search in Python), and four per
    message were ~7% of the loop's time on a feed that is 99% skipped. Here a batch's values
    are binned with the C bisect and added under one lock.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry
    ) -> None:
        self._name, self._documentation = name, documentation
        self._bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self._bounds) + 1)  # the last is +Inf only
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        self.observe_all((value,))

    def observe_all(self, values: Iterable[float]) -> None:
        counts = [0] * len(self._counts)
        total = 0.0
        bounds = self._bounds
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # the first bound >= value: le is inclusive
            total += value
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
            self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, count in zip([*self._bounds, float("inf")], counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        yield HistogramMetricFamily(self._name, self._documentation, buckets=cumulative, sum_value=total)


class Metrics:
    """The service's metrics, registered on one registry (a fresh one per test if wanted)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self._what_became_of_messages(self.registry)
        self._patient_state(self.registry)
        self._timings(self.registry)
        self._the_loop(self.registry)

    def _what_became_of_messages(self, r: CollectorRegistry) -> None:
        self.messages = Counter(
            "tdm_messages_consumed",
            "Messages consumed, by input topic and outcome.",
            ["topic", "outcome"],
            registry=r,
        )
        self.alerts = Counter(
            "tdm_alerts_published",
            "Alerts published, by category and severity.",
            ["category", "severity"],
            registry=r,
        )
        self.reviews = Counter(
            "tdm_review_incidents",
            "Review incidents opened: final infliximab or antibody results that could not be read, "
            "by analyte and reason (a rise in one reason often means a lab changed its format).",
            ["analyte", "reason"],
            registry=r,
        )
        self.forecasts = Counter(
            "tdm_forecast",
            "Next-trough forecasts attached to a level's page, by model and outcome: forecast, or "
            "the refusal's code (not_covered, withheld, internal_error: the forecast failed and "
            "the page went out without it).",
            ["model", "outcome"],
            registry=r,
        )
        self.follow_ups = Counter(
            "tdm_follow_ups",
            "Follow-up events published, by kind and action: trigger when what was expected did "
            "not arrive in time (fired by the service's clock, not a message), resolve when it "
            "arrived later or the incident it followed ended.",
            ["kind", "action"],
            registry=r,
        )
        self.follow_up_lateness = Histogram(
            "tdm_follow_up_late_seconds",
            "How long after its due time a follow-up fired: under the tick's second normally, "
            "longer after downtime or a partition's move (the event says how late).",
            buckets=(1, 5, 30, 120, 600, 3600, 6 * 3600, 86400, 7 * 86400),
            registry=r,
        )
        self.acknowledgements = Counter(
            "tdm_acknowledgements",
            "Acknowledgements read, by outcome (applied, repeated, unknown_incident: the patient "
            "has no such incident open, nothing changed) and decision.",
            ["outcome", "decision"],
            registry=r,
        )
        self.time_to_acknowledge = Histogram(
            "tdm_time_to_acknowledge_seconds",
            "From an incident's page to its first acknowledgement.",
            buckets=(60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 7 * 86400),
            registry=r,
        )
        self.interpretations = Counter(
            "tdm_interpretations",
            "Infliximab results interpreted, by analyte and finding.",
            ["analyte", "finding"],
            registry=r,
        )
        self.dead_letters = Counter(
            "tdm_dead_letters",
            "Messages sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.relevant_dead_letters = Counter(
            "tdm_relevant_dead_letters",
            "Dead letters whose bytes may hold an infliximab result (the pre-filter passed them), by reason.",
            ["reason"],
            registry=r,
        )
        self.covariates = Counter(
            "tdm_covariates",
            "Serum albumin and body weight results read on the lab feed for the forecast "
            "(TDM_LAB_COVARIATES), by covariate and outcome: kept in the patient's record, unusable "
            "(not final, censored, an unknown unit, implausible), or unreadable (the decoder refused it).",
            ["covariate", "outcome"],
            registry=r,
        )
        for covariate in ("albumin", "body_weight"):
            for outcome in ("kept", "unusable"):
                self.covariates.labels(covariate, outcome)
        self.covariates.labels("unknown", "unreadable")
        # Process metrics (start time, CPU, memory, open files) for the restart and crash-loop alert.
        ProcessCollector(registry=r)
        self.recognition_gaps = Counter(
            "tdm_recognition_gaps",
            "Messages that name infliximab but hold no recognised drug-level or antibody result "
            "(a new local code or test name), by input topic.",
            ["topic"],
            registry=r,
        )

    def _patient_state(self, r: CollectorRegistry) -> None:
        self.state_patients = Gauge(
            "tdm_state_patients",
            "Patients whose state this instance holds (its assigned partitions).",
            registry=r,
        )
        self.state_restore_remaining = Gauge(
            "tdm_state_restore_remaining_records",
            "Changelog records still to replay before a partition's patient state is ready.",
            ["partition"],
            registry=r,
        )
        self.state_restore_seconds = Histogram(
            "tdm_state_restore_seconds",
            "Time to restore one partition's patient state from its changelog.",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.fetch_restarts = Counter(
            "tdm_fetch_restarts",
            "Partitions found with messages waiting and no progress for 20 s, whose fetch was "
            "restarted in place (before the watchdog's TDM_STALL_TIMEOUT_S ends the process).",
            registry=r,
        )
        self.state_rebuilds = Counter(
            "tdm_state_rebuilds",
            "Local patient-state stores set aside and rebuilt from the changelog, by reason "
            "(damaged: the file failed its check; not_this_changelog: it is ahead of or differs from "
            "the changelog).",
            ["reason"],
            registry=r,
        )
        self.state_expired = Counter(
            "tdm_state_expired_patients", "Patient states removed after the retention time.", registry=r
        )
        self.state_forgotten = Counter(
            "tdm_state_forgotten_patients", "Patient states removed by a forget request.", registry=r
        )

    def _timings(self, r: CollectorRegistry) -> None:
        self.processing_seconds = BatchHistogram(
            "tdm_message_processing_seconds",
            "Intake, decode and interpret time per message.",
            buckets=_MESSAGE_BUCKETS,
            registry=r,
        )
        self.decode_seconds = BatchHistogram(
            "tdm_decode_seconds",
            "Decode time per message (bytes to the lab results that concern infliximab).",
            buckets=_MESSAGE_BUCKETS,
            registry=r,
        )
        self.interpret_seconds = BatchHistogram(
            "tdm_interpret_seconds",
            "Interpretation and alert-building time per decoded message.",
            buckets=_MESSAGE_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = BatchHistogram(
            "tdm_end_to_end_seconds",
            "From a lab message's Kafka timestamp to the commit of its outputs (alerts readable).",
            buckets=_END_TO_END_BUCKETS,
            registry=r,
        )
        self.clock_skew = Counter(
            "tdm_clock_skew",
            "Messages whose timestamp lies ahead of this service's clock by more than a second: "
            "the sender's clock is wrong, so their latency is not observed (set the input topic "
            "to message.timestamp.type=LogAppendTime to measure from the broker's clock).",
            ["topic"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "tdm_batch_commit_seconds",
            "Time to publish a batch's outputs and commit them with its offsets (the transaction commit).",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )

    def _the_loop(self, r: CollectorRegistry) -> None:
        self.batch_failures = Counter(
            "tdm_batch_failures",
            "Batches (transactions) whose publish or commit failed and were aborted and retried.",
            registry=r,
        )
        self.last_processed = Gauge(
            "tdm_last_processed_timestamp_seconds",
            "Unix time of the last successfully committed batch.",
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "tdm_assigned_partitions",
            "Input partitions currently assigned to this instance.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "tdm_consumer_lag_messages",
            "Records behind the end of each assigned input partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.unowned_partitions = Gauge(
            "tdm_unowned_partitions",
            "Partitions of the subscribed topics that no member of the consumer group owns, as this "
            "instance last confirmed (the group settled without them: nothing reads them).",
            registry=r,
        )
        self.group_rejoins = Counter(
            "tdm_group_rejoins",
            "New assignments asked of the group because it left subscribed partitions unowned.",
            registry=r,
        )
        self.ready = Gauge(
            "tdm_ready",
            "1 while a member of the consumer group (with or without partitions), the loop turns, "
            "and no subscribed partition is left unowned by the group.",
            registry=r,
        )
        self.ruleset = Info("tdm_ruleset", "Active interpretation rule set.", registry=r)
        self.build = Info("tdm_build", "tdm-alerts build.", registry=r)


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    ready: Callable[[], bool]
    alive: Callable[[], bool]
    detail: Callable[[], str]

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok = self.alive()
            self._reply(200 if ok else 503, b"ok\n" if ok else b"main loop stalled\n")
        elif path == "/readyz":
            ok = self.ready()
            said = (b"ready\n" if ok else b"not ready\n") + self.detail().encode()
            self._reply(200 if ok else 503, said)
        else:
            self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds are not news; stay quiet."""


class MetricsServer:
    """Serves /metrics, /healthz and /readyz on a background thread."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        *,
        alive: Callable[[], bool] = lambda: True,
        detail: Callable[[], str] = lambda: "",
    ) -> None:
        handler = type(
            "Handler",
            (_Handler,),
            {
                "registry": registry,
                "ready": staticmethod(ready),
                "alive": staticmethod(alive),
                "detail": staticmethod(detail),
            },
        )
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
