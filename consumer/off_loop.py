"""Broker questions asked on a side thread, so the processing loop never waits on a round trip.

The loop asks, goes on with its turn, and picks the answer up on a later turn. Each question
runs on a daemon thread (a broker that does not answer cannot hold up a stop) over a connection
of its own, opened on first use and used by one question at a time; a question that fails
closes it, so the next one gets a new connection in case that one is what failed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from consumer.clients.seam import ClientError


class Connection(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Connection)
T = TypeVar("T")


class OffLoop(Generic[C, T]):
    """One question in flight at a time, over the connection `connect` opens."""

    def __init__(self, connect: Callable[[], C], name: str) -> None:
        self._connect = connect
        self._name = name
        self._connection: C | None = None
        self._asking: threading.Thread | None = None
        self._answer: T | ClientError | None = None

    @property
    def busy(self) -> bool:
        """A question is in flight."""
        return self._asking is not None and self._asking.is_alive()

    @property
    def answered(self) -> bool:
        """The last question's answer has come and is not yet taken."""
        return self._asking is not None and not self._asking.is_alive()

    def ask(self, question: Callable[[C], T]) -> bool:
        """Start asking `question`; False if the last one is not yet answered and taken."""
        if self._asking is not None:
            return False
        self._answer = None
        self._asking = threading.Thread(target=self._run, args=(question,), name=self._name, daemon=True)
        self._asking.start()
        return True

    def take(self) -> T | None:
        """The answer that has come (see `answered`), raising the ClientError it failed with; None
        if the question ended without one (an unexpected error, which threading reports)."""
        if not self.answered:
            raise RuntimeError("take() before the answer came")
        self._asking = None
        answer, self._answer = self._answer, None
        if isinstance(answer, ClientError):
            raise answer
        return answer

    def _run(self, question: Callable[[C], T]) -> None:
        try:
            if self._connection is None:
                self._connection = self._connect()
            self._answer = question(self._connection)
        except ClientError as err:
            self._answer = err
            self._close_connection()

    def _close_connection(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close()

    def close(self) -> None:
        """Close the connection, unless a question still uses it (its daemon thread ends with us)."""
        if not self.busy:
            self._close_connection()
