"""The batch: what was read since the last commit, and the one way it ends.

Records are processed as they are polled and their outputs sent into the open batch (a Kafka
transaction, or at least once an unacknowledged send). The batch then either commits, its
outputs and consumed offsets together (see `consumer.delivery`), or is aborted and the consumer
rewound to its first offsets, so every record is processed again by whoever owns it next and
nothing is lost or published twice. This module is the only place that commits or aborts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic

import structlog

from consumer.clients.seam import ClientError, Failure, GroupConsumer, Partition, Record
from consumer.connecting import fatal_message
from consumer.delivery import Delivery, is_fatal
from consumer.fatal import FatalError
from consumer.health import Health
from consumer.loop.topology import R, Topology
from consumer.loop.waiting import Waiting
from consumer.metrics import Metrics
from consumer.settings import Settings

log = structlog.get_logger("tdm_alerts.service")


@dataclass
class Batch(Generic[R]):
    """Records processed since the batch opened, and the offsets to commit for them."""

    opened: float
    first: dict[Partition, int] = field(default_factory=dict)
    next: dict[Partition, int] = field(default_factory=dict)
    processed: list[tuple[Record, R]] = field(default_factory=list)
    # Holds an alert, or a result on its way to the patient's state: once caught up with the
    # feed, commit it now, not at the end of the interval, so a page is readable in milliseconds.
    # Batches of skipped records (~99% of a feed) still fill up to the interval or the size limit.
    urgent: bool = False
    # A poll came back full: the service is behind the feed, and the batch may outgrow the
    # interval (see Pacing.due).
    behind: bool = False

    def __len__(self) -> int:
        return len(self.processed)

    def cover(self, polled: Mapping[Partition, Sequence[Record]]) -> None:
        """Take the offsets first: if processing fails, the rewind must cover every polled record."""
        for tp, records in polled.items():
            self.first.setdefault(tp, records[0].offset)
            self.next[tp] = records[-1].offset + 1

    def cut(self, tp: Partition, offset: int) -> None:
        """Commit `tp` only up to `offset`: that record and the rest were left for later."""
        self.next[tp] = offset

    def add(self, record: Record, result: R) -> None:
        self.processed.append((record, result))
        self.urgent = self.urgent or result.urgent


class Batches(Generic[R]):
    """The open batch and its protocol: open, commit, abort, rewind, close for a rebalance."""

    def __init__(
        self,
        settings: Settings,
        delivery: Delivery[Any],
        topology: Topology[R],
        *,
        metrics: Metrics,
        health: Health,
        committed: Callable[[float], None],
        wait: Callable[[float], object],
        waiting: Waiting | None = None,
    ) -> None:
        self.settings = settings
        self.delivery = delivery
        self.topology = topology
        self.metrics = metrics
        self.health = health
        self._committed = committed  # told how long each commit took (the pacing)
        self._wait = wait  # sleeps, but wakes on a stop request
        # `is None`, not `or`: an empty Waiting is falsy (it has a length), and a batch with its own
        # would hide the lifecycle's waiting partitions from the lag meter and the watchdog.
        self.waiting = Waiting() if waiting is None else waiting
        self.open: Batch[R] | None = None
        self.backoff = 0.5
        # Raised in a rebalance callback (kafka-python K5): the loop raises it after the poll.
        self.fatal: FatalError | None = None
        self.debug = settings.log_level == "DEBUG"

    def include(self, polled: Mapping[Partition, Sequence[Record]]) -> Batch[R]:
        """The open batch, opened now if there is none, covering the polled records."""
        batch = self.open
        if batch is None:
            batch = self.open = Batch(opened=time.monotonic())
            # Offsets first: if opening fails (a transaction refused), the rewind must still
            # cover the polled records, or they would be skipped.
            batch.cover(polled)
            self.delivery.begin()
            self.topology.batch_opened()
            return batch
        batch.cover(polled)
        return batch

    def commit(self, consumer: GroupConsumer) -> None:
        batch = self.open
        if batch is None:
            return
        began = time.perf_counter()
        self.delivery.commit(self.topology.offsets(batch.next), consumer)
        self.open = None
        committed = time.perf_counter()
        if batch.processed:
            self.health.progressed()
        self.backoff = 0.5
        if self.debug:
            log.debug(
                "batch committed",
                records=len(batch.processed),
                took_ms=round((committed - began) * 1000, 1),
                next_offsets={f"{tp.topic}/{tp.partition}": offset for tp, offset in batch.next.items()},
            )
        self.topology.batch_committed(batch.processed, committed - began)
        self._committed(time.perf_counter() - began)  # the accounting is the commit's cost too

    def abort(self, why: str) -> None:
        """Drop the open batch's outputs; its records are processed again by whoever owns them next."""
        self.open = None
        self.topology.batch_discarded()
        try:
            self.delivery.abort()
        except ClientError as err:
            self.raise_if_fatal(err)
        log.info("batch aborted", why=why)

    def raise_if_fatal(self, err: ClientError) -> None:
        """FatalError for what no retry fixes; a fence the delivery recovered from is not that."""
        if is_fatal(err) and not self.delivery.survive_fence(err):
            raise FatalError(fatal_message(err, self.settings)) from err

    def fail(self, consumer: GroupConsumer, err: ClientError) -> None:
        """Abort the batch, rewind to its first offsets, and wait before trying again.

        A commit refused because the group moved on (a rebalance, an expired member) is retried
        at once: waiting only delays the rejoin. Other failures back off up to the maximum.
        """
        self.delivery.failed(err)
        self.raise_if_fatal(err)
        batch = self.open
        self.metrics.batch_failures.inc()
        if err.failure is Failure.REBALANCED:
            self.backoff = 0.1
        log.error(
            "batch failed; will retry", error=err.name, detail=err.detail[:300], retry_in_s=self.backoff
        )
        self.abort("failure")
        if batch is not None:
            self._rewind(consumer, batch)
        self._wait(self.backoff)
        self.backoff = min(self.backoff * 2, self.settings.retry_backoff_max_s)

    def close_for_rebalance(self, consumer: GroupConsumer) -> None:
        """Before partitions go: commit, so the next owner starts where this one stopped."""
        if (batch := self.open) is None:
            return
        try:
            self.commit(consumer)
        except ClientError as err:
            # Another owner re-reads from the last committed offsets. So must we if the
            # partitions come back to us (kafka-python K2).
            self.metrics.batch_failures.inc()
            log.warning("batch not committed before rebalance", error=err.name)
            try:
                self.raise_if_fatal(err)
                self.abort("rebalance")
            except FatalError as fatal:
                self.fatal = fatal
            self._rewind(consumer, batch)

    def _rewind(self, consumer: GroupConsumer, batch: Batch[R]) -> None:
        rewind(consumer, batch)
        self.waiting.rewound(batch.first)

    def finish(self, consumer: GroupConsumer) -> None:
        """On a stop request: the batch in hand is committed, not dropped."""
        try:
            self.commit(consumer)
        except ClientError as err:
            log.warning("last batch not committed; it will be processed again", error=err.name)


def rewind(consumer: GroupConsumer, batch: Batch[Any]) -> None:
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
