"""Counting a committed batch: metrics and the log lines that say what became of each message.

Called only once a batch has committed, so a batch that is aborted and processed again is
counted once. Log lines name positions and correlation ids, never message contents.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence

import structlog

from consumer.clients.seam import Record
from consumer.metrics import Metrics
from consumer.pipeline import AckResult, Outcome, Processed
from interpretation import Alert
from interpretation.acknowledgement import AckOutcome
from interpretation.pk.forecast import Forecast, RefusalCode, Refused

log = structlog.get_logger("tdm_alerts.service")

CLOCK_SKEW_TOLERANCE_S = 1.0  # NTP keeps hosts within milliseconds; a second is a wrong clock


class Accounting:
    def __init__(
        self,
        metrics: Metrics,
        correlation_id: Callable[[Record], str],
        internal_topic: str | None,
        *,
        debug: bool,
    ) -> None:
        self.metrics = metrics
        self.correlation_id = correlation_id
        # Results on the internal patient topic were counted when their lab message was read:
        # their latency is observed only when they page (the lab message's time travels with them).
        self.internal_topic = internal_topic
        self.debug = debug  # per-message lines cost even when filtered out

    def committed(self, processed: Sequence[tuple[Record, Processed]], batch_seconds: float) -> None:
        m = self.metrics
        # Counted per batch: a labelled inc costs ~3.5 us, a tenth of a skipped message's work.
        consumed = Counter((record.topic, result.outcome.value) for record, result in processed)
        for (topic, outcome), count in consumed.items():
            m.messages.labels(topic, outcome).inc(count)
        m.processing_seconds.observe_all(result.seconds for _, result in processed)
        read = [result for _, result in processed if result.dead_letter is None]
        m.decode_seconds.observe_all(result.decode_seconds for result in read)
        m.interpret_seconds.observe_all(result.interpret_seconds for result in read)
        self._latency(processed)
        for record, result in processed:
            if self.debug:
                self._debug(record, result)
            if result.outcome is Outcome.SKIPPED and not (
                result.recognition_gap or result.covariates or result.covariate_error
            ):
                continue  # nearly every record: nothing more to count or log
            self._notable(record, result)
        m.batch_seconds.observe(batch_seconds)
        m.last_processed.set(time.time())

    def ticked(self, fired: Sequence[tuple[int, Alert]]) -> None:
        """Follow-up events the clock fired in a committed batch: their cause is a tick, so they
        are counted and logged here, by partition, event and lateness, never by patient."""
        m = self.metrics
        for partition, alert in fired:
            notice = alert.follow_up
            kind = notice.kind.value if notice is not None else "unknown"
            m.alerts.labels(alert.category.value, alert.severity.value).inc()
            m.follow_ups.labels(kind, alert.action.value).inc()
            if alert.action.value == "trigger" and notice is not None:
                m.follow_up_lateness.observe(notice.late_seconds)
            log.info(
                "follow-up fired" if alert.action.value == "trigger" else "follow-up resolved",
                cause="tick",
                kind=kind,
                partition=partition,
                event_id=alert.event_id,
                late_s=notice.late_seconds if notice is not None else None,
            )

    def _acknowledged(self, ack: AckResult, where: dict[str, object]) -> None:
        m = self.metrics
        m.acknowledgements.labels(ack.outcome.value, ack.decision.value).inc()
        if ack.outcome is AckOutcome.APPLIED and ack.waited_s is not None:
            m.time_to_acknowledge.observe(max(ack.waited_s, 0.0))
        said = {"decision": ack.decision.value, "by": ack.by, **where}
        if ack.outcome is AckOutcome.UNKNOWN_INCIDENT:
            log.warning(
                "acknowledgement for an incident the patient does not have open; nothing changed", **said
            )
        elif ack.outcome is AckOutcome.REPEATED:
            log.info("acknowledgement repeated; nothing changed", **said)
        else:
            waited = None if ack.waited_s is None else round(ack.waited_s)
            log.info("acknowledgement applied", waited_s=waited, **said)

    def _latency(self, processed: Sequence[tuple[Record, Processed]]) -> None:
        now = time.time()
        ages = [
            (record.topic, now - record.timestamp_ms / 1000)
            for record, result in processed
            if record.timestamp_ms is not None and (record.topic != self.internal_topic or result.alerts)
        ]
        # A timestamp from the future is the sender's clock, not a fast page: observed as 0 it
        # hid real delays (issue 28). Counted instead; an old one cannot be told from a delay.
        self.metrics.end_to_end_seconds.observe_all(
            max(age, 0.0) for _, age in ages if age >= -CLOCK_SKEW_TOLERANCE_S
        )
        for topic, age in ages:
            if age < -CLOCK_SKEW_TOLERANCE_S:
                self.metrics.clock_skew.labels(topic).inc()

    def _debug(self, record: Record, result: Processed) -> None:
        """Each message's fate, by position only: never its contents."""
        log.debug(
            "message processed",
            outcome=result.outcome.value,
            results=len(result.interpretations) or len(result.results),
            alerts=len(result.alerts),
            correlation_id=self.correlation_id(record),
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )

    def _notable(self, record: Record, result: Processed) -> None:
        m = self.metrics
        where = {
            "correlation_id": self.correlation_id(record),
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
        }
        if result.recognition_gap:
            m.recognition_gaps.labels(record.topic).inc()
            log.warning(
                "message names infliximab but no result was recognised; check the rule set's codes", **where
            )
        for covariate in result.covariates:
            outcome = "kept" if covariate.reading.record is not None else "unusable"
            m.covariates.labels(covariate.reading.covariate.value, outcome).inc()
        if result.covariate_error is not None:
            m.covariates.labels("unknown", "unreadable").inc()
            log.warning("albumin or weight result not readable", error=result.covariate_error, **where)
        if result.acknowledged is not None:
            self._acknowledged(result.acknowledged, where)
        for interpretation in result.interpretations:
            m.interpretations.labels(interpretation.analyte.value, interpretation.finding.value).inc()
        # One forecast per level, however many of its events carry it.
        if (told := next((a.forecast for a in result.alerts if a.forecast is not None), None)) is not None:
            outcome = told.status if isinstance(told, Forecast) else told.code.value
            m.forecasts.labels(told.model, outcome).inc()
            if isinstance(told, Refused) and told.code is RefusalCode.INTERNAL_ERROR:
                log.error("forecast failed; the page went out without it", reason=told.reason, **where)
        for alert in result.alerts:
            m.alerts.labels(alert.category.value, alert.severity.value).inc()
            if alert.follow_up is not None:  # a follow-up a result ended
                m.follow_ups.labels(alert.follow_up.kind.value, alert.action.value).inc()
            if alert.review_reason is not None:
                m.reviews.labels(alert.analyte, alert.review_reason.value).inc()
            log.info(
                "alert published",
                category=alert.category.value,
                severity=alert.severity.value,
                action=alert.action.value,
                incident_key=alert.incident_key,
                event_id=alert.event_id,
                **where,
            )
        if result.dead_letter is not None:
            m.dead_letters.labels(result.dead_letter.reason.value).inc()
            if result.maybe_relevant:
                m.relevant_dead_letters.labels(result.dead_letter.reason.value).inc()
            log.warning(
                "dead-lettered",
                reason=result.dead_letter.reason.value,
                stage=result.dead_letter.stage.value,
                error=result.dead_letter.detail,
                **where,
            )
