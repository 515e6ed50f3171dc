"""Partitions told to wait: a stage could not process a record yet (its receiver is down).

Only that partition waits, not the service: it is rewound to the record, paused, and resumed
when the stage said to try again; the other partitions go on (issue 25). Its waiting is not
a stall, so the watchdog does not restart a process that is waiting on purpose.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence

import structlog

from consumer.clients.seam import GroupConsumer, Partition, Record

log = structlog.get_logger("tdm_alerts.service")


class NotYet(Exception):
    """Raised by a stage for a record it cannot process now: try it again in `after_s`."""

    def __init__(self, after_s: float, why: str) -> None:
        super().__init__(why)
        self.after_s, self.why = after_s, why


class Waiting:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.at: dict[Partition, int] = {}  # where each waiting partition resumes
        self.until: dict[Partition, float] = {}

    def hold(self, consumer: GroupConsumer, tp: Partition, offset: int, later: NotYet) -> None:
        self.at[tp] = offset
        self.until[tp] = self.clock() + later.after_s
        consumer.seek(tp, offset)
        consumer.pause([tp])
        log.info(
            "partition waits before its next record",
            partition=f"{tp.topic}/{tp.partition}",
            offset=offset,
            retry_in_s=round(later.after_s, 2),
            why=later.why,
        )

    def due(self) -> bool:
        now = self.clock()
        return any(until <= now for until in self.until.values())

    def release(self, consumer: GroupConsumer) -> None:
        now = self.clock()
        ready = [tp for tp, until in self.until.items() if until <= now]
        owned = consumer.assignment()
        consumer.resume([tp for tp in ready if tp in owned])
        for tp in ready:
            offset = self.at.pop(tp)
            del self.until[tp]
            if tp in owned:
                # After the resume: librdkafka may take its resume point from the last record
                # it handed out.
                consumer.seek(tp, offset)

    def admit(
        self, consumer: GroupConsumer, polled: Mapping[Partition, Sequence[Record]]
    ) -> Mapping[Partition, Sequence[Record]]:
        """Leave out what a client fetched for a waiting partition before its pause took hold."""
        if not self.at or not any(tp in self.at for tp in polled):
            return polled
        for tp in polled:
            if tp in self.at:
                consumer.seek(tp, self.at[tp])
        return {tp: records for tp, records in polled.items() if tp not in self.at}

    def rewound(self, first: Mapping[Partition, int]) -> None:
        """An aborted batch went back to `first`: a waiting partition resumes there, not later."""
        for tp, offset in first.items():
            if tp in self.at:
                self.at[tp] = min(self.at[tp], offset)

    def revoked(self, partitions: Collection[Partition]) -> None:
        for tp in partitions:
            self.at.pop(tp, None)
            self.until.pop(tp, None)

    def holds(self, tp: Partition) -> bool:
        return tp in self.at

    def __len__(self) -> int:
        return len(self.at)
