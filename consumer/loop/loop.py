"""One turn of the loop, as Kafka Streams' `StreamThread.runOnce`: pace, punctuate, poll, hand
each record to the stage for its topic, commit when due, back off on failure."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from consumer.clients.seam import ClientError, GroupConsumer, Partition, Record
from consumer.health import Health
from consumer.loop.batch import Batches
from consumer.loop.coverage import GroupCoverage
from consumer.loop.lag import LagMeter
from consumer.loop.pacing import Pacing
from consumer.loop.topology import R, Topology
from consumer.loop.waiting import NotYet


class Loop:
    def __init__(
        self,
        consumer: GroupConsumer,
        topology: Topology[R],
        batches: Batches[R],
        *,
        pacing: Pacing,
        lag: LagMeter,
        coverage: GroupCoverage,
        health: Health,
        stop: threading.Event,
    ) -> None:
        self.consumer = consumer
        self.topology = topology
        self.batches = batches
        self.pacing = pacing
        self.lag = lag
        self.coverage = coverage
        self.health = health
        self.stop = stop

    def run(self) -> None:
        while not self.stop.is_set():
            self.run_once()
        self.batches.finish(self.consumer)

    def run_once(self) -> None:
        consumer, batches, pacing = self.consumer, self.batches, self.pacing
        self.health.beat()
        self.health.member(consumer.in_group())
        self.lag.measure(consumer)
        try:
            if self.coverage.watch(consumer):
                batches.commit(consumer)  # the batch in hand is not cut by the revocation
                consumer.rejoin()
            if self.topology.chores_due():
                # A restore can outlast the transaction timeout: commit what is in hand first,
                # so no transaction stays open across it.
                batches.commit(consumer)
                self.topology.chores(consumer)
            if self.topology.punctuate_due():
                # Timed work (a receiver's retry) runs inside a batch, so what it writes commits
                # with the offsets it settles, on an idle topic too.
                ticked = batches.include({})
                if self.topology.punctuate():
                    ticked.urgent = True
            if batches.waiting.due():
                batches.waiting.release(consumer)
            room = pacing.room(batches.open)
            polled = consumer.poll(pacing.wait_ms(batches.open), room)
            if batches.fatal is not None:
                raise batches.fatal
            polled = self.topology.admit(consumer, batches.waiting.admit(consumer, polled))
            if polled:
                self._process(polled)
            # A poll that filled up means a backlog: there, large batches catch up fastest and
            # an alert's wait is the backlog's, so only a caught-up batch commits early.
            caught_up = sum(len(records) for records in polled.values()) < room
            batch = batches.open
            if batch is not None and not caught_up:
                batch.behind = True
            if batch is not None and pacing.due(batch, caught_up):
                batches.commit(consumer)
        except ClientError as err:
            batches.fail(consumer, err)

    def _process(self, polled: Mapping[Partition, Sequence[Record]]) -> None:
        batch = self.batches.include(polled)
        for tp, records in polled.items():
            stage = self.topology.stage_for(tp.topic)
            for record in records:
                try:
                    result = stage.process(record)
                except NotYet as later:
                    # This partition waits from this record on; the others go on.
                    batch.cut(tp, record.offset)
                    self.batches.waiting.hold(self.consumer, tp, record.offset, later)
                    break
                batch.add(record, result)
