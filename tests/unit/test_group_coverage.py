"""The group's coverage of the subscribed partitions (`consumer/loop/coverage.py`), with a fake
admin and a clock the test moves; the real-broker case is in tests/integration/test_notify.py."""

from __future__ import annotations

import time

from consumer.clients.seam import ClientError, Failure, GroupInfo, Member, Partition, TopicInfo
from consumer.health import MEMBERSHIP_TIMEOUT_S, Health
from consumer.loop.coverage import CHECK_EMPTY_S, CHECK_EVERY_S, CONFIRM_S, GroupCoverage, unowned
from consumer.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Admin:
    def __init__(self, group: GroupInfo, partitions: dict[str, int]) -> None:
        self.group = group
        self.partitions = partitions
        self.failing = False
        self.closed = 0
        self.looks = 0

    def describe_group(self, group_id: str) -> GroupInfo:
        self.looks += 1
        if self.failing:
            raise ClientError(Failure.TRANSIENT, "describe group: timed out", name="KafkaTimeoutError")
        return self.group

    def describe_topics(self, topics: list[str]) -> dict[str, TopicInfo]:
        return {
            t: TopicInfo(self.partitions[t]) if t in self.partitions else TopicInfo(0, Failure.MISSING_TOPIC)
            for t in topics
        }

    def close(self) -> None:
        self.closed += 1


class Client:
    def __init__(self, admin: Admin) -> None:
        self._admin = admin
        self.admins = 0

    def admin(self) -> Admin:
        self.admins += 1
        return self._admin


class Consumer:
    def __init__(self, owned: frozenset[Partition] = frozenset()) -> None:
        self.owned = owned
        self.member = True

    def in_group(self) -> bool:
        return self.member

    def assignment(self) -> frozenset[Partition]:
        return self.owned


def group(*owned: tuple[Partition, ...], state: str = "Stable") -> GroupInfo:
    return GroupInfo(state, tuple(Member(f"m{i}", "host", tuple(p)) for i, p in enumerate(owned)))


def make(
    admin: Admin, topics: tuple[str, ...] = ("alerts",)
) -> tuple[GroupCoverage, Clock, Health, Metrics, Client]:
    clock, metrics = Clock(), Metrics()
    health = Health(60, 300, clock=clock)
    health.started()
    client = Client(admin)
    coverage = GroupCoverage(client, "notify", topics, metrics=metrics, health=health, clock=clock)  # type: ignore[arg-type]
    return coverage, clock, health, metrics, client


def turn(coverage: GroupCoverage, consumer: Consumer) -> bool:
    """One turn of the loop, waiting for a look that is in flight to be answered."""
    said = coverage.watch(consumer)  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while coverage.busy and time.monotonic() < deadline:
        time.sleep(0.001)
    return said


def turns_until(coverage: GroupCoverage, consumer: Consumer, clock: Clock, seconds: float) -> list[float]:
    """Turns every 0.5 s for `seconds`; when (relative to the start) a new assignment was asked for."""
    start, asked = clock.now, []
    while clock.now - start < seconds:
        if turn(coverage, consumer):
            asked.append(clock.now - start)
        clock.now += 0.5
    return asked


A0, A1, A2 = (Partition("alerts", n) for n in range(3))


def test_unowned_is_every_partition_of_the_topics_nobody_holds():
    assert unowned({"alerts": 3}, [A0, A2]) == {A1}
    assert unowned({"alerts": 2, "other": 1}, []) == {A0, A1, Partition("other", 0)}
    assert unowned({}, [A0]) == frozenset()


def test_a_member_with_nothing_in_a_group_that_assigned_nothing_asks_again_after_a_second_look():
    admin = Admin(group(()), {"alerts": 3})
    coverage, clock, health, metrics, _ = make(admin)
    consumer = Consumer()
    asked = turns_until(coverage, consumer, clock, CHECK_EMPTY_S + CONFIRM_S + 3)
    assert len(asked) == 1 and CHECK_EMPTY_S + CONFIRM_S <= asked[0] <= CHECK_EMPTY_S + CONFIRM_S + 1
    assert coverage.unowned == {A0, A1, A2}
    assert metrics.registry.get_sample_value("tdm_unowned_partitions") == 3
    assert metrics.registry.get_sample_value("tdm_group_rejoins_total") == 1
    assert health.stalled() is None  # asking again comes first


def test_an_idle_extra_member_of_a_group_that_covers_every_partition_is_left_alone():
    admin = Admin(group((A0, A1, A2), ()), {"alerts": 3})
    coverage, clock, _, _, _ = make(admin)
    assert turns_until(coverage, Consumer(), clock, 3 * CHECK_EVERY_S) == []
    assert coverage.unowned == frozenset() and admin.looks >= 3  # it kept looking, at the slow pace


def test_a_partial_assignment_is_found_at_the_slow_pace_when_the_member_owns_something():
    admin = Admin(group((A0,)), {"alerts": 3})
    coverage, clock, _, _, _ = make(admin)
    asked = turns_until(coverage, Consumer(frozenset({A0})), clock, CHECK_EVERY_S + CONFIRM_S + 3)
    assert len(asked) == 1 and asked[0] >= CHECK_EVERY_S + CONFIRM_S
    assert coverage.unowned == {A1, A2}


def test_a_group_still_settling_or_a_finding_gone_on_the_second_look_asks_nothing():
    admin = Admin(group((), state="PreparingRebalance"), {"alerts": 3})
    coverage, clock, _, _, _ = make(admin)
    consumer = Consumer()
    assert turns_until(coverage, consumer, clock, 2 * CHECK_EVERY_S) == []
    admin.group = group(())
    turns_until(coverage, consumer, clock, CONFIRM_S - 1)  # the first look finds them unowned
    admin.group = group((A0, A1, A2))  # ... and the leader's own re-join fixes it
    assert turns_until(coverage, consumer, clock, 2 * CHECK_EVERY_S) == []
    assert coverage.unowned == frozenset()


def test_topics_known_only_by_their_owners_count_too():
    """With a pattern subscription the topics are not named: those the group owns are checked."""
    x0 = Partition("lab.x", 0)
    admin = Admin(group((x0,)), {"lab.x": 2})
    coverage, clock, _, _, _ = make(admin, topics=())
    turns_until(coverage, Consumer(frozenset({x0})), clock, CHECK_EVERY_S + CONFIRM_S + 2)
    assert coverage.unowned == {Partition("lab.x", 1)}


def test_a_look_that_fails_is_no_finding_and_the_next_one_uses_a_new_admin():
    admin = Admin(group(()), {"alerts": 3})
    admin.failing = True
    coverage, clock, _, _, client = make(admin)
    consumer = Consumer()
    assert turns_until(coverage, consumer, clock, CHECK_EMPTY_S + 2 * CHECK_EVERY_S) == []
    assert admin.closed >= 2 and client.admins >= 2
    admin.failing = False
    assert len(turns_until(coverage, consumer, clock, CHECK_EVERY_S + CONFIRM_S + 2)) == 1


def test_leaving_the_group_starts_the_looks_over():
    admin = Admin(group(()), {"alerts": 3})
    coverage, clock, _, _, _ = make(admin)
    consumer = Consumer()
    turns_until(coverage, consumer, clock, CHECK_EMPTY_S + 1)  # one finding
    consumer.member = False  # a rebalance: no look, and the finding is forgotten
    assert turns_until(coverage, consumer, clock, 60) == []
    consumer.member = True
    asked = turns_until(coverage, consumer, clock, CHECK_EMPTY_S + CONFIRM_S + 2)
    assert len(asked) == 1 and asked[0] >= CHECK_EMPTY_S + CONFIRM_S


def test_partitions_unowned_after_asking_again_end_the_process_for_a_fresh_start():
    admin = Admin(group(()), {"alerts": 3})
    coverage, clock, health, _, _ = make(admin)
    consumer = Consumer()
    asked = turns_until(coverage, consumer, clock, MEMBERSHIP_TIMEOUT_S + CHECK_EMPTY_S + CONFIRM_S + 3)
    assert len(asked) >= 2  # asked again at the slow pace meanwhile
    assert "3 subscribed partition(s) owned by no member of the group" in (health.stalled() or "")
    admin.group = group((A0, A1, A2))
    turns_until(coverage, consumer, clock, CHECK_EVERY_S + 1)
    assert coverage.unowned == frozenset() and health.stalled() is None


def test_health_counts_the_unowned_time_from_the_first_confirmed_finding():
    clock = Clock()
    health = Health(60, 300, clock=clock)
    health.started()
    health.unowned(2)
    clock.now += MEMBERSHIP_TIMEOUT_S - 1
    health.unowned(1)  # fewer, still some: the clock keeps running
    assert health.stalled() is None
    clock.now += 1
    assert "1 subscribed partition(s)" in (health.stalled() or "")
    health.unowned(0)
    assert health.stalled() is None


def test_after_the_new_assignment_it_looks_again_soon_and_clears_the_finding():
    """The finding stands until a look shows every partition owned: the health clock is not reset
    by the re-join itself, and a fixed group is seen within seconds, not at the slow pace."""
    admin = Admin(group(()), {"alerts": 3})
    coverage, clock, health, _, _ = make(admin)
    consumer = Consumer()
    assert len(turns_until(coverage, consumer, clock, CHECK_EMPTY_S + CONFIRM_S + 2)) == 1
    consumer.member = False  # the re-join it asked for
    turns_until(coverage, consumer, clock, 2)
    assert coverage.unowned == {A0, A1, A2}
    consumer.member, consumer.owned = True, frozenset({A0, A1, A2})
    admin.group = group((A0, A1, A2))
    turns_until(coverage, consumer, clock, CHECK_EMPTY_S + 1)
    assert coverage.unowned == frozenset() and health.stalled() is None


def test_a_group_settling_neither_confirms_nor_clears_a_finding():
    admin = Admin(group(()), {"alerts": 3})
    coverage, clock, health, _, _ = make(admin)
    consumer = Consumer()
    assert len(turns_until(coverage, consumer, clock, CHECK_EMPTY_S + CONFIRM_S + 2)) == 1
    admin.group = group((), state="PreparingRebalance")
    turns_until(coverage, consumer, clock, 2 * CHECK_EVERY_S)
    assert coverage.unowned == {A0, A1, A2}  # the health clock keeps running
    admin.group = group((A0, A1, A2))
    turns_until(coverage, consumer, clock, CONFIRM_S + 1)  # looked at again soon, not at the slow pace
    assert coverage.unowned == frozenset() and health.stalled() is None
