"""Whether the service is alive and making progress, told honestly to probes and the watchdog.

The loop beats once a turn. Liveness fails when it has not turned within a bound (a hung
client); a stall is lag at the broker with no record processed for a longer bound, or one
partition with messages waiting whose position has not moved for that bound. A process that
cannot recover in place (kafka-python K3: 4 minutes without progress after UnknownMemberId, a
100% CPU spin in poll) exits, and the orchestrator starts a fresh one (with exactly-once
delivery nothing is lost or sent twice).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from consumer.clients.deadlines import DEADLINES, Deadlines

# A re-join completes within the rebalance timeout (60 s, MAX_POLL_INTERVAL_MS); longer out of
# the group is a hung join (kafka-python K3, seen in CI and `make bench`), or a broker outage
# long enough that a fresh start costs nothing.
MEMBERSHIP_TIMEOUT_S = 90.0


@dataclass
class Health:
    """The loop's heartbeat and progress, read by probes (another thread) and the watchdog."""

    liveness_timeout_s: float
    stall_timeout_s: float
    clock: Callable[[], float] = time.monotonic
    # Client calls in progress with their own timeouts (librdkafka can outlive one).
    deadlines: Deadlines = field(default_factory=lambda: DEADLINES)
    _beat: float = field(init=False)
    _progress: float = field(init=False)
    _lag: int = field(init=False, default=0)
    # Partitions with messages waiting: (position, since when it has been there).
    _waiting: dict[str, tuple[int, float]] = field(init=False, default_factory=dict)
    _outside_since: float | None = field(init=False, default=None)  # not a group member since
    # Subscribed partitions the group left to nobody (`loop/coverage.py`), since when.
    _unowned: tuple[int, float] | None = field(init=False, default=None)
    _running: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._beat = self._progress = self.clock()

    def started(self) -> None:
        self._running = True
        self._beat = self._progress = self.clock()

    def stopped(self) -> None:
        self._running = False

    def beat(self) -> None:
        """One turn of the loop (or a chunk of a long restore)."""
        self._beat = self.clock()

    def progressed(self) -> None:
        """Records were processed and committed (or a chunk of state restored)."""
        self._beat = self._progress = self.clock()

    def restored_chunk(self) -> None:
        """A chunk of patient state restored: progress, for the loop and the partitions waiting."""
        self._beat = self._progress = self.clock()
        self._waiting = {name: (position, self._progress) for name, (position, _) in self._waiting.items()}

    def lag(self, positions: Mapping[str, tuple[int, int]]) -> None:
        """The latest lag at the broker, as each partition's (position, lag); none means nothing
        to make progress on. Per partition, so one that stops while others move is seen
        (kafka-python K3 left some unfetched after a rebalance)."""
        now = self.clock()
        self._lag = sum(lag for _, lag in positions.values())
        if self._lag == 0:
            self._progress = now
        waiting: dict[str, tuple[int, float]] = {}
        for name, (position, lag) in positions.items():
            if lag > 0:
                before = self._waiting.get(name)
                waiting[name] = before if before is not None and before[0] == position else (position, now)
        self._waiting = waiting

    def stuck(self, after_s: float) -> list[str]:
        """Partitions with messages waiting whose position has not moved for `after_s` or more."""
        now = self.clock()
        return sorted(name for name, (_, since) in self._waiting.items() if now - since >= after_s)

    def member(self, joined: bool) -> None:
        """Whether the consumer is a stable member of its group, as seen on this turn."""
        if joined:
            self._outside_since = None
        elif self._outside_since is None:
            self._outside_since = self.clock()

    def unowned(self, count: int) -> None:
        """How many subscribed partitions the group leaves to nobody, as last confirmed."""
        if not count:
            self._unowned = None
        elif self._unowned is None:
            self._unowned = (count, self.clock())
        else:
            self._unowned = (count, self._unowned[1])

    def since_beat(self) -> float:
        return self.clock() - self._beat

    def alive(self) -> bool:
        return not self._running or self.since_beat() < self.liveness_timeout_s

    def stalled(self) -> str | None:
        """Why the service should be restarted, or None."""
        if not self._running:
            return None
        if (hung := self.deadlines.overdue()) is not None:
            return hung.describe()
        if self.since_beat() >= self.stall_timeout_s:
            return f"the main loop has not turned for {self.since_beat():.0f} s"
        outside = self.clock() - self._outside_since if self._outside_since is not None else 0.0
        if outside >= min(self.stall_timeout_s, MEMBERSHIP_TIMEOUT_S):
            # A join that never completes (kafka-python K3).
            return f"not a member of the consumer group for {outside:.0f} s"
        if self._unowned is not None:
            count, since = self._unowned
            if (left := self.clock() - since) >= min(self.stall_timeout_s, MEMBERSHIP_TIMEOUT_S):
                # New assignments asked for did not help: a fresh member joins with fresh metadata.
                return f"{count} subscribed partition(s) owned by no member of the group for {left:.0f} s"
        idle = self.clock() - self._progress
        if self._lag > 0 and idle >= self.stall_timeout_s:
            return f"no record processed for {idle:.0f} s while {self._lag} messages wait at the broker"
        for name, (position, since) in sorted(self._waiting.items()):
            if (still := self.clock() - since) >= self.stall_timeout_s:
                return f"partition {name} stuck at offset {position} for {still:.0f} s while messages wait"
        return None


class Watchdog:
    """Checks `health` every few seconds; on a stall calls `on_stall(reason)` once."""

    def __init__(self, health: Health, on_stall: Callable[[str], None], every_s: float = 5.0) -> None:
        self._health = health
        self._on_stall = on_stall
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            if (reason := self._health.stalled()) is not None:
                self._on_stall(reason)
                return
