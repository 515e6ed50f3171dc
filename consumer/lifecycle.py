"""A consuming process's lifecycle: connect, build what it runs, subscribe, run the loop, stop.

`tdm-alerts run` (`service.py`) and `tdm-alerts notify` (`notify/service.py`) differ only in
what they build: the topology (their stages by topic), the delivery, and the topics they read.
"""

from __future__ import annotations

import gc
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from consumer.clients import client_for
from consumer.clients.seam import Client, ClientError, GroupConsumer
from consumer.connecting import StopRequested, check_tls_material, fatal_message, with_backoff
from consumer.delivery import Delivery, is_fatal
from consumer.end_offsets import EndOffsets
from consumer.fatal import FatalError
from consumer.health import Health
from consumer.loop.batch import Batches
from consumer.loop.coverage import GroupCoverage
from consumer.loop.lag import LagMeter
from consumer.loop.loop import Loop
from consumer.loop.pacing import Pacing
from consumer.loop.rebalance import RebalanceListener
from consumer.loop.topology import Topology
from consumer.loop.waiting import Waiting
from consumer.metrics import Metrics
from consumer.settings import Settings

log = structlog.get_logger("tdm_alerts.service")
T = TypeVar("T")

# Ready only if the loop turned this recently: a loop stuck on a frozen broker (a commit's
# flush waits up to 30 s) reported ready for 33 s (issue 28). A turn takes milliseconds, a commit
# well under a second, and a long restore beats at every chunk.
READY_TURN_S = 10.0
GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections (Python's default is 700)


@dataclass
class Built:
    """What a process runs: its topology, the topics it reads, and gauges refreshed with lag."""

    topology: Topology[Any]
    topics: list[str]
    pattern: str | None
    every_refresh: Callable[[], None] = lambda: None


class Lifecycle(ABC):
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        delivery: Callable[[Settings, Client], Delivery[Any]],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.client = client_for(settings)
        self.delivery = delivery(settings, self.client)
        self.health = Health(settings.liveness_timeout_s, settings.stall_timeout_s)
        self._stop = threading.Event()
        self._consuming = False
        self._consumer: GroupConsumer | None = None
        self._batches: Batches[Any] | None = None
        self._coverage: GroupCoverage | None = None
        self._end_offsets = EndOffsets(self.client)
        metrics.ready.set_function(lambda: float(self.is_ready()))

    @abstractmethod
    def build(self) -> Built:
        """Check access, make what the topology needs, build it (may raise FatalError)."""

    def request_stop(self) -> None:
        """Finish the batch in hand, commit it, then return from `run` (SIGTERM, SIGINT)."""
        self._stop.set()

    def is_ready(self) -> bool:
        """Consuming as a member of the group, and the loop turned recently (a hung loop is not ready).

        An extra instance the group gave no partitions is ready: it is healthy and takes over
        partitions as soon as another member leaves, so it must not page as not ready.
        """
        fresh = self.health.since_beat() < min(READY_TURN_S, self.settings.liveness_timeout_s)
        consumer, coverage = self._consumer, self._coverage
        return (
            self._consuming
            and not self._stop.is_set()
            and fresh
            and consumer is not None
            and consumer.in_group()
            and not (coverage is not None and coverage.unowned)
        )

    def readiness_detail(self) -> str:
        """A line for /readyz's body beyond "ready" (a process waiting on something says what)."""
        coverage = self._coverage
        if coverage is None or not coverage.unowned:
            return ""
        return (
            f"{len(coverage.unowned)} partition(s) of the subscribed topics owned by no member of "
            "the group; a new assignment was asked for\n"
        )

    def run(self) -> None:
        check_tls_material(self.settings)
        try:
            consumer = self.backoff(self.client.group_consumer, "consumer")
            self.backoff(self.delivery.connect, "producer")
        except StopRequested:
            log.info("stopped before the brokers answered")
            return
        except ClientError as err:
            if is_fatal(err):
                raise FatalError(fatal_message(err, self.settings)) from err
            raise
        self._consumer = consumer
        built: Built | None = None
        try:
            built = self.build()
            loop = self._loop(consumer, built)
            self._consuming = True
            self.health.started()
            _settle_garbage_collector()
            loop.run()
        except StopRequested:
            log.info("stopped before the brokers answered")
        finally:
            self._consuming = False
            self.health.stopped()
            if self._batches is not None and self._batches.open is not None:
                self._batches.abort("stopping")
            if built is not None:
                built.topology.close()
            self.delivery.close()
            self._end_offsets.close()
            if self._coverage is not None:
                self._coverage.close()
            consumer.close()
            log.info("stopped")

    def backoff(self, make: Callable[[], T], what: str) -> T:
        return with_backoff(make, what, self.settings.retry_backoff_max_s, self._stop.is_set)

    def wait(self, seconds: float) -> bool:
        """Sleep, but wake at once on a stop request."""
        return self._stop.wait(seconds)

    def _loop(self, consumer: GroupConsumer, built: Built) -> Loop:
        """The loop's parts around the topology, and the subscription that starts the group's work."""
        pacing = Pacing.from_settings(self.settings)
        waiting = Waiting()  # partitions a stage told to wait (a receiver down)
        batches = self._batches = Batches(
            self.settings,
            self.delivery,
            built.topology,
            metrics=self.metrics,
            health=self.health,
            committed=pacing.committed,
            wait=self._stop.wait,
            waiting=waiting,
        )
        lag = LagMeter(
            self._end_offsets,
            self.metrics,
            self.health,
            held=lambda tp: built.topology.holds(tp) or waiting.holds(tp),
            every_refresh=built.every_refresh,
            waits=waiting.holds,
        )
        coverage = self._coverage = GroupCoverage(
            self.client, self.settings.group_id, built.topics, metrics=self.metrics, health=self.health
        )
        listener = RebalanceListener(lambda: self._consumer, batches, built.topology, lag)
        consumer.subscribe(built.topics, built.pattern, listener)
        s = self.settings
        log.info(
            "consuming",
            client=self.client.name,
            topics=built.topics if not built.pattern else None,
            pattern=built.pattern,
            group=s.group_id,
            delivery=s.delivery,
        )
        return Loop(
            consumer,
            built.topology,
            batches,
            pacing=pacing,
            lag=lag,
            coverage=coverage,
            health=self.health,
            stop=self._stop,
        )


def _settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector's full passes off the alert path.

    A full pass walks every tracked object: over the ~60,000 the service holds once set up (the
    libraries, the rule set, the clients) it took 44-60 ms when traced, and unfrozen such passes
    recur while it runs, each a pause on the alert path. What exists once the service is set
    up lives as long as the process, so it is frozen out of every pass (`gc.freeze`), and young
    passes run less often: the loop makes few reference cycles (a record's objects are freed by
    reference counting).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
