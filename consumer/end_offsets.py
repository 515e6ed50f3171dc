"""The input partitions' end offsets, asked of the broker off the processing loop.

Lag is end offset minus position. The position is the consumer's own (no I/O); the end offset
is a broker round trip per partition. Asked on the loop, those round trips stood it still:
on the group consumer's connection each request waits behind the fetch the broker holds open,
and a reader of its own took 1.1 s for 12 partitions on confluent-kafka, once every 10 s, which
set the p99 of alert latency. Here a thread with its own reader asks, and the loop picks the
answer up on a later turn.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping

from consumer.clients.seam import Client, ClientError, Partition, Reader


class EndOffsets:
    """One question in flight at a time, each on a daemon thread (a broker that does not answer
    cannot hold up a stop); the reader is used by one question at a time only."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._reader: Reader | None = None
        self._asking: threading.Thread | None = None
        self._answer: Mapping[Partition, int] | ClientError | None = None

    def ask(self, partitions: Collection[Partition]) -> bool:
        """Start asking for `partitions`' end offsets; False if the last question is unanswered."""
        if self._asking is not None:
            return False
        self._answer = None
        self._asking = threading.Thread(
            target=self._ask, args=(frozenset(partitions),), name="end-offsets", daemon=True
        )
        self._asking.start()
        return True

    def answer(self) -> Mapping[Partition, int] | None:
        """The answer once it has come (raising the ClientError it failed with), else None."""
        if self._asking is None or self._asking.is_alive():
            return None
        self._asking = None
        answer, self._answer = self._answer, None
        if isinstance(answer, ClientError):
            raise answer
        return answer

    def _ask(self, partitions: frozenset[Partition]) -> None:
        try:
            if self._reader is None:
                self._reader = self._client.reader("lag")
            self._answer = self._reader.end_offsets(partitions)
        except ClientError as err:
            self._answer = err
            self._close_reader()  # a new connection next time, in case this one is what failed

    def _close_reader(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()

    def close(self) -> None:
        if self._asking is None or not self._asking.is_alive():
            self._close_reader()
