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

import time
from collections.abc import Callable, Collection

import structlog

from consumer.clients.seam import Admin, Client, ClientError, GroupConsumer, Partition
from consumer.health import Health
from consumer.metrics import Metrics
from consumer.off_loop import OffLoop

log = structlog.get_logger("tdm_alerts.service")

CHECK_EMPTY_S = 5.0  # after becoming a stable member with nothing assigned
CHECK_EVERY_S = 30.0  # otherwise, while a stable member
CONFIRM_S = 5.0  # a second look before acting on a finding


def unowned(partitions_by_topic: dict[str, int], owned: Collection[Partition]) -> frozenset[Partition]:
    """The partitions of these topics (by count) that are in nobody's assignment."""
    every = {Partition(topic, n) for topic, count in partitions_by_topic.items() for n in range(count)}
    return frozenset(every - set(owned))


class GroupCoverage:
    """Asks the broker which subscribed partitions the group leaves unowned, on an admin client
    of its own, off the loop (see `OffLoop`)."""

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
        self._metrics = metrics
        self._health = health
        self._group_id = group_id
        self._topics = frozenset(topics)  # by name; a pattern's topics are known by their owners
        self._clock = clock
        # A look's answer: the unowned partitions, or None while the group is still settling.
        self._asking: OffLoop[Admin, frozenset[Partition] | None] = OffLoop(client.admin, "group-coverage")
        self._due: float | None = None  # when to look next; None while not a stable member
        self._findings = 0  # consecutive looks that found partitions unowned
        self.unowned: frozenset[Partition] = frozenset()  # as of the last confirmed finding
        metrics.unowned_partitions.set_function(lambda: len(self.unowned))

    @property
    def busy(self) -> bool:
        """A look is in flight."""
        return self._asking.busy

    def watch(self, consumer: GroupConsumer) -> bool:
        """Called once a turn; True when the member should ask the group for a new assignment."""
        now = self._clock()
        if not consumer.in_group():
            self._due = None  # a join in flight: look again once it settles
            self._findings = 0
            return False
        if self._asking.busy:
            return False
        if self._asking.answered:
            return self._take_answer(now)
        if self._due is None:
            # Soon if it owns nothing, or after the new assignment a finding asked for.
            soon = not consumer.assignment() or self.unowned
            self._due = now + (CHECK_EMPTY_S if soon else CHECK_EVERY_S)
        if now >= self._due:
            self._asking.ask(self._look)
        return False

    def _take_answer(self, now: float) -> bool:
        try:
            found = self._asking.take()
        except ClientError as err:
            log.debug("could not describe the group's assignment", error=err.name)
            found = None
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

    def _look(self, admin: Admin) -> frozenset[Partition] | None:
        group = admin.describe_group(self._group_id)
        if group.state != "Stable":
            return None  # settling: nothing to say yet
        owned = [p for member in group.members for p in member.partitions]
        topics = self._topics | {p.topic for p in owned}
        described = admin.describe_topics(sorted(topics))
        counts = {topic: info.partitions for topic, info in described.items() if info.failure is None}
        return unowned(counts, owned)

    def close(self) -> None:
        self._asking.close()
