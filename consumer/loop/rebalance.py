"""The group's rebalance callbacks (seam.Rebalance), run inside the consumer's poll."""

from __future__ import annotations

from collections.abc import Callable, Collection

from consumer.clients.seam import GroupConsumer, Partition
from consumer.fatal import FatalError
from consumer.loop.batch import Batches
from consumer.loop.lag import LagMeter
from consumer.loop.topology import R, Topology


class RebalanceListener:
    def __init__(
        self,
        consumer: Callable[[], GroupConsumer | None],
        batches: Batches[R],
        topology: Topology[R],
        lag: LagMeter,
    ) -> None:
        self._consumer = consumer  # set once subscribed; the callbacks run only after that
        self.batches = batches
        self.topology = topology
        self.lag = lag

    def revoked(self, revoked: Collection[Partition]) -> None:
        # Before the partitions go: close the open batch, so nothing is published for a
        # partition this instance no longer owns and the next owner starts where we stopped.
        if (consumer := self._consumer()) is not None:
            self.batches.close_for_rebalance(consumer)
        self.topology.revoked(revoked)
        self.batches.waiting.revoked(revoked)
        self.lag.assignment_changed("revoked", revoked)

    def lost(self, lost: Collection[Partition]) -> None:
        # The commit that closing the batch attempts is refused, so the batch is aborted and
        # rewound: the same path as a commit refused for any other reason.
        self.revoked(lost)

    def assigned(self, assigned: Collection[Partition]) -> None:
        consumer = self._consumer()
        if consumer is None:
            return
        try:
            self.topology.assigned(assigned, consumer)
        except FatalError as fatal:  # raised after the poll (kafka-python K5)
            self.batches.fatal = fatal
            return
        self.lag.assignment_changed("assigned", assigned)
