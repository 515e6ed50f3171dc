"""A patient partition is processed only once its state is restored, whatever the client does.

Read against an empty or stale store, a result would page wrongly, and its write would be
committed with an offset past the history the restore then skips: the damage would last
(issue 27). So a newly assigned patient partition is paused, its records held back if the
client delivers them anyway, its store restored from the changelog before the next poll, and
only then resumed at the first record held.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import structlog

from consumer.clients.seam import ClientError, GroupConsumer, Partition, Record
from consumer.state.manager import PatientStates

log = structlog.get_logger("tdm_alerts.state")


class RestoreGate:
    def __init__(self, states: PatientStates, wait: Callable[[float], object]) -> None:
        self.states = states
        self._wait = wait  # sleeps, but wakes on a stop request
        # Where each stateful partition polled before its restore resumes (its first record held).
        self.held: dict[Partition, int] = {}

    def assigned(self, partitions: Collection[Partition], consumer: GroupConsumer) -> None:
        """Open the stores of newly assigned partitions and pause those waiting for a restore.

        The pause alone is not enough: confluent-kafka applies the assignment only after the
        rebalance callback returns, so the pause does nothing there, and the poll that ran the
        callback can return the partition's records (`admit` holds them back); it saves the fetch.
        """
        states = self.states
        stateful = [tp for tp in partitions if tp.topic in states.topics_read]
        states.assign(tp.partition for tp in stateful)
        # Only what waits for a restore: a partition whose store is already restored (the context
        # topic's, assigned after its input partition) would never be resumed.
        waiting = [tp for tp in stateful if tp.partition in states.pending]
        if waiting:
            consumer.pause(waiting)  # resumed once restored, in `restore`

    def revoked(self, partitions: Collection[Partition]) -> None:
        self.states.revoke(tp.partition for tp in partitions if tp.topic == self.states.topics.patients)
        for tp in partitions:
            self.held.pop(tp, None)

    def due(self) -> bool:
        return bool(self.states.pending)

    def restore(self, consumer: GroupConsumer) -> None:
        states = self.states
        try:
            restored = set(states.restore_pending())
        except ClientError as err:  # retried on the next turn: the partitions stay paused
            log.warning("patient state restore failed; retrying", error=err.name)
            self._wait(1.0)
            return
        ready = [
            tp for tp in consumer.assignment() if tp.topic in states.topics_read and tp.partition in restored
        ]
        consumer.resume(ready)
        for tp in ready:
            if (offset := self.held.pop(tp, None)) is not None:
                # After the resume: librdkafka may take its resume point from the last record
                # it handed out, which was one of the held ones.
                consumer.seek(tp, offset)

    def admit(
        self, consumer: GroupConsumer, polled: Mapping[Partition, Sequence[Record]]
    ) -> Mapping[Partition, Sequence[Record]]:
        """Leave out the records of partitions whose state is not restored yet; read them again later."""
        states = self.states
        if not states.pending or not any(states.waits_for_restore(tp) for tp in polled):
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

    def holds(self, tp: Partition) -> bool:
        return tp in self.held or self.states.waits_for_restore(tp)
