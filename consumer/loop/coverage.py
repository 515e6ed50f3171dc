"""Partitions of the subscribed topics that no member of the group owns.

A group can settle with partitions nobody consumes: kafka-python's leader, started before it had
a topic's metadata, assigned that topic to nobody ("No partition metadata for topic") and every
member stayed stable (kafka-python K9). Nothing else sees it: no lag is measured for a partition
no member owns, readiness is membership, and the watchdog watches only what this member owns.
A notifier in that state paged nothing after a restart (issue 25).

So every member looks at the group as the broker describes it: soon after it finds itself a
stable member with nothing assigned (an idle extra instance, or this), and every CHECK_EVERY_S
otherwise. A finding is confirmed by a second look CONFIRM_S later, with the group stable both
times (a rebalance in flight, or a topic that just grew, is not it). Then the member asks the
group for a new assignment, and says so in /readyz and `tdm_unowned_partitions`; if the
partitions are still unowned after `Health`'s bound, the watchdog ends the process for the
orchestrator to start a fresh one. The broker round trips run on a thread, off the loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection

import structlog

from consumer.clients.seam import Admin, Client, ClientError, GroupConsumer, Partition
from consumer.health import Health
from consumer.metrics import Metrics

log = structlog.get_logger("tdm_alerts.service")

CHECK_EMPTY_S = 5.0  # after becoming a stable member with nothing assigned
CHECK_EVERY_S = 30.0  # otherwise, while a stable member
CONFIRM_S = 5.0  # a second look before acting on a finding


def unowned(partitions_by_topic: dict[str, int], owned: Collection[Partition]) -> frozenset[Partition]:
    """The partitions of these topics (by count) that are in nobody's assignment."""
    every = {Partition(topic, n) for topic, count in partitions_by_topic.items() for n in range(count)}
    return frozenset(every - set(owned))


class GroupCoverage:
    """Asks the broker which subscribed partitions the group leaves unowned; one question in
    flight at a time, on a daemon thread (a broker that does not answer holds up no stop)."""

    def __init__(
        self,
        client: Client,
        group_id: str,
        topics: Collection[str],
        *,
        metrics: Metrics,
        health: Health,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._health = health
        self._group_id = group_id
        self._topics = frozenset(topics)  # by name; a pattern's topics are known by their owners
        self._clock = clock
        self._admin: Admin | None = None
        self._asking: threading.Thread | None = None
        self._answer: frozenset[Partition] | None = None
        self._due: float | None = None  # when to look next; None while not a stable member
        self._findings = 0  # consecutive looks that found partitions unowned
        self.unowned: frozenset[Partition] = frozenset()  # as of the last confirmed finding
        metrics.unowned_partitions.set_function(lambda: len(self.unowned))

    @property
    def busy(self) -> bool:
        """A look is in flight."""
        return self._asking is not None and self._asking.is_alive()

    def watch(self, consumer: GroupConsumer) -> bool:
        """Called once a turn; True when the member should ask the group for a new assignment."""
        now = self._clock()
        if not consumer.in_group():
            self._due = None  # a join in flight: look again once it settles
            self._findings = 0
            return False
        if self._asking is not None:
            return self._take_answer(now) if not self._asking.is_alive() else False
        if self._due is None:
            # Soon if it owns nothing, or after the new assignment a finding asked for.
            soon = not consumer.assignment() or self.unowned
            self._due = now + (CHECK_EMPTY_S if soon else CHECK_EVERY_S)
        if now >= self._due:
            self._asking = threading.Thread(target=self._ask, name="group-coverage", daemon=True)
            self._asking.start()
        return False

    def _take_answer(self, now: float) -> bool:
        self._asking = None
        found, self._answer = self._answer, None
        if found is None:  # no answer, or a group still settling: neither a finding nor a clean look
            self._due = now + (CONFIRM_S if self._findings or self.unowned else CHECK_EVERY_S)
            return False
        if not found:
            self._findings = 0
            self._settled(frozenset())
            self._due = now + CHECK_EVERY_S
            return False
        self._findings += 1
        if self._findings < 2:
            self._due = now + CONFIRM_S
            return False
        self._settled(found)
        self._findings = 0
        self._due = now + CHECK_EVERY_S
        self._metrics.group_rejoins.inc()
        log.warning(
            "partitions of the subscribed topics are owned by no member of the group; "
            "asking the group for a new assignment",
            unowned=sorted(f"{p.topic}/{p.partition}" for p in found),
        )
        return True

    def _settled(self, unowned: frozenset[Partition]) -> None:
        self.unowned = unowned
        self._health.unowned(len(unowned))

    def _ask(self) -> None:
        try:
            if self._admin is None:
                self._admin = self._client.admin()
            group = self._admin.describe_group(self._group_id)
            if group.state != "Stable":
                self._answer = None  # settling: nothing to say yet
                return
            owned = [p for member in group.members for p in member.partitions]
            topics = self._topics | {p.topic for p in owned}
            described = self._admin.describe_topics(sorted(topics))
            counts = {topic: info.partitions for topic, info in described.items() if info.failure is None}
            self._answer = unowned(counts, owned)
        except ClientError as err:
            log.debug("could not describe the group's assignment", error=err.name)
            self._answer = None
            self._close_admin()  # a new connection next time, in case this one is what failed

    def _close_admin(self) -> None:
        if self._admin is not None:
            admin, self._admin = self._admin, None
            admin.close()

    def close(self) -> None:
        if self._asking is None or not self._asking.is_alive():
            self._close_admin()
