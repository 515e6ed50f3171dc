"""Liveness, readiness freshness and stall detection, on a clock the test moves."""

from __future__ import annotations

import threading

from consumer.clients.deadlines import GRACE_S, Deadlines
from consumer.health import Health, Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[Health, Clock]:
    clock = Clock()
    health = Health(liveness_timeout_s=60, stall_timeout_s=300, clock=clock)
    health.started()
    return health, clock


def test_a_loop_that_stops_turning_is_not_alive_and_then_stalled():
    health, clock = make()
    clock.now += 59
    assert health.alive() and health.stalled() is None
    clock.now += 2
    assert not health.alive()
    clock.now += 300
    assert "has not turned" in (health.stalled() or "")


def test_turning_without_progress_while_lag_waits_is_a_stall():
    health, clock = make()
    health.lag({"in/0": (0, 1200)})
    for _ in range(31):  # the loop keeps turning (a poll spin), nothing is processed
        clock.now += 10
        health.beat()
    assert health.alive()
    assert "1200 messages wait" in (health.stalled() or "")


def test_no_lag_means_nothing_to_progress_on():
    health, clock = make()
    for _ in range(40):
        clock.now += 10
        health.beat()
        health.lag({})
    assert health.stalled() is None


def test_a_join_that_never_completes_is_a_stall_even_with_no_lag_known():
    """Out of the group nothing is assigned, so no lag is measured: the membership itself counts."""
    health, clock = make()
    for _ in range(31):  # the loop turns, the join never completes
        clock.now += 10
        health.beat()
        health.lag({})
        health.member(False)
    assert "not a member of the consumer group for 300 s" in (health.stalled() or "")


def test_out_of_the_group_longer_than_any_rebalance_is_a_stall_before_the_stall_timeout():
    health, clock = make()  # stall timeout 300 s
    health.member(False)
    clock.now += 80
    health.beat()
    assert health.stalled() is None  # a slow rebalance, or a short broker outage
    clock.now += 10
    health.beat()
    assert "not a member of the consumer group for 90 s" in (health.stalled() or "")


def test_rejoining_in_time_resets_the_membership_clock():
    health, clock = make()
    for turn in range(60):
        clock.now += 10
        health.beat()
        health.member(turn % 20 != 0 or turn == 0)  # a rebalance every 200 s, done within a turn
    assert health.stalled() is None


def test_before_start_and_after_stop_it_is_alive():
    clock = Clock()
    health = Health(liveness_timeout_s=60, stall_timeout_s=300, clock=clock)
    clock.now += 10_000
    assert health.alive() and health.stalled() is None


def test_the_watchdog_reports_a_stall_once():
    health, clock = make()
    clock.now += 1000
    seen: list[str] = []
    done = threading.Event()

    def on_stall(reason: str) -> None:
        seen.append(reason)
        done.set()

    dog = Watchdog(health, on_stall, every_s=0.01).start()
    assert done.wait(5)
    dog.stop()
    assert len(seen) == 1


def test_one_partition_that_stops_while_others_move_is_a_stall():
    """Some partitions left unfetched after a rebalance: the others keep the whole from looking stuck."""
    health, clock = make()
    for turn in range(31):
        clock.now += 10
        health.beat()
        health.progressed()  # records from the other partitions are processed and committed
        health.lag({"in/0": (100 + turn, 1), "in/1": (40, 4)})
        if turn < 29:
            assert health.stalled() is None
    assert health.stalled() == "partition in/1 stuck at offset 40 for 300 s while messages wait"


def test_a_partition_that_moves_or_catches_up_is_not_stalled():
    health, clock = make()
    for turn in range(40):
        clock.now += 10
        health.beat()
        health.progressed()
        # in/0 moves slowly through a backlog; in/1 sits still but has nothing waiting.
        health.lag({"in/0": (turn // 5, 3), "in/1": (40, 0)})
        assert health.stalled() is None


def test_a_long_state_restore_is_progress_for_the_loop_and_the_waiting_partitions():
    health, clock = make()
    health.lag({"patients/0": (0, 50)})
    for _ in range(40):  # 400 s of restore, reported chunk by chunk
        clock.now += 10
        health.restored_chunk()
        assert health.alive() and health.stalled() is None


def test_a_partition_stuck_for_a_while_is_named_long_before_the_watchdog_fires():
    # The loop restarts such a partition's fetch after 20 s (loop/lag.py); the watchdog
    # ends the process only at the stall timeout.
    health, clock = make()
    health.lag({"in/0": (10, 2), "in/1": (40, 4)})
    clock.now += 15
    health.lag({"in/0": (12, 2), "in/1": (40, 4)})
    assert health.stuck(20) == []
    clock.now += 10
    health.lag({"in/0": (14, 2), "in/1": (40, 4)})
    assert health.stuck(20) == ["in/1"]
    assert health.stalled() is None
    health.lag({"in/0": (14, 0), "in/1": (41, 3)})  # it moved: no longer stuck
    assert health.stuck(20) == []


def test_the_default_stall_timeout_fits_paging():
    from consumer.settings import Settings

    assert Settings().stall_timeout_s <= 60  # a page is due in seconds; issue 27 found 300 s


def test_a_client_call_past_its_own_timeout_ends_the_process_before_the_stall_bound():
    """librdkafka's send_offsets_to_transaction can outlive its timeout (librdkafka#5456): the
    watchdog does not wait for TDM_STALL_TIMEOUT_S to call that hung."""
    clock = Clock()
    deadlines = Deadlines(clock)
    health = Health(liveness_timeout_s=60, stall_timeout_s=300, clock=clock, deadlines=deadlines)
    health.started()
    with deadlines.bounded("send offsets", 30):
        clock.now += 30 + GRACE_S - 1  # past the timeout, within the grace: an answer on its way
        assert health.stalled() is None
        clock.now += 1
        hung = "the client's send offsets call has not returned 10 s after its 30 s timeout"
        assert health.stalled() == hung
    assert health.stalled() is None  # it returned after all: nothing overdue remains


def test_deadlines_name_the_call_furthest_past_its_timeout_across_threads():
    clock = Clock()
    deadlines = Deadlines(clock)
    inside, release = threading.Event(), threading.Event()

    def elsewhere() -> None:
        with deadlines.bounded("commit", 5):
            inside.set()
            release.wait(5)

    worker = threading.Thread(target=elsewhere)
    with deadlines.bounded("abort", 30):
        worker.start()
        inside.wait(5)
        clock.now += 20
        late = deadlines.overdue(grace_s=0)
        assert late is not None and (late.doing, late.late_s) == ("commit", 15)
        release.set()
        worker.join(5)
        assert deadlines.overdue(grace_s=0) is None
        clock.now += 11
        late = deadlines.overdue(grace_s=0)
        assert late is not None and late.doing == "abort"
    assert deadlines.overdue(grace_s=0) is None
