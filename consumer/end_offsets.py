"""The input partitions' end offsets, asked of the broker off the processing loop.

Lag is end offset minus position. The position is the consumer's own (no I/O); the end offset
is a broker round trip per partition. Asked on the loop, those round trips stood it still:
on the group consumer's connection each request waits behind the fetch the broker holds open,
and a reader of its own took 1.1 s for 12 partitions on confluent-kafka, once every 10 s, which
set the p99 of alert latency. Here a thread with its own reader asks, and the loop picks the
answer up on a later turn.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from consumer.clients.seam import Client, Partition, Reader
from consumer.off_loop import OffLoop


class EndOffsets:
    """End offsets asked on a reader of its own, off the loop (see `OffLoop`)."""

    def __init__(self, client: Client) -> None:
        self._asking: OffLoop[Reader, Mapping[Partition, int]] = OffLoop(
            lambda: client.reader("lag"), "end-offsets"
        )

    def ask(self, partitions: Collection[Partition]) -> bool:
        """Start asking for `partitions`' end offsets; False if the last question is unanswered."""
        wanted = frozenset(partitions)
        return self._asking.ask(lambda reader: reader.end_offsets(wanted))

    def answer(self) -> Mapping[Partition, int] | None:
        """The answer once it has come (raising the ClientError it failed with), else None."""
        return self._asking.take() if self._asking.answered else None

    def close(self) -> None:
        self._asking.close()
