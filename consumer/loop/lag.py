"""Lag per assigned partition, and a partition that is stuck with messages waiting.

The end offsets cost a broker round trip, so they are asked for on a thread
(`consumer/end_offsets.py`) every LAG_REFRESH_S and taken on a later turn of the loop, with the
positions of that turn.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Mapping

import structlog

from consumer.clients.seam import ClientError, GroupConsumer, Partition
from consumer.end_offsets import EndOffsets
from consumer.health import Health
from consumer.metrics import Metrics

log = structlog.get_logger("tdm_alerts.service")

LAG_REFRESH_S = 10.0  # lag does not need sub-second detail
LAG_RETRY_S = 1.0
# A partition with messages waiting whose position has not moved for this long gets its fetch
# restarted in place (a seek to where it stands), once per episode, well before the watchdog's
# TDM_STALL_TIMEOUT_S ends the process: one partition was seen silent for 150 s after a takeover
# while the others flowed (kafka-python K3, issue 27).
STUCK_RESTART_S = 20.0


class LagMeter:
    def __init__(
        self,
        end_offsets: EndOffsets,
        metrics: Metrics,
        health: Health,
        *,
        held: Callable[[Partition], bool],
        every_refresh: Callable[[], None] = lambda: None,
        waits: Callable[[Partition], bool] = lambda tp: False,
    ) -> None:
        self.end_offsets = end_offsets
        self.metrics = metrics
        self.health = health
        self.held = held  # kept from processing on purpose: waiting, not stuck
        self.every_refresh = every_refresh  # other gauges refreshed at the same pace
        # Told by a stage to wait (a receiver down): its lag is shown, but it is not a stall.
        self.waits = waits
        self.due = 0.0  # monotonic time of the next measurement
        self.assigned: set[Partition] = set()
        self._restarted: dict[str, int] = {}  # stuck partitions whose fetch was restarted, at which offset

    def assignment_changed(self, change: str, partitions: Collection[Partition]) -> None:
        if change == "assigned":
            self.assigned |= set(partitions)
        else:
            self.assigned -= set(partitions)
            for tp in partitions:
                with contextlib.suppress(KeyError):  # never measured yet
                    self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        self.metrics.assigned_partitions.set(len(self.assigned))
        self.due = 0.0  # measure the new assignment on the next turn of the loop
        log.info(f"partitions {change}", partitions=sorted(f"{p.topic}/{p.partition}" for p in partitions))

    def measure(self, consumer: GroupConsumer) -> None:
        now = time.monotonic()
        if now >= self.due:
            partitions = consumer.assignment()
            if not partitions or self.end_offsets.ask(partitions):
                self.due = now + LAG_REFRESH_S
                self.every_refresh()
        positions: dict[str, tuple[int, int]] = {}
        try:
            ends = self.end_offsets.answer()
            if ends is None:
                return
            owned = consumer.assignment()
            for tp, end in ends.items():
                if tp in owned:  # not revoked while the question was out
                    position = consumer.position(tp)
                    lag = max(end - position, 0)
                    self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
                    if not self.waits(tp):
                        positions[f"{tp.topic}/{tp.partition}"] = (position, lag)
        except ClientError as err:  # a missed sample is not worth failing the loop for
            log.warning("could not measure consumer lag", error=err.name)
            # Cluster unreachable: a restart cannot fix that, so it is not a stall to restart for.
            self.health.lag({})
            # A missed sample (a leader moving, a topic just created) is retried soon.
            self.due = min(self.due, now + LAG_RETRY_S)
            return
        self.health.lag(positions)
        self._restart_stuck(consumer, positions)

    def _restart_stuck(self, consumer: GroupConsumer, positions: Mapping[str, tuple[int, int]]) -> None:
        """Seek a stuck partition to where it stands: the client drops its fetch state for it and
        fetches again. A partition held for its restore is not stuck: it waits on purpose."""
        stuck = set(self.health.stuck(STUCK_RESTART_S))
        self._restarted = {name: at for name, at in self._restarted.items() if name in stuck}
        for name in sorted(stuck):
            position = positions.get(name, (None, 0))[0]
            if position is None or self._restarted.get(name) == position:
                continue
            topic, _, number = name.rpartition("/")
            tp = Partition(topic, int(number))
            if self.held(tp):
                continue
            self._restarted[name] = position
            self.metrics.fetch_restarts.inc()
            log.warning(
                "partition stuck with messages waiting; fetch restarted", partition=name, offset=position
            )
            consumer.resume([tp])
            consumer.seek(tp, position)

    def close(self) -> None:
        self.end_offsets.close()
