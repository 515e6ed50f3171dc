"""Client calls that outlive the timeout they were given.

librdkafka's `send_offsets_to_transaction` does not keep its own timeout
(confluentinc/librdkafka#5456, and #5511 for a coordinator gone from the metadata). Here it
blocked the loop after a broker outage, on a producer created after the broker was back, until
the stall watchdog ended the process two minutes later (`TDM_STALL_TIMEOUT_S`). A call told
to give up after T seconds that has not returned T + a grace later will not return: the
watchdog (`consumer/health.py`) asks `overdue` and ends the process at once, and a fresh one
takes over (with exactly-once delivery nothing is lost or sent twice).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Past its own timeout, how long a call may still take to hand its answer back (a thread
# switch, a callback served) before it counts as hung.
GRACE_S = 10.0


@dataclass(frozen=True)
class Overdue:
    doing: str
    timeout_s: float
    late_s: float  # beyond its timeout

    def describe(self) -> str:
        return (
            f"the client's {self.doing} call has not returned "
            f"{self.late_s:.0f} s after its {self.timeout_s:.0f} s timeout"
        )


class Deadlines:
    """The bounded client calls in progress, on any thread, read by the watchdog's thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._open: dict[int, tuple[str, float, float]] = {}  # token: (doing, started, timeout)
        self._tokens = itertools.count()
        self._lock = threading.Lock()

    @contextmanager
    def bounded(self, doing: str, timeout_s: float) -> Iterator[None]:
        """Around a call the client was told to give up on after `timeout_s`."""
        token = next(self._tokens)
        with self._lock:
            self._open[token] = (doing, self._clock(), timeout_s)
        try:
            yield
        finally:
            with self._lock:
                del self._open[token]

    def overdue(self, grace_s: float = GRACE_S) -> Overdue | None:
        """The call furthest past its timeout + `grace_s`, if one is."""
        now = self._clock()
        with self._lock:
            calls = list(self._open.values())
        late = [
            Overdue(doing, timeout, now - started - timeout)
            for doing, started, timeout in calls
            if now - started >= timeout + grace_s
        ]
        return max(late, key=lambda call: call.late_s, default=None)


# The process's one register: a client adapter records its calls in it, the watchdog reads it.
DEADLINES = Deadlines()
