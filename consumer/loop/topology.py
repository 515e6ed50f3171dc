"""What the loop needs from an app: a stage per topic, and hooks for the batch and the partitions.

The loop owns polling, batches and commits; it knows nothing of lab results. Routing is
settled when the topology is built (as Kafka Streams' `ProcessorTopology` does per source
topic), never decided again per record.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol, TypeVar

from consumer.clients.seam import GroupConsumer, Partition, Record


class Result(Protocol):
    @property
    def urgent(self) -> bool:
        """Something to page (or on its way to the patient's state): commit once caught up."""


R = TypeVar("R", bound=Result)
R_co = TypeVar("R_co", bound=Result, covariant=True)


class Stage(Protocol[R_co]):
    def process(self, record: Record) -> R_co:
        """Read one record and send its outputs into the open batch; never raises for a bad
        record (it becomes a dead letter), only for Kafka's or the disk's failures, or NotYet
        (`consumer.loop.waiting`) when the record's partition should wait and try it again."""


class Topology(Protocol[R]):
    def stage_for(self, topic: str) -> Stage[R]: ...

    # -- partitions (called from the rebalance listener, inside the consumer's poll) ----------

    def assigned(self, partitions: Collection[Partition], consumer: GroupConsumer) -> None: ...

    def revoked(self, partitions: Collection[Partition]) -> None:
        """After the open batch was committed (or aborted): the partitions are gone."""

    # -- before and after a poll -------------------------------------------------------------

    def chores_due(self) -> bool:
        """Work to do before the next poll that must not run inside an open batch (a patient
        partition's restore, the notifier's re-sends to Alertmanager)."""

    def chores(self, consumer: GroupConsumer) -> None: ...

    def punctuate_due(self) -> bool:
        """Timed work is due (the notifier's retries of a waiting event)."""

    def punctuate(self) -> bool:
        """Do the timed work inside the open batch (opened for it if none is), its outputs
        committed with the batch's; True if it produced something to commit soon."""

    def offsets(self, read: Mapping[Partition, int]) -> Mapping[Partition, int]:
        """The offsets to commit for a batch that read up to `read` (a stage may hold some back)."""

    def admit(
        self, consumer: GroupConsumer, polled: Mapping[Partition, Sequence[Record]]
    ) -> Mapping[Partition, Sequence[Record]]:
        """The polled records that may be processed now; the rest are read again later."""

    def holds(self, partition: Partition) -> bool:
        """Kept from processing on purpose (so not stuck)."""

    # -- the batch ---------------------------------------------------------------------------

    def batch_opened(self) -> None: ...

    def batch_committed(self, processed: Sequence[tuple[Record, R]], seconds: float) -> None: ...

    def batch_discarded(self) -> None: ...

    def close(self) -> None: ...
