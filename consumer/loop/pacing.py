"""When a batch commits, and so how long a poll may wait.

A batch closes after `TDM_BATCH_MAX_RECORDS` records or `TDM_COMMIT_INTERVAL_MS`; one holding
something to page commits as soon as the loop is caught up with the feed (paced by the cost of
the last commit); one behind the feed runs longer, inside the transaction timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from consumer.settings import Settings

POLL_MAX_RECORDS = 500  # per poll; a batch (transaction) spans polls up to TDM_BATCH_MAX_RECORDS
BEHIND_INTERVALS = 10  # how much longer than the interval a batch may run while behind the feed


class Paced(Protocol):
    opened: float
    urgent: bool
    behind: bool

    def __len__(self) -> int: ...


@dataclass
class Pacing:
    interval_s: float
    batch_max_records: int
    transaction_timeout_s: float
    poll_timeout_ms: int
    clock: Callable[[], float] = time.monotonic
    # When the last commit finished and how long it took (with its accounting).
    last_commit_at: float = field(default=0.0)
    last_commit_took: float = field(default=0.0)

    @classmethod
    def from_settings(cls, settings: Settings, clock: Callable[[], float] = time.monotonic) -> Pacing:
        return cls(
            interval_s=settings.commit_interval_ms / 1000,
            batch_max_records=settings.batch_max_records,
            transaction_timeout_s=settings.transaction_timeout_ms / 1000,
            poll_timeout_ms=settings.poll_timeout_ms,
            clock=clock,
        )

    def committed(self, took_s: float) -> None:
        self.last_commit_at = self.clock()
        self.last_commit_took = took_s

    def room(self, batch: Paced | None) -> int:
        """Records the next poll may bring: the batch never outgrows TDM_BATCH_MAX_RECORDS."""
        return min(POLL_MAX_RECORDS, self.batch_max_records - (len(batch) if batch else 0))

    def wait_ms(self, batch: Paced | None) -> int:
        """How long the next poll may wait: until the open batch is due to commit."""
        if batch is None:
            return self.poll_timeout_ms
        due = batch.opened + self.max_age(batch)
        if batch.urgent:
            due = min(due, self.urgent_from())
        # Never 0 (kafka-python K4).
        return max(1, int((due - self.clock()) * 1000))

    def urgent_from(self) -> float:
        """When a batch with something to page may commit early: once the loop has spent as long
        since the last commit as that commit took.

        A commit costs the loop 10-40 ms however few records it carries. Committing every such
        batch at once made 30 commits a second at 2,000 msgs/s (2% infliximab), half the loop's
        time; with processing the loop was 90% busy, fell behind, and alerts waited seconds.
        Capping commits at half the loop's time keeps it ahead of the feed and an alert's wait
        to about three commits.
        """
        return self.last_commit_at + self.last_commit_took

    def due(self, batch: Paced, caught_up: bool) -> bool:
        """Full, or as old as the interval; early with something to page; late when behind.

        Behind the feed (a poll came back full), a batch runs to TDM_BATCH_MAX_RECORDS, up to
        BEHIND_INTERVALS intervals: a commit costs the loop the same 15-80 ms for 700 records
        as for 5,000, and in 100 ms batches commits took 45% of the loop while it caught up.
        An alert in such a batch waits behind the backlog anyway.
        """
        now = self.clock()
        return (
            (batch.urgent and caught_up and now >= self.urgent_from())
            or len(batch) >= self.batch_max_records
            or now - batch.opened >= self.max_age(batch)
        )

    def max_age(self, batch: Paced) -> float:
        if not batch.behind:
            return self.interval_s
        # Well inside the transaction timeout, which the broker enforces by fencing us.
        return max(self.interval_s, min(self.interval_s * BEHIND_INTERVALS, self.transaction_timeout_s / 4))
