"""The consume-interpret-publish loop.

Each poll is one batch: every record is processed, every output (alerts and dead letters) is
sent and acknowledged by the broker, and only then are the batch's offsets committed. A
failure anywhere before the commit rewinds the batch, so nothing is lost (at least once).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from consumer.kafka_clients import StopRequested, new_consumer, new_producer, with_backoff
from consumer.metrics import Metrics
from consumer.pipeline import Pipeline, Processed
from consumer.settings import Settings
from interpretation import SourceRef

log = structlog.get_logger("tdm_alerts.service")

SEND_TIMEOUT_S = 30.0
LAG_REFRESH_S = 10.0  # end offsets cost a broker round trip; lag does not need sub-second detail


class FatalError(Exception):
    """A condition restarting will not fix on its own (missing topic, bad credentials)."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: Service) -> None:
        self._service = service

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._service.assigned -= set(revoked)
        self._service.on_assignment_changed("revoked", revoked)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._service.assigned |= set(assigned)
        self._service.on_assignment_changed("assigned", assigned)


class Service:
    """Runs the pipeline over the input topics until asked to stop."""

    def __init__(self, settings: Settings, pipeline: Pipeline, metrics: Metrics) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        self.assigned: set[TopicPartition] = set()
        self._stop = threading.Event()
        self._consuming = False
        self._lag_due = 0.0  # monotonic time of the next lag measurement
        metrics.ready.set_function(lambda: float(self.is_ready()))

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the batch in hand, commit it, then return from `run` (SIGTERM, SIGINT)."""
        self._stop.set()

    def is_ready(self) -> bool:
        return self._consuming and bool(self.assigned) and not self._stop.is_set()

    def run(self) -> None:
        s = self.settings
        try:
            consumer = with_backoff(
                lambda: new_consumer(s), "consumer", s.retry_backoff_max_s, self._stop.is_set
            )
            producer = with_backoff(
                lambda: new_producer(s), "producer", s.retry_backoff_max_s, self._stop.is_set
            )
        except StopRequested:
            log.info("stopped before the brokers answered")
            return
        try:
            self._check_output_topics(consumer)
            listener = _Assignment(self)
            if s.input_pattern:
                consumer.subscribe(pattern=s.input_pattern, listener=listener)
            else:
                consumer.subscribe(topics=s.input_topics, listener=listener)
            log.info(
                "consuming",
                topics=s.input_topics if not s.input_pattern else None,
                pattern=s.input_pattern,
                group=s.group_id,
            )
            self._consuming = True
            self._loop(consumer, producer)
        finally:
            self._consuming = False
            producer.close(timeout=10)
            consumer.close(autocommit=False)
            log.info("stopped")

    def on_assignment_changed(self, change: str, partitions: Iterable[TopicPartition]) -> None:
        self.metrics.assigned_partitions.set(len(self.assigned))
        self._lag_due = 0.0  # measure the new assignment on the next turn of the loop
        if change == "revoked":
            for tp in partitions:
                with contextlib.suppress(KeyError):  # never measured yet
                    self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        log.info(f"partitions {change}", partitions=sorted(f"{p.topic}/{p.partition}" for p in partitions))

    def _check_output_topics(self, consumer: KafkaConsumer) -> None:
        existing = consumer.topics()
        missing = [t for t in (self.settings.alert_topic, self.settings.dlq_topic) if t not in existing]
        if missing:
            raise FatalError(
                f"output topic(s) {', '.join(missing)} do not exist; create them "
                "(see README 'Topics') or point TDM_ALERT_TOPIC / TDM_DLQ_TOPIC at existing ones"
            )

    # -- the loop --------------------------------------------------------------------------

    def _loop(self, consumer: KafkaConsumer, producer: KafkaProducer) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            if time.monotonic() >= self._lag_due:
                self._refresh_lag(consumer)
                self._lag_due = time.monotonic() + LAG_REFRESH_S
            batch = consumer.poll(timeout_ms=self.settings.poll_timeout_ms)
            if not batch:
                continue
            try:
                self._deliver(consumer, producer, batch)
                backoff = 0.5
            except KafkaError as err:
                # Nothing of this batch is committed: rewind so every record is processed again.
                self.metrics.batch_failures.inc()
                log.error(
                    "batch failed; will retry",
                    error=type(err).__name__,
                    detail=str(err)[:300],
                    retry_in_s=backoff,
                )
                for tp, records in batch.items():
                    if tp in consumer.assignment():
                        consumer.seek(tp, records[0].offset)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.settings.retry_backoff_max_s)

    def _refresh_lag(self, consumer: KafkaConsumer) -> None:
        """Lag per partition: end offset (last stable, under read_committed) minus our position."""
        partitions = list(consumer.assignment())
        if not partitions:
            return
        try:
            ends = consumer.end_offsets(partitions)
            for tp in partitions:
                lag = max(ends[tp] - consumer.position(tp), 0)
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
        except KafkaError as err:  # a missed sample is not worth failing the loop for
            log.warning("could not measure consumer lag", error=type(err).__name__)

    def _deliver(
        self,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        batch: dict[TopicPartition, list[ConsumerRecord]],
    ) -> None:
        began = time.perf_counter()
        processed: list[tuple[ConsumerRecord, Processed]] = []
        outgoing: list[Outgoing] = []
        for records in batch.values():
            for record in records:
                source = SourceRef(topic=record.topic, partition=record.partition, offset=record.offset)
                result = self.pipeline.process(record.value, source)
                processed.append((record, result))
                outgoing.extend(self._outputs(record, result))

        futures = [producer.send(o.topic, key=o.key, value=o.value, headers=o.headers) for o in outgoing]
        producer.flush(timeout=SEND_TIMEOUT_S)
        for future in futures:
            future.get(timeout=SEND_TIMEOUT_S)  # raises the send's KafkaError, if any
        consumer.commit(
            offsets={tp: OffsetAndMetadata(records[-1].offset + 1, "", -1) for tp, records in batch.items()}
        )
        self._account(processed, time.perf_counter() - began)

    def _outputs(self, record: ConsumerRecord, result: Processed) -> list[Outgoing]:
        if result.dead_letter is not None:
            headers = result.dead_letter.headers(
                record.topic, record.partition, record.offset, int(time.time() * 1000)
            )
            return [
                Outgoing(
                    self.settings.dlq_topic,
                    record.key,
                    record.value or b"",
                    headers + list(record.headers or []),
                )
            ]
        return [
            Outgoing(
                self.settings.alert_topic,
                alert.patient_id.encode(),
                alert.model_dump_json().encode(),
                [
                    ("tdm.alert_schema", alert.alert_schema.encode()),
                    ("tdm.dedup_key", alert.dedup_key.encode()),
                ],
            )
            for alert in result.alerts
        ]

    def _account(self, processed: list[tuple[ConsumerRecord, Processed]], batch_seconds: float) -> None:
        """Count a batch only once it is committed, so a retried batch is not counted twice."""
        m = self.metrics
        for record, result in processed:
            m.messages.labels(record.topic, result.outcome.value).inc()
            m.processing_seconds.observe(result.seconds)
            for interpretation in result.interpretations:
                m.interpretations.labels(interpretation.analyte.value, interpretation.finding.value).inc()
            for alert in result.alerts:
                m.alerts.labels(alert.category.value, alert.severity.value).inc()
                log.info(
                    "alert published",
                    category=alert.category.value,
                    severity=alert.severity.value,
                    dedup_key=alert.dedup_key,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
            if result.dead_letter is not None:
                m.dead_letters.labels(result.dead_letter.reason.value).inc()
                log.warning(
                    "dead-lettered",
                    reason=result.dead_letter.reason.value,
                    stage=result.dead_letter.stage.value,
                    error=result.dead_letter.detail,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
        m.batch_seconds.observe(batch_seconds)
        m.last_processed.set(time.time())
