"""The service's patient states: one store per owned partition, written through the changelog.

Within a batch (a Kafka transaction) writes go to a cache that reads see (read-your-writes)
and to the changelog topic. Only after the transaction commits are they applied to the local
store, together with the changelog offset they reach; an aborted batch just drops the cache.
A crash between commit and apply leaves the store behind its changelog, which the restore on
the next assignment replays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import structlog

from consumer.clients.seam import Partition, Reader, Record, Sent
from consumer.delivery import Delivery
from consumer.fatal import FatalError
from consumer.metrics import Metrics
from consumer.settings import Settings
from consumer.state.store import Entry, PartitionStore, StoreError, StoreUnwritable, record_digest
from consumer.state.topics import StateTopics
from interpretation import Alert, LabResult, RuleSet, SourceRef
from interpretation.acknowledgement import Acknowledgement, AckOutcome, acknowledge
from interpretation.correlation import Correlated, correlate_result, record_treatment
from interpretation.follow_ups import fire_due
from interpretation.patient_state import PatientState
from interpretation.treatment import TreatmentRecord

log = structlog.get_logger("tdm_alerts.state")

LAST_SEEN_HEADER = "tdm.last_seen"  # epoch seconds of the write, for expiry after a restore
# Epoch seconds of the patient's next follow-up: a restore indexes deadlines without reading states.
DUE_HEADER = "tdm.due"
RESTORE_CHUNK = 5000  # changelog records applied per SQLite transaction while restoring
EMPTY_POLLS_BEFORE_ASKING = 5  # a partition of only markers: ask the client where it stands
EXPIRY_CHUNK = 1000  # patients expired per batch, so one batch never grows unbounded
TICK_S = 1.0  # how often the loop looks for follow-ups that are due
FIRE_CHUNK = 500  # patients whose follow-ups fire per partition and tick, so one batch stays small


P = ParamSpec("P")
T = TypeVar("T")


def _store_failures_fatal(
    method: Callable[Concatenate[PatientStates, P], T],
) -> Callable[Concatenate[PatientStates, P], T]:
    """A store that cannot be read or written stops the service with a named cause (the
    orchestrator must act); never a dead letter for a result that should page."""

    def guarded(self: PatientStates, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(self, *args, **kwargs)
        except StoreError as err:
            raise store_fatal(err, self.settings) from err

    return guarded


class PatientStates:
    """Owns the stores of the assigned partitions and the open batch's writes."""

    def __init__(
        self,
        settings: Settings,
        topics: StateTopics,
        ruleset: RuleSet,
        delivery: Delivery[Any],
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.ruleset = ruleset
        self.delivery = delivery
        self.metrics = metrics
        self.rules = settings.correlation_rules()
        # The topics whose records are read against a partition's store: the patient topic, and
        # with the input keyed by patient the context topic co-partitioned with it.
        self.topics_read: frozenset[str] = frozenset(
            {topics.patients}
            | ({settings.context_topic} if settings.context_topic and not topics.repartition else set())
            | ({settings.ack_topic} if settings.ack_topic and not topics.repartition else set())
        )
        self.root = Path(settings.state_dir) / topics.changelog
        self.stores: dict[int, PartitionStore] = {}
        self._writes: dict[int, dict[str, Entry | None]] = {}
        self._last_sent: dict[int, Sent] = {}
        self._last_digest: dict[int, int] = {}  # of the batch's last changelog write per partition
        self._expiry_due = 0.0
        self._tick_at = 0.0  # when to look at the deadlines' index again
        self.clock = clock  # the wall clock: deadlines, expiry and `last_seen` are on it
        self.pending: set[int] = set()  # assigned, store open, not yet restored
        self.on_restore_chunk: Callable[[], None] = lambda: None  # a long restore is progress

    # -- assignment ------------------------------------------------------------------------

    def assign(self, partitions: Iterable[int]) -> None:
        """Open each partition's store; it is restored by `restore_pending` before it is used.

        Called from the rebalance callback, so it does no I/O on Kafka: a long restore there
        starves the group's heartbeats and the member is expired (kafka-python K6).
        """
        for partition in partitions:
            if partition not in self.stores:
                path = self.root / f"{partition}.sqlite"
                try:
                    self.stores[partition] = PartitionStore.open_or_rebuild(
                        path, partial(self._rebuilding, partition, "damaged")
                    )
                except StoreError as err:
                    raise store_fatal(err, self.settings) from err
                self.pending.add(partition)

    def _rebuilding(self, partition: int, reason: str, why: str) -> None:
        self.metrics.state_rebuilds.labels(reason).inc()
        log.warning(
            "patient state store set aside; rebuilding it from the changelog",
            partition=partition,
            reason=reason,
            detail=why[:300],
        )

    def waits_for_restore(self, tp: Partition) -> bool:
        """Whether a record of `tp` would be read against a store that is not restored yet."""
        return tp.partition in self.pending and tp.topic in self.topics_read

    @_store_failures_fatal
    def restore_pending(self) -> list[int]:
        """Bring every newly assigned partition up to its changelog; return the ones done."""
        done = sorted(self.pending)
        # One reader for them all: a client per partition cost a bootstrap each (~0.2 s).
        reader = self.delivery.client.reader("restore")
        try:
            tps = [Partition(self.topics.changelog, p) for p in done]
            ends = reader.end_offsets(tps)
            starts = {tp: self._restore_start(reader, tp, ends[tp], self.stores[tp.partition]) for tp in tps}
            self._restore(reader, {tp: (at, ends[tp]) for tp, at in starts.items() if at is not None})
        finally:
            reader.close()
        self.pending.clear()
        self.metrics.state_patients.set(sum(s.count() for s in self.stores.values()))
        return done

    def revoke(self, partitions: Iterable[int]) -> None:
        """Close the stores of partitions given up (the open batch is committed before this)."""
        for partition in partitions:
            store = self.stores.pop(partition, None)
            if store is not None:
                store.close()
            self.pending.discard(partition)
            self._writes.pop(partition, None)
            self._last_sent.pop(partition, None)
            self._last_digest.pop(partition, None)

    def close(self) -> None:
        self.revoke(list(self.stores))

    def _restore_start(self, reader: Reader, tp: Partition, end: int, store: PartitionStore) -> int | None:
        """Where the partition's replay starts, or None when the store holds all there is.

        The changelog is the truth and the store a cache of it: a store that is not a prefix of
        this changelog (ahead of its end, or holding another record at its offset) is emptied and
        rebuilt from the beginning.
        """
        start = store.changelog_offset()
        if start is not None and (why := _not_a_prefix(reader, tp, end, start, store.changelog_digest())):
            self._rebuilding(tp.partition, "not_this_changelog", why)
            store.reset()
            start = None
        if end == 0 or (start is not None and start + 1 >= end):
            return None  # nothing newer than what the store holds: no fetch at all
        return 0 if start is None else start + 1

    def _restore(self, reader: Reader, spans: dict[Partition, tuple[int, int]]) -> None:
        """Replay each partition's changelog from its start to its end (read_committed),
        resumable: every partition at once, so the client fetches them together (one after
        another, each waited for its own first fetch: 100,000 patients in 6 partitions took
        4.0 s on confluent-kafka, see docs/benchmarks.md)."""
        if not spans:
            return
        reader.assign(list(spans))
        for tp, (start, _end) in spans.items():
            if start == 0:
                reader.seek_to_beginning(tp)
            else:
                reader.seek(tp, start)
        began = time.monotonic()
        # Where each partition's reading stands. Until its first fetch, asking confluent-kafka
        # costs a broker round trip (~0.2 s: the committed offset, then the watermarks), and
        # the first polls asked it (a cold restore of 100,000 patients took 9.0 s on it against
        # 3.5 s); once it fetches, the answer is local, and asking kafka-python starts its next
        # fetch early.
        at = {tp: start for tp, (start, _end) in spans.items()}
        applied = dict.fromkeys(spans, 0)
        idle = dict.fromkeys(spans, 0)
        for tp, (start, end) in spans.items():
            log.info("restoring patient state", partition=tp.partition, start=start, end=end)
        reading = set(spans)
        while reading:
            # Short polls: the tail is often only transaction markers or aborted records,
            # which read_committed skips without returning anything.
            polled = reader.poll(100, RESTORE_CHUNK)
            for tp in sorted(reading):
                records = polled.get(tp, [])
                if not records:
                    # Past the markers and aborted records a poll skips; before the first
                    # record a poll may be empty only because the first fetch is not back yet.
                    idle[tp] += 1
                    if applied[tp] or idle[tp] >= EMPTY_POLLS_BEFORE_ASKING:
                        at[tp] = reader.position(tp)
                else:
                    self._apply_chunk(tp, records)
                    applied[tp] += len(records)
                    at[tp] = max(reader.position(tp), records[-1].offset + 1)
                    remaining = max(spans[tp][1] - at[tp], 0)
                    self.metrics.state_restore_remaining.labels(str(tp.partition)).set(remaining)
                    log.info(
                        "restoring patient state",
                        partition=tp.partition,
                        applied=applied[tp],
                        remaining=remaining,
                    )
                if at[tp] >= spans[tp][1]:
                    reading.discard(tp)
                    self._restored(tp.partition, applied[tp], began)

    def _apply_chunk(self, tp: Partition, records: Sequence[Record]) -> None:
        """One poll's records of a partition, in one SQLite transaction with their offset: a
        crash resumes after them."""
        writes: dict[str, Entry | None] = {}
        for record in records:
            writes[(record.key or b"").decode()] = (
                None if record.value is None else (record.value, *_times(record))
            )
        last = records[-1]
        self.stores[tp.partition].apply(writes, last.offset, record_digest(last.key, last.value))
        self.on_restore_chunk()

    def _restored(self, partition: int, applied: int, began: float) -> None:
        self.metrics.state_restore_remaining.labels(str(partition)).set(0)
        self.metrics.state_restore_seconds.observe(time.monotonic() - began)
        log.info(
            "patient state restored",
            partition=partition,
            records=applied,
            seconds=round(time.monotonic() - began, 2),
        )

    # -- processing ------------------------------------------------------------------------

    def _read(self, partition: int, patient_id: str) -> PatientState | None:
        pending = self._writes.get(partition, {})
        if patient_id in pending:
            entry = pending[patient_id]
            return None if entry is None else PatientState.model_validate_json(entry[0])
        stored = self.stores[partition].get(patient_id)
        return None if stored is None else PatientState.model_validate_json(stored)

    def _write(self, partition: int, patient_id: str, state: PatientState | None) -> None:
        now = self.clock()
        value = None if state is None else state.model_dump_json().encode()
        next_due = None if state is None else state.next_due()
        due = None if next_due is None else next_due.timestamp()
        self._writes.setdefault(partition, {})[patient_id] = None if value is None else (value, now, due)
        self._last_digest[partition] = record_digest(patient_id.encode(), value)
        headers = [(LAST_SEEN_HEADER, str(int(now)).encode())]
        if due is not None:
            headers.append((DUE_HEADER, repr(due).encode()))
        self._last_sent[partition] = self.delivery.send(
            self.topics.changelog, patient_id.encode(), value, headers, partition=partition
        )

    @_store_failures_fatal
    def record_treatment(
        self, partition: int, patient_id: str, update: TreatmentRecord | None, *, replace: bool
    ) -> None:
        """A treatment-context record: the patient's record replaced, updated, or deleted."""
        state = self._read(partition, patient_id)
        new = record_treatment(state, patient_id, update, replace=replace)
        if new != state:
            self._write(partition, patient_id, new)

    @_store_failures_fatal
    def correlate(
        self, partition: int, result: LabResult, source: SourceRef, *, arrived_ms: int | None = None
    ) -> Correlated | None:
        """The result read with its patient's state; None when it is not about infliximab.

        `arrived_ms` is the lab message's record timestamp: when the result reached the feed.
        Its follow-ups count from it, not from when this instance happens to read it, so a
        result read again after a crash or a move leaves the same state (the wall clock if the
        record has no timestamp)."""
        state = self._read(partition, result.patient_id)
        read_at = datetime.fromtimestamp(self.clock() if arrived_ms is None else arrived_ms / 1000, UTC)
        done = correlate_result(state, result, source, self.ruleset, rules=self.rules, read_at=read_at)
        if done is not None and done.state != state:
            self._write(partition, result.patient_id, done.state)
        return done

    @_store_failures_fatal
    def acknowledge(
        self, partition: int, ack: Acknowledgement
    ) -> tuple[list[Alert], AckOutcome, datetime | None]:
        """An acknowledgement applied to the patient's state: its events, what became of it, and
        when the incident it names was opened (for the time to acknowledge)."""
        state = self._read(partition, ack.patient_id)
        incident = state.incident(ack.incident_key) if state is not None else None
        new, events, outcome = acknowledge(state, ack, self.ruleset)
        if new != state:
            self._write(partition, ack.patient_id, new)
        return events, outcome, incident.opened_at if incident is not None else None

    @_store_failures_fatal
    def forget(self, partition: int, patient_id: str) -> None:
        """Remove a patient's state (a data-protection request): local store and changelog tombstone."""
        if partition in self.stores and patient_id:
            self._write(partition, patient_id, None)
            self.metrics.state_forgotten.inc()
            log.info("patient state forgotten on request", partition=partition)

    def expiry_due(self, now: float) -> bool:
        """The hourly expiry is due (the loop's punctuate step runs it inside a batch); never
        while a partition waits for its restore: its store is not the changelog's yet."""
        return now >= self._expiry_due and not self.pending

    @_store_failures_fatal
    def expire(self, now: float) -> int:
        """Tombstone patients not seen for the retention time; called with a batch open."""
        if now < self._expiry_due:
            return 0
        self._expiry_due = now + 3600
        before = now - self.settings.patient_retention_days * 86400
        expired = 0
        for partition, store in self.stores.items():
            if partition in self.pending:
                continue  # expired once restored, at the next hour
            for patient_id in store.expired(before, EXPIRY_CHUNK):
                if patient_id not in self._writes.get(partition, {}):
                    self._write(partition, patient_id, None)
                    expired += 1
        if expired:
            self.metrics.state_expired.inc(expired)
            log.info(
                "patient states expired", count=expired, retention_days=self.settings.patient_retention_days
            )
        return expired

    def follow_ups_due(self, now: float) -> bool:
        """A follow-up is due in a restored partition (looked up in the deadlines' index at most
        every TICK_S: a turn of an idle loop costs nothing, a tick never reads every patient)."""
        if now < self._tick_at:
            return False
        self._tick_at = now + TICK_S
        soonest = [
            due
            for partition, store in self.stores.items()
            if partition not in self.pending and (due := store.next_due()) is not None
        ]
        return bool(soonest) and min(soonest) <= now

    @_store_failures_fatal
    def fire_due(self, now: float) -> list[tuple[int, Alert]]:
        """Fire the follow-ups due by `now`, called with a batch open: each patient's state is
        written with its follow-ups marked fired, in the same transaction as their events, so a
        crash or a takeover fires each exactly once. Never in a partition still restoring."""
        when = datetime.fromtimestamp(now, UTC)
        fired: list[tuple[int, Alert]] = []
        for partition, store in self.stores.items():
            if partition in self.pending:
                continue
            for patient_id in store.due(now, FIRE_CHUNK):
                state = self._read(partition, patient_id)
                if state is None:
                    continue
                new, events = fire_due(state, self.ruleset, when, self.rules)
                if new != state:
                    self._write(partition, patient_id, new)
                fired.extend((partition, event) for event in events)
        return fired

    # -- the commit protocol ---------------------------------------------------------------

    @_store_failures_fatal
    def committed(self) -> None:
        """The batch's transaction committed: apply its writes locally with their changelog offsets."""
        for partition, writes in self._writes.items():
            store = self.stores.get(partition)
            sent = self._last_sent.get(partition)
            if store is None or sent is None:
                continue
            store.apply(writes, sent.offset(30), self._last_digest.get(partition))
        self._writes.clear()
        self._last_sent.clear()
        self._last_digest.clear()

    @_store_failures_fatal
    def refresh_gauges(self) -> None:
        """Patients held (a count over each store: called every few seconds, not per batch)."""
        self.metrics.state_patients.set(sum(s.count() for s in self.stores.values()))

    def discarded(self) -> None:
        """The batch was aborted: its writes never happened."""
        self._writes.clear()
        self._last_sent.clear()
        self._last_digest.clear()


VERIFY_S = 10.0  # how long a restore looks for the record its store last applied


def _not_a_prefix(reader: Reader, tp: Partition, end: int, start: int, digest: int | None) -> str | None:
    """Why a store at changelog offset `start` is not a prefix of this changelog, or None if it is."""
    if start >= end:
        return f"the store has applied changelog offset {start}, but the changelog ends at {end}"
    if digest is None:
        return None  # written before digests were kept: its offset is all there is to check
    reader.assign([tp])
    reader.seek(tp, start)
    deadline = time.monotonic() + VERIFY_S
    while reader.position(tp) < end and time.monotonic() < deadline:
        records = reader.poll(100, 1).get(tp, [])
        if not records:
            continue
        first = records[0]
        if first.offset != start:
            # Compacted away after a later write of the same patient, or never there: either
            # way this store cannot be checked, and a rebuild is only a longer restore.
            return f"changelog offset {start}, which the store last applied, is no longer there"
        if record_digest(first.key, first.value) != digest:
            return f"the changelog holds another record at offset {start} than the one the store applied"
        return None
    return f"changelog offset {start}, which the store last applied, could not be read"


def store_fatal(err: StoreError, settings: Settings) -> FatalError:
    """A store that cannot be written: the orchestrator must act (disk, volume, TDM_STATE_DIR)."""
    if isinstance(err, StoreUnwritable):
        return FatalError(
            f"patient state cannot be written under TDM_STATE_DIR={settings.state_dir}: {err} "
            "(free space, make it writable, or point TDM_STATE_DIR at a writable directory)"
        )
    return FatalError(
        f"patient state store damaged while running: {err} (a restart sets it aside and rebuilds it "
        "from the changelog)"
    )


def _times(record: Record) -> tuple[float, float | None]:
    """A changelog record's last write (now, if unreadable) and next deadline (none, if unreadable)."""
    last_seen, due = None, None
    for key, value in record.headers:
        try:
            if key == LAST_SEEN_HEADER:
                last_seen = float(value.decode())
            elif key == DUE_HEADER:
                due = float(value.decode())
        except ValueError:
            continue
    return (time.time() if last_seen is None else last_seen), due
