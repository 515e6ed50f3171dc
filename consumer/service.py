"""The consume-interpret-publish loop.

Records are processed as they are polled and their outputs (alerts, dead letters) sent into
an open batch. A batch closes after `TDM_BATCH_MAX_RECORDS` records or `TDM_COMMIT_INTERVAL_MS`,
and its outputs and consumed offsets are committed together (see `consumer.delivery`). A
failure before that commit aborts the batch and rewinds the consumer to the batch's first
offsets, so every record is processed again and nothing is lost or published twice.
"""

from __future__ import annotations

import contextlib
import gc
import re
import threading
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog

from consumer.access import KAFKA_MAX_MESSAGE_BYTES, check_topic_access, dead_letter_limit
from consumer.clients import client_for
from consumer.clients.seam import ClientError, Failure, GroupConsumer, Partition, Record
from consumer.connecting import StopRequested, check_tls_material, with_backoff
from consumer.dead_letters import DeadLetter, Reason, Stage
from consumer.dead_letters import fit as fit_dead_letter
from consumer.delivery import Delivery, delivery_for, is_fatal
from consumer.end_offsets import EndOffsets
from consumer.fatal import FatalError
from consumer.formats import DecodeError
from consumer.formats.treatment import decode_treatment
from consumer.health import Health
from consumer.metrics import Metrics
from consumer.pipeline import Outcome, Pipeline, Processed
from consumer.settings import Settings
from consumer.state.manager import (
    KIND_HEADER,
    TREATMENT,
    PatientStates,
    is_forget,
    repartition_value,
    store_fatal,
    treatment_value,
)
from consumer.state.store import StoreError
from consumer.state.topics import ensure_state_topics
from interpretation import SourceRef

log = structlog.get_logger("tdm_alerts.service")

CORRELATION_HEADER = "tdm.correlation_id"
# An upstream correlation id is kept only in a shape that cannot spell a name or hold an
# identifier: a UUID or a W3C trace id (32 hex digits), and never digits alone (a 16-digit
# "trace id" was a national health number's shape, issue 28). Anything else is replaced.
_CORRELATION_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}"
)
_DIGITS_ONLY = re.compile(r"[0-9-]+")
# A partition with messages waiting whose position has not moved for this long gets its fetch
# restarted in place (a seek to where it stands), once per episode, well before the watchdog's
# TDM_STALL_TIMEOUT_S ends the process: one partition was seen silent for 150 s after a takeover
# while the others flowed (kafka-python, issue 27).
STUCK_RESTART_S = 20.0
# Ready only if the loop turned this recently: a loop stuck on a frozen broker (a commit's
# flush waits up to 30 s) reported ready for 33 s (issue 28). A turn takes milliseconds, a commit
# well under a second, and a long restore beats at every chunk.
READY_TURN_S = 10.0
LAG_REFRESH_S = 10.0  # end offsets cost a broker round trip; lag does not need sub-second detail
LAG_RETRY_S = 1.0
BEHIND_INTERVALS = 10  # how much longer than the interval a batch may run while behind the feed
GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections (Python's default is 700)
POLL_MAX_RECORDS = 500  # per poll; a batch (transaction) spans polls up to TDM_BATCH_MAX_RECORDS
CLOCK_SKEW_TOLERANCE_S = 1.0  # NTP keeps hosts within milliseconds; a second is a wrong clock


@dataclass
class _Batch:
    """Records processed since the batch opened, and the offsets to commit for them."""

    opened: float
    first: dict[Partition, int] = field(default_factory=dict)
    next: dict[Partition, int] = field(default_factory=dict)
    processed: list[tuple[Record, Processed]] = field(default_factory=list)
    # Holds an alert, or a result on its way to the patient's state: once caught up with the
    # feed, commit it now, not at the end of the interval, so a page is readable in milliseconds.
    # Batches of skipped records (~99% of a feed) still fill up to the interval or the size limit.
    urgent: bool = False
    # A poll came back full: the service is behind the feed, and the batch may outgrow the
    # interval (see Service._commit_due).
    behind: bool = False


class _Assignment:
    """The group's rebalance callbacks (seam.Rebalance), run inside the consumer's poll."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def revoked(self, revoked: Collection[Partition]) -> None:
        # Before the partitions go: close the open batch, so nothing is published for a
        # partition this instance no longer owns and the next owner starts where we stopped.
        self._service.close_batch_for_rebalance()
        self._service.assigned -= set(revoked)
        if (states := self._service.states) is not None:
            states.revoke(tp.partition for tp in revoked if tp.topic == states.topics.patients)
        for tp in revoked:
            self._service.held.pop(tp, None)
        self._service.on_assignment_changed("revoked", revoked)

    def lost(self, lost: Collection[Partition]) -> None:
        # The commit that closing the batch attempts is refused, so the batch is aborted and
        # rewound: the same path as a commit refused for any other reason.
        self.revoked(lost)

    def assigned(self, assigned: Collection[Partition]) -> None:
        # A patient partition's state is restored from its changelog before any of its
        # records is processed. Pausing it here is not enough: confluent-kafka applies the
        # assignment only after this callback returns, so the pause does nothing there, and the
        # poll that ran this callback can return the partition's records. The loop holds them
        # back (Service._hold_unrestored) whatever the client does; the pause saves the fetch.
        if (states := self._service.states) is not None:
            stateful = [tp for tp in assigned if tp.topic in states.topics_read]
            try:
                states.assign(tp.partition for tp in stateful)
            except FatalError as fatal:  # kafka-python swallows what a callback raises
                self._service._fatal = fatal
                return
            # Only what waits for a restore: a partition whose store is already restored (the
            # context topic's, assigned after its input partition) would never be resumed.
            waiting = [tp for tp in stateful if tp.partition in states.pending]
            if waiting and self._service._consumer is not None:
                self._service._consumer.pause(waiting)  # resumed once restored, in the loop
        self._service.assigned |= set(assigned)
        self._service.on_assignment_changed("assigned", assigned)


class Service:
    """Runs the pipeline over the input topics until asked to stop."""

    def __init__(self, settings: Settings, pipeline: Pipeline, metrics: Metrics) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        self.client = client_for(settings)
        self.delivery: Delivery[Any] = delivery_for(settings, self.client)
        self.assigned: set[Partition] = set()
        # The largest dead letter we may write; the topic's own limit once it has been asked.
        self.dead_letter_limit = min(KAFKA_MAX_MESSAGE_BYTES, settings.producer_max_request_bytes)
        self._stop = threading.Event()
        self._consuming = False
        self._lag_due = 0.0  # monotonic time of the next lag measurement
        self._batch: _Batch | None = None
        self._committed_at = 0.0  # monotonic time the last commit finished, and how long it took
        self._commit_took = 0.0
        self._consumer: GroupConsumer | None = None
        self._end_offsets = EndOffsets(self.client)
        self._backoff = 0.5
        self._fatal: FatalError | None = None
        self.states: PatientStates | None = None
        # Where each stateful partition polled before its restore resumes (its first record held).
        self.held: dict[Partition, int] = {}
        self.health = Health(settings.liveness_timeout_s, settings.stall_timeout_s)
        self._debug = settings.log_level == "DEBUG"  # per-message lines cost even when filtered out
        self._restarted: dict[str, int] = {}  # stuck partitions whose fetch was restarted, at which offset
        metrics.ready.set_function(lambda: float(self.is_ready()))

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the batch in hand, commit it, then return from `run` (SIGTERM, SIGINT)."""
        self._stop.set()

    def is_ready(self) -> bool:
        """Consuming as a member of the group, and the loop turned recently (a hung loop is not ready).

        An extra instance the group gave no partitions is ready: it is healthy and takes over
        partitions as soon as another member leaves, so it must not page as not ready.
        """
        fresh = self.health.since_beat() < min(READY_TURN_S, self.settings.liveness_timeout_s)
        consumer = self._consumer
        return (
            self._consuming
            and not self._stop.is_set()
            and fresh
            and consumer is not None
            and consumer.in_group()
        )

    def run(self) -> None:
        s = self.settings
        check_tls_material(s)
        try:
            consumer = with_backoff(
                self.client.group_consumer, "consumer", s.retry_backoff_max_s, self._stop.is_set
            )
            with_backoff(self.delivery.connect, "producer", s.retry_backoff_max_s, self._stop.is_set)
        except StopRequested:
            log.info("stopped before the brokers answered")
            return
        except ClientError as err:
            if is_fatal(err):
                raise FatalError(_fatal_message(err, self.settings)) from err
            raise
        self._consumer = consumer
        try:
            with_backoff(
                lambda: check_topic_access(s, self.client), "admin", s.retry_backoff_max_s, self._stop.is_set
            )
            self.dead_letter_limit = with_backoff(
                lambda: dead_letter_limit(s, self.client), "admin", s.retry_backoff_max_s, self._stop.is_set
            )
            topics, pattern = list(s.input_topics), s.input_pattern
            if s.patient_state:
                state_topics = with_backoff(
                    lambda: ensure_state_topics(s, self.client),
                    "admin",
                    s.retry_backoff_max_s,
                    self._stop.is_set,
                )
                self.states = PatientStates(
                    s, state_topics, self.pipeline.ruleset, self.delivery, self.metrics
                )
                self.states.on_restore_chunk = self.health.restored_chunk
                extra = [state_topics.patients] if state_topics.repartition else []
                extra += [s.context_topic] if s.context_topic else []
                topics += extra
                if pattern and extra:
                    pattern = "|".join([f"(?:{pattern})", *(re.escape(t) for t in extra)])
            consumer.subscribe(topics, pattern, _Assignment(self))
            log.info(
                "consuming",
                client=self.client.name,
                topics=s.input_topics if not s.input_pattern else None,
                pattern=s.input_pattern,
                group=s.group_id,
                delivery=s.delivery,
            )
            self._consuming = True
            self.health.started()
            _settle_garbage_collector()
            self._loop(consumer)
        except StopRequested:
            log.info("stopped before the brokers answered")
        finally:
            self._consuming = False
            self.health.stopped()
            if self._batch is not None:
                self._abort("stopping")
            if self.states is not None:
                self.states.close()
            self.delivery.close()
            self._end_offsets.close()
            consumer.close()
            log.info("stopped")

    def on_assignment_changed(self, change: str, partitions: Collection[Partition]) -> None:
        self.metrics.assigned_partitions.set(len(self.assigned))
        self._lag_due = 0.0  # measure the new assignment on the next turn of the loop
        if change == "revoked":
            for tp in partitions:
                with contextlib.suppress(KeyError):  # never measured yet
                    self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        log.info(f"partitions {change}", partitions=sorted(f"{p.topic}/{p.partition}" for p in partitions))

    # -- the loop --------------------------------------------------------------------------

    def _loop(self, consumer: GroupConsumer) -> None:
        s = self.settings
        interval = s.commit_interval_ms / 1000
        while not self._stop.is_set():
            self.health.beat()
            self.health.member(consumer.in_group())
            self._measure_lag(consumer)
            try:
                if self.states is not None and self.states.pending:
                    if self._batch is not None:
                        # A restore can outlast the transaction timeout: commit what is in
                        # hand first, so no transaction stays open across it.
                        self._commit(consumer, self._batch)
                    self._restore_state(consumer, self.states)
                batch = self._batch
                room = min(POLL_MAX_RECORDS, s.batch_max_records - (len(batch.processed) if batch else 0))
                polled = consumer.poll(self._wait_ms(batch, interval), room)
                if self._fatal is not None:  # raised in a rebalance callback, which kafka-python swallows
                    raise self._fatal
                if self.states is not None and self.states.pending:
                    polled = self._hold_unrestored(consumer, self.states, polled)
                if polled:
                    self._process(polled)
                # A poll that filled up means a backlog: there, large batches catch up fastest
                # and an alert's wait is the backlog's, so only a caught-up batch commits early.
                caught_up = sum(len(records) for records in polled.values()) < room
                batch = self._batch
                if batch is not None and not caught_up:
                    batch.behind = True
                if batch is not None and self._commit_due(batch, caught_up, interval):
                    self._commit(consumer, batch)
            except ClientError as err:
                self._raise_if_fatal(err)
                self._fail(consumer, err)
            except StoreError as err:
                raise store_fatal(err, s) from err
        if self._batch is not None:
            try:
                self._commit(consumer, self._batch)  # SIGTERM: the batch in hand is finished, not dropped
            except ClientError as err:
                log.warning("last batch not committed; it will be processed again", error=err.name)

    def _restore_state(self, consumer: GroupConsumer, states: PatientStates) -> None:
        try:
            restored = states.restore_pending()
        except ClientError as err:  # retried on the next turn: the partitions stay paused
            log.warning("patient state restore failed; retrying", error=err.name)
            self._stop.wait(1.0)
            return
        restored_set = set(restored)
        ready = [
            tp
            for tp in consumer.assignment()
            if tp.topic in states.topics_read and tp.partition in restored_set
        ]
        consumer.resume(ready)
        for tp in ready:
            if (offset := self.held.pop(tp, None)) is not None:
                # After the resume: librdkafka may take its resume point from the last record
                # it handed out, which was one of the held ones.
                consumer.seek(tp, offset)

    def _hold_unrestored(
        self, consumer: GroupConsumer, states: PatientStates, polled: Mapping[Partition, Sequence[Record]]
    ) -> Mapping[Partition, Sequence[Record]]:
        """Leave out the records of partitions whose state is not restored yet; read them again later.

        Read against an empty or stale store, a result would page wrongly, and its write would be
        committed with an offset past the history the restore then skips: the damage would last.
        """
        if not any(states.waits_for_restore(tp) for tp in polled):
            return polled
        kept: dict[Partition, Sequence[Record]] = {}
        for tp, records in polled.items():
            if not states.waits_for_restore(tp):
                kept[tp] = records
                continue
            first = min(records[0].offset, self.held.get(tp, records[0].offset))
            self.held[tp] = first
            consumer.seek(tp, first)
            consumer.pause([tp])  # the assignment is in force by now, so this pause holds
            log.info(
                "records held until their partition's state is restored",
                partition=f"{tp.topic}/{tp.partition}",
            )
        return kept

    def _process(self, polled: Mapping[Partition, Sequence[Record]]) -> None:
        opening = self._batch is None
        batch = self._batch = self._batch or _Batch(opened=time.monotonic())
        # Offsets first: if anything below fails, the rewind must cover every polled record.
        for tp, records in polled.items():
            batch.first.setdefault(tp, records[0].offset)
            batch.next[tp] = records[-1].offset + 1
        if opening:
            self.delivery.begin()
            if self.states is not None:
                self.states.expire(time.time())
        states = self.states
        # Repartitioned results are interpreted by the patient stage, with the patient's state:
        # the intake only picks them out. With the input keyed by patient, the intake interprets
        # and correlates in one step, and an interpretation it cannot make is dead-lettered before
        # any state is written.
        forwarding = states is not None and bool(states.topics.repartition)
        for records in polled.values():
            for record in records:
                if (
                    states is not None
                    and record.topic == states.topics.patients
                    and (states.topics.repartition or is_forget(record))
                ):
                    result = self._patient_record(states, record)
                elif states is not None and record.topic == self.settings.context_topic:
                    result = self._treatment_record(states, record)
                else:
                    # The source is built only for a record with something to report (~4 us).
                    fmt = self.pipeline.format_for(record.topic)
                    result = self.pipeline.process(
                        record.value, partial(source_of, record), fmt, interpret=not forwarding
                    )
                    if states is not None and (result.interpretations or result.results):
                        result = self._with_state(states, record, result, source_of(record))
                batch.processed.append((record, result))
                batch.urgent = batch.urgent or bool(result.alerts or result.interpretations or result.results)
                self._send(record, result)

    def _patient_record(self, states: PatientStates, record: Record) -> Processed:
        """A result already keyed by patient: read with the patient's state.

        A record the stage cannot handle is dead-lettered, as the intake does with a result it
        cannot interpret: raised, it would stop the loop on the same record after every restart
        (a bug in correlation, a repartitioned record from another version). A record's state is
        written only once it is correlated, so a failed one leaves no partial write. Kafka's own
        errors still go to the loop.
        """
        if is_forget(record):
            states.forget(record.partition, record.key.decode() if record.key else "")
            return Processed(Outcome.SKIPPED)
        began = time.perf_counter()
        try:
            done = states.process(record)
        except (ClientError, StoreError):  # Kafka's or the disk's: not this record's fault
            raise
        except Exception as err:
            failed = DeadLetter(Reason.PROCESSING_ERROR, Stage.INTERPRET, type(err).__name__)
            return Processed(Outcome.DEAD_LETTERED, dead_letter=failed, maybe_relevant=True)
        took = time.perf_counter() - began
        if done is None:  # a treatment record kept, or a result not about infliximab
            return Processed(Outcome.INTERPRETED, seconds=took, interpret_seconds=took)
        return Processed(
            Outcome.ALERTED if done.events else Outcome.INTERPRETED,
            (done.interpretation,),
            done.events,
            seconds=took,
            interpret_seconds=took,
        )

    def _treatment_record(self, states: PatientStates, record: Record) -> Processed:
        """A treatment-context record: kept with the patient's state, next to their results."""
        try:
            update = decode_treatment(record.key, record.value, self.pipeline.ruleset.recognition)
        except DecodeError as err:
            return Processed(
                Outcome.DEAD_LETTERED, dead_letter=DeadLetter(err.reason, Stage.DECODE, err.detail)
            )
        if update is None:
            return Processed(Outcome.SKIPPED)
        if states.topics.repartition:
            self.delivery.send(
                states.topics.patients,
                update.patient_id.encode(),
                treatment_value(update.record, update.replace),
                [(KIND_HEADER, TREATMENT)],
            )
        else:  # keyed input: the context topic is co-partitioned with it
            states.record_treatment(
                record.partition, update.patient_id, update.record, replace=update.replace
            )
        return Processed(Outcome.INTERPRETED)

    def _with_state(
        self, states: PatientStates, record: Record, result: Processed, source: SourceRef
    ) -> Processed:
        """Stateful mode: publish nothing on the message alone; the patient's state decides."""
        if states.topics.repartition:
            for found in result.results:
                self.delivery.send(
                    states.topics.patients,
                    found.patient_id.encode(),
                    repartition_value(found, source),
                    [(CORRELATION_HEADER, correlation_id(record).encode())],
                    # The lab message's time travels with it, so end-to-end latency still
                    # measures lab message to alert (Kafka Streams propagates it the same way).
                    timestamp_ms=record.timestamp_ms,
                )
            return result
        # Read again with the patient's state: that reading is the one counted, as on the hop.
        read = [
            done
            for item in result.interpretations
            if (done := states.correlate(record.partition, item.result, source)) is not None
        ]
        return result._replace(
            interpretations=[done.interpretation for done in read],
            alerts=[event for done in read for event in done.events],
        )

    def _send(self, record: Record, result: Processed) -> None:
        if result.dead_letter is None and not result.alerts:
            return  # the ~99% of records with no output: nothing to build
        s = self.settings
        correlation = (CORRELATION_HEADER, self._correlation_id(record).encode())
        if result.dead_letter is not None:
            headers = result.dead_letter.headers(
                record.topic, record.partition, record.offset, int(time.time() * 1000)
            )
            original = [h for h in record.headers if h[0] != CORRELATION_HEADER]
            body, all_headers = fit_dead_letter(
                record.value or b"", record.key, [*headers, correlation], original, self.dead_letter_limit
            )
            self.delivery.send(s.dlq_topic, record.key, body, all_headers)
            return
        for alert in result.alerts:
            self.delivery.send(
                s.alert_topic,
                alert.patient_id.encode(),
                alert.model_dump_json().encode(),
                [
                    ("tdm.alert_schema", alert.alert_schema.encode()),
                    ("tdm.action", alert.action.value.encode()),
                    ("tdm.incident_key", alert.incident_key.encode()),
                    ("tdm.event_id", alert.event_id.encode()),
                    correlation,
                ],
            )

    def _correlation_id(self, record: Record) -> str:
        states = self.states
        internal = states is not None and states.topics.repartition and record.topic == states.topics.patients
        return correlation_id(record, internal=internal)

    def _wait_ms(self, batch: _Batch | None, interval: float) -> int:
        """How long the next poll may wait: until the open batch is due to commit."""
        if batch is None:
            return self.settings.poll_timeout_ms
        due = batch.opened + self._max_age(batch, interval)
        if batch.urgent:
            due = min(due, self._urgent_from())
        # Never 0: kafka-python 3 can spin for good in its coordinator lookup on a zero-timeout
        # poll after a rebalance (seen in `make bench`, py-spy stack in the issue note).
        return max(1, int((due - time.monotonic()) * 1000))

    def _urgent_from(self) -> float:
        """When a batch with something to page may commit early: once the loop has spent as long
        since the last commit as that commit took.

        A commit costs the loop 10-40 ms however few records it carries. Committing every such
        batch at once made 30 commits a second at 2,000 msgs/s (2% infliximab), half the loop's
        time; with processing the loop was 90% busy, fell behind, and alerts waited seconds.
        Capping commits at half the loop's time keeps it ahead of the feed and an alert's wait
        to about three commits.
        """
        return self._committed_at + self._commit_took

    def _commit_due(self, batch: _Batch, caught_up: bool, interval: float) -> bool:
        """Full, or as old as the interval; early with something to page; late when behind.

        Behind the feed (a poll came back full), a batch runs to TDM_BATCH_MAX_RECORDS, up to
        BEHIND_INTERVALS intervals: a commit costs the loop the same 15-80 ms for 700 records
        as for 5,000, and in 100 ms batches commits took 45% of the loop while it caught up.
        An alert in such a batch waits behind the backlog anyway.
        """
        now = time.monotonic()
        return (
            (batch.urgent and caught_up and now >= self._urgent_from())
            or len(batch.processed) >= self.settings.batch_max_records
            or now - batch.opened >= self._max_age(batch, interval)
        )

    def _max_age(self, batch: _Batch, interval: float) -> float:
        if not batch.behind:
            return interval
        # Well inside the transaction timeout, which the broker enforces by fencing us.
        timeout = self.settings.transaction_timeout_ms / 1000
        return max(interval, min(interval * BEHIND_INTERVALS, timeout / 4))

    def _commit(self, consumer: GroupConsumer, batch: _Batch) -> None:
        began = time.perf_counter()
        self.delivery.commit(batch.next, consumer)
        self._batch = None
        if self.states is not None:
            self.states.committed()
        if batch.processed:
            self.health.progressed()
        self._backoff = 0.5
        committed = time.perf_counter()
        if self._debug:
            log.debug(
                "batch committed",
                records=len(batch.processed),
                took_ms=round((committed - began) * 1000, 1),
                next_offsets={f"{tp.topic}/{tp.partition}": offset for tp, offset in batch.next.items()},
            )
        self._account(batch.processed, committed - began)
        self._committed_at = time.monotonic()
        self._commit_took = time.perf_counter() - began  # the accounting is the commit's cost too

    def _abort(self, why: str) -> None:
        """Drop the open batch's outputs; its records are processed again by whoever owns them next."""
        self._batch = None
        if self.states is not None:
            self.states.discarded()
        try:
            self.delivery.abort()
        except ClientError as err:
            self._raise_if_fatal(err)
        log.info("batch aborted", why=why)

    def _raise_if_fatal(self, err: ClientError) -> None:
        """FatalError for what no retry fixes; a fence the delivery recovered from is not that."""
        if is_fatal(err) and not self.delivery.survive_fence(err):
            raise FatalError(_fatal_message(err, self.settings)) from err

    def _fail(self, consumer: GroupConsumer, err: ClientError) -> None:
        """Abort the batch, rewind to its first offsets, and wait before trying again.

        A commit refused because the group moved on (a rebalance, an expired member) is retried
        at once: waiting only delays the rejoin. Other failures back off up to the maximum.
        """
        batch = self._batch
        self.metrics.batch_failures.inc()
        if err.failure is Failure.REBALANCED:
            self._backoff = 0.1
        log.error(
            "batch failed; will retry",
            error=err.name,
            detail=err.detail[:300],
            retry_in_s=self._backoff,
        )
        self._abort("failure")
        if batch is not None:
            _rewind(consumer, batch)
        self._stop.wait(self._backoff)
        self._backoff = min(self._backoff * 2, self.settings.retry_backoff_max_s)

    def close_batch_for_rebalance(self) -> None:
        if (batch := self._batch) is None or (consumer := self._consumer) is None:
            return
        try:
            self._commit(consumer, batch)
        except ClientError as err:
            # Another owner re-reads from the last committed offsets. So must we if the
            # partitions come back to us: kafka-python 3 keeps a partition's position across a
            # rebalance that leaves it here, so without the rewind the aborted records would be
            # skipped (seen: alerts lost after a broker restart forced a re-join).
            self.metrics.batch_failures.inc()
            log.warning("batch not committed before rebalance", error=err.name)
            try:
                self._raise_if_fatal(err)
                self._abort("rebalance")
            except FatalError as fatal:
                self._fatal = fatal
            _rewind(consumer, batch)

    def _measure_lag(self, consumer: GroupConsumer) -> None:
        """Lag per partition: end offset (last stable, under read_committed) minus our position.

        The end offsets are asked for on a thread (`consumer/end_offsets.py`) and taken on a later
        turn, with the positions of that turn.
        """
        now = time.monotonic()
        if now >= self._lag_due:
            partitions = consumer.assignment()
            if not partitions or self._end_offsets.ask(partitions):
                self._lag_due = now + LAG_REFRESH_S
                if self.states is not None:
                    self.states.refresh_gauges()
        positions: dict[str, tuple[int, int]] = {}
        try:
            ends = self._end_offsets.answer()
            if ends is None:
                return
            owned = consumer.assignment()
            for tp, end in ends.items():
                if tp in owned:  # not revoked while the question was out
                    position = consumer.position(tp)
                    lag = max(end - position, 0)
                    positions[f"{tp.topic}/{tp.partition}"] = (position, lag)
                    self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
        except ClientError as err:  # a missed sample is not worth failing the loop for
            log.warning("could not measure consumer lag", error=err.name)
            # Cluster unreachable: a restart cannot fix that, so it is not a stall to restart for.
            self.health.lag({})
            # A missed sample (a leader moving, a topic just created) is retried soon.
            self._lag_due = min(self._lag_due, now + LAG_RETRY_S)
            return
        self.health.lag(positions)
        self._restart_stuck(consumer, positions)

    def _restart_stuck(self, consumer: GroupConsumer, positions: Mapping[str, tuple[int, int]]) -> None:
        """Seek a stuck partition to where it stands: the client drops its fetch state for it and
        fetches again. A partition held for its restore is not stuck: it waits on purpose."""
        stuck = set(self.health.stuck(STUCK_RESTART_S))
        self._restarted = {name: at for name, at in self._restarted.items() if name in stuck}
        for name in sorted(stuck):
            position = positions.get(name, (None, 0))[0]
            if position is None or self._restarted.get(name) == position:
                continue
            topic, _, number = name.rpartition("/")
            tp = Partition(topic, int(number))
            if tp in self.held or (self.states is not None and self.states.waits_for_restore(tp)):
                continue
            self._restarted[name] = position
            self.metrics.fetch_restarts.inc()
            log.warning(
                "partition stuck with messages waiting; fetch restarted", partition=name, offset=position
            )
            consumer.resume([tp])
            consumer.seek(tp, position)

    def _account(self, processed: list[tuple[Record, Processed]], batch_seconds: float) -> None:
        """Count a batch only once it is committed, so a retried batch is not counted twice."""
        m = self.metrics
        now = time.time()
        # Counted per batch: a labelled inc costs ~3.5 us, a tenth of a skipped message's work.
        consumed = Counter((record.topic, result.outcome.value) for record, result in processed)
        for (topic, outcome), count in consumed.items():
            m.messages.labels(topic, outcome).inc(count)
        m.processing_seconds.observe_all(result.seconds for _, result in processed)
        read = [result for _, result in processed if result.dead_letter is None]
        m.decode_seconds.observe_all(result.decode_seconds for result in read)
        m.interpret_seconds.observe_all(result.interpret_seconds for result in read)
        internal = self.states.topics.patients if self.states is not None else None
        ages = [
            (record.topic, now - record.timestamp_ms / 1000)
            for record, result in processed
            if record.timestamp_ms is not None and (record.topic != internal or result.alerts)
        ]
        # A timestamp from the future is the sender's clock, not a fast page: observed as 0 it
        # hid real delays (issue 28). Counted instead; an old one cannot be told from a delay.
        m.end_to_end_seconds.observe_all(max(age, 0.0) for _, age in ages if age >= -CLOCK_SKEW_TOLERANCE_S)
        for topic, age in ages:
            if age < -CLOCK_SKEW_TOLERANCE_S:
                m.clock_skew.labels(topic).inc()
        for record, result in processed:
            if self._debug:  # each message's fate, by position only: never its contents
                log.debug(
                    "message processed",
                    outcome=result.outcome.value,
                    results=len(result.interpretations) or len(result.results),
                    alerts=len(result.alerts),
                    correlation_id=self._correlation_id(record),
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
            if result.outcome is Outcome.SKIPPED and not result.recognition_gap:
                continue  # nearly every record: nothing more to count or log
            if result.recognition_gap:
                m.recognition_gaps.labels(record.topic).inc()
                log.warning(
                    "message names infliximab but no result was recognised; check the rule set's codes",
                    correlation_id=self._correlation_id(record),
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
            for interpretation in result.interpretations:
                m.interpretations.labels(interpretation.analyte.value, interpretation.finding.value).inc()
            for alert in result.alerts:
                m.alerts.labels(alert.category.value, alert.severity.value).inc()
                if alert.review_reason is not None:
                    m.reviews.labels(alert.analyte, alert.review_reason.value).inc()
                log.info(
                    "alert published",
                    category=alert.category.value,
                    severity=alert.severity.value,
                    action=alert.action.value,
                    incident_key=alert.incident_key,
                    event_id=alert.event_id,
                    correlation_id=self._correlation_id(record),
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
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
                    correlation_id=self._correlation_id(record),
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
        m.batch_seconds.observe(batch_seconds)
        m.last_processed.set(time.time())


def _settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector's full passes off the alert path.

    A full pass walks every tracked object: over the ~60,000 the service holds once set up (the
    libraries, the rule set, the clients) it took 44-60 ms when traced, and unfrozen such passes
    recur while it runs, each a pause on the alert path. What exists once the service is set
    up lives as long as the process, so it is frozen out of every pass (`gc.freeze`), and young
    passes run less often: the loop makes few reference cycles (a record's objects are freed by
    reference counting).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _rewind(consumer: GroupConsumer, batch: _Batch) -> None:
    """Back to the first offset of an aborted batch, on every partition still assigned."""
    owned = consumer.assignment()
    for tp, offset in batch.first.items():
        if tp in owned:
            try:
                consumer.seek(tp, offset)
            except ClientError as err:
                # Going on would skip the aborted records. A restart re-reads from the last
                # committed offsets, which is the same rewind, done by the group.
                log.error("could not rewind an aborted batch; exiting for a restart", error=err.name)
                raise


def _fatal_message(err: ClientError, settings: Settings) -> str:
    """What went wrong and which setting or ACL fixes it."""
    name, failure = err.name, err.failure
    if failure is Failure.FENCED:
        # A fence on a transaction younger than the transaction timeout (older ones are the
        # broker's own abort after an outage, survived in delivery.survive_fence).
        return (
            f"{name}: another instance took over this instance's transactional id; "
            "give each instance its own TDM_INSTANCE_ID"
        )
    if failure is Failure.NOT_AUTHORISED_GROUP:
        return (
            f"{name}: not authorised to use consumer group {settings.group_id} (TDM_GROUP_ID): "
            f"grant READ on Group:{settings.group_id} (README 'Security')"
        )
    if failure is Failure.NOT_AUTHORISED_TRANSACTIONAL_ID:
        return (
            f"{name}: not authorised to use transactional id {settings.group_id}-{settings.instance_id}: "
            f"grant WRITE on TransactionalId prefixed {settings.group_id}- (README 'Security'), "
            "or set TDM_DELIVERY=at_least_once"
        )
    if failure is Failure.NOT_AUTHORISED_TOPIC:
        return f"{name}: not authorised for a topic this service reads or writes (README 'Security')"
    if failure is Failure.NOT_AUTHORISED_CLUSTER:
        return f"{name}: not authorised for a cluster operation (README 'Security')"
    return f"{name}: {err.detail[:300]} (check credentials and ACLs; restarting will not help)"


def source_of(record: Record) -> SourceRef:
    return SourceRef(topic=record.topic, partition=record.partition, offset=record.offset)


def correlation_id(record: Record, *, internal: bool = False) -> str:
    """The id that ties a lab message to its alerts, dead letter and log lines.

    A `tdm.correlation_id` header set upstream is kept (if it is a plain token); otherwise the
    message's Kafka coordinates serve, which stay the same when the message is reprocessed. On
    the internal patient topic (`internal`) the header is the intake's own, written from the lab
    message (its upstream id or coordinates): it is carried through the hop as it is.
    """
    for key, value in record.headers:
        if key == CORRELATION_HEADER:
            text = value.decode(errors="replace") if value else ""
            if internal and text:
                return text
            if _CORRELATION_TEXT.fullmatch(text) and not _DIGITS_ONLY.fullmatch(text):
                return text
    return f"{record.topic}/{record.partition}/{record.offset}"
