"""The batch protocol against in-memory fakes of the client seam: commit, abort, rewind, and a
rebalance in the middle of a batch."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import pytest

from consumer.clients.seam import ClientError, Failure, Partition, Record
from consumer.delivery import TransactionalDelivery
from consumer.fatal import FatalError
from consumer.health import Health
from consumer.loop.batch import Batches
from consumer.loop.lag import LagMeter
from consumer.loop.loop import Loop
from consumer.loop.rebalance import RebalanceListener
from consumer.loop.waiting import NotYet, Waiting
from consumer.metrics import Metrics
from consumer.settings import Settings

pytestmark = pytest.mark.usefixtures("clean_env")

P0, P1 = Partition("lab.results", 0), Partition("lab.results", 1)


class Result(NamedTuple):
    urgent: bool = False


def records(tp: Partition, *offsets: int) -> list[Record]:
    return [Record(tp.topic, tp.partition, o, None, b"x", (), None) for o in offsets]


@dataclass
class Producer:
    """A transactional producer in memory: what was sent, and what each transaction became."""

    log: list[str]
    refuse_commit: ClientError | None = None
    sent: list[bytes | None] = field(default_factory=list)

    def begin(self) -> None:
        self.log.append("begin")

    def send(self, topic, key, value, headers, *, partition=None, timestamp_ms=None):
        self.sent.append(value)

    def flush(self, timeout_s: float) -> None:
        pass

    def send_offsets(self, offsets: Mapping[Partition, int], group_metadata: object) -> None:
        self.log.append(f"offsets {sorted(offsets.items())}")

    def commit(self) -> None:
        if self.refuse_commit is not None:
            raise self.refuse_commit
        self.log.append("commit")

    def abort(self) -> None:
        self.log.append("abort")

    def close(self, timeout_s: float) -> None:
        self.log.append("close")


class Client:
    name = "in-memory"

    def __init__(self) -> None:
        self.log: list[str] = []
        self.producers: list[Producer] = []

    def transactional_producer(self, transactional_id: str) -> Producer:
        self.producers.append(Producer(self.log))
        return self.producers[-1]


class Consumer:
    def __init__(self, owned: Collection[Partition]) -> None:
        self.owned = set(owned)
        self.seeks: list[tuple[Partition, int]] = []
        self.paused: set[Partition] = set()

    def pause(self, partitions: Collection[Partition]) -> None:
        self.paused |= set(partitions)

    def resume(self, partitions: Collection[Partition]) -> None:
        self.paused -= set(partitions)

    def assignment(self) -> frozenset[Partition]:
        return frozenset(self.owned)

    def seek(self, tp: Partition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def group_metadata(self) -> object:
        return "generation 1"


class Topology:
    def __init__(self) -> None:
        self.events: list[str] = []

    def batch_opened(self) -> None:
        self.events.append("opened")

    def batch_committed(self, processed: Sequence[tuple[Record, Result]], seconds: float) -> None:
        self.events.append(f"committed {len(processed)}")

    def batch_discarded(self) -> None:
        self.events.append("discarded")

    def revoked(self, partitions: Collection[Partition]) -> None:
        self.events.append(f"revoked {sorted(partitions)}")

    def assigned(self, partitions: Collection[Partition], consumer: object) -> None:
        self.events.append(f"assigned {sorted(partitions)}")

    def offsets(self, read: dict[Partition, int]) -> dict[Partition, int]:
        return read


def batches(topology: Topology, client: Client, waited: list[float] | None = None) -> Batches[Result]:
    delivery = TransactionalDelivery(Settings(), client)  # type: ignore[arg-type]
    return Batches(
        Settings(),
        delivery,
        topology,  # type: ignore[arg-type]
        metrics=Metrics(),
        health=Health(60, 60),
        committed=lambda took: None,
        wait=(waited if waited is not None else []).append,
    )


def test_a_batch_commits_its_outputs_with_the_offsets_after_its_last_records():
    topology, client = Topology(), Client()
    b = batches(topology, client)
    batch = b.include({P0: records(P0, 5, 6), P1: records(P1, 9)})
    batch.add(records(P0, 5)[0], Result())
    batch.add(records(P0, 6)[0], Result(urgent=True))
    batch = b.include({P0: records(P0, 7)})  # the next poll joins the open batch
    assert batch.urgent and batch.first == {P0: 5, P1: 9} and batch.next == {P0: 8, P1: 10}
    b.commit(Consumer({P0, P1}))  # type: ignore[arg-type]
    assert client.log == ["begin", f"offsets {[(P0, 8), (P1, 10)]}", "commit"]
    assert topology.events == ["opened", "committed 2"]
    assert b.open is None


def test_a_failed_commit_aborts_rewinds_to_the_first_offsets_and_backs_off():
    topology, client, waited = Topology(), Client(), []
    b = batches(topology, client, waited)
    b.include({P0: records(P0, 5, 6), P1: records(P1, 9)})
    consumer = Consumer({P0})  # P1 went elsewhere meanwhile: its next owner reads it
    client.producers[0].refuse_commit = ClientError(Failure.TRANSIENT, "commit: broker gone")
    with pytest.raises(ClientError) as refused:
        b.commit(consumer)  # type: ignore[arg-type]
    b.fail(consumer, refused.value)  # type: ignore[arg-type]
    assert consumer.seeks == [(P0, 5)]
    assert client.log[-2:] == ["abort", "close"]  # a new producer after every abort (kafka-python)
    assert topology.events == ["opened", "discarded"]
    assert waited == [0.5] and b.backoff == 1.0
    b.include({P0: records(P0, 5)})
    assert len(client.producers) == 2  # the next batch begins on a fresh producer


def test_a_group_that_moved_on_is_retried_at_once_and_a_fatal_failure_stops():
    topology, client, waited = Topology(), Client(), []
    b = batches(topology, client, waited)
    b.include({P0: records(P0, 1)})
    b.fail(Consumer({P0}), ClientError(Failure.REBALANCED, "commit: UnknownMemberId"))  # type: ignore[arg-type]
    assert waited == [0.1]
    b.include({P0: records(P0, 1)})
    with pytest.raises(FatalError, match="not authorised"):
        b.fail(Consumer({P0}), ClientError(Failure.NOT_AUTHORISED_TOPIC, "send: TopicAuthorizationFailed"))  # type: ignore[arg-type]


def test_a_rebalance_in_the_middle_of_a_batch_commits_it_before_the_partitions_go():
    topology, client = Topology(), Client()
    b = batches(topology, client)
    consumer = Consumer({P0, P1})
    lag = LagMeter(None, Metrics(), Health(60, 60), held=lambda tp: False)  # type: ignore[arg-type]
    listener = RebalanceListener(lambda: consumer, b, topology, lag)  # type: ignore[arg-type]
    listener.assigned([P0, P1])
    b.include({P0: records(P0, 3)}).add(records(P0, 3)[0], Result())
    listener.revoked([P1])
    assert client.log == ["begin", f"offsets {[(P0, 4)]}", "commit"]
    assert topology.events == [f"assigned {[P0, P1]}", "opened", "committed 1", f"revoked {[P1]}"]
    assert lag.assigned == {P0}


def test_a_batch_refused_at_a_rebalance_is_aborted_and_rewound_for_whoever_reads_it_next():
    topology, client = Topology(), Client()
    b = batches(topology, client)
    consumer = Consumer({P0})
    b.include({P0: records(P0, 3, 4)})
    client.producers[0].refuse_commit = ClientError(Failure.REBALANCED, "commit: IllegalGeneration")
    lag = LagMeter(None, Metrics(), Health(60, 60), held=lambda tp: False)  # type: ignore[arg-type]
    RebalanceListener(lambda: consumer, b, topology, lag).lost([P0])  # type: ignore[arg-type]
    assert consumer.seeks == [(P0, 3)]
    assert "abort" in client.log and b.open is None and b.fatal is None
    assert topology.events == ["opened", "discarded", f"revoked {[P0]}"]


def test_a_batch_that_cannot_open_is_still_rewound_over_what_was_polled():
    """A refused begin (a fenced or unreachable transaction coordinator) must not skip the records
    the poll already took: the rewind covers them."""
    topology, client, waited = Topology(), Client(), []
    b = batches(topology, client, waited)
    consumer = Consumer({P0})

    def refused() -> None:
        raise ClientError(Failure.TRANSIENT, "begin: coordinator not available")

    b.delivery.begin = refused  # type: ignore[method-assign]
    with pytest.raises(ClientError) as err:
        b.include({P0: records(P0, 12, 13)})
    b.fail(consumer, err.value)  # type: ignore[arg-type]
    assert consumer.seeks == [(P0, 12)]


class ReceiverDown:
    """A stage whose receiver fails for P0's records from offset 6 on."""

    def __init__(self) -> None:
        self.seen: list[tuple[Partition, int]] = []

    def process(self, record: Record) -> Result:
        if record.partition == 0 and record.offset >= 6:
            raise NotYet(2.0, "webhook: HTTP 503")
        self.seen.append((Partition(record.topic, record.partition), record.offset))
        return Result(urgent=True)


def test_a_record_a_stage_cannot_take_yet_holds_only_its_partition_from_that_record_on():
    topology, client, stage = Topology(), Client(), ReceiverDown()
    topology.stage_for = lambda topic: stage  # type: ignore[attr-defined]
    clock = [0.0]
    b = batches(topology, client)
    b.waiting = Waiting(clock=lambda: clock[0])
    consumer = Consumer({P0, P1})
    loop = Loop(consumer, topology, b, pacing=None, lag=None, coverage=None, health=None, stop=None)  # type: ignore[arg-type]
    loop._process({P0: records(P0, 5, 6, 7), P1: records(P1, 9, 10)})
    assert stage.seen == [(P0, 5), (P1, 9), (P1, 10)]  # P1 went on; P0's 7 was not tried before 6
    assert consumer.paused == {P0} and consumer.seeks == [(P0, 6)]
    # What the client had fetched for P0 before its pause took hold is left for later.
    assert b.waiting.admit(consumer, {P0: records(P0, 7), P1: records(P1, 11)}) == {P1: records(P1, 11)}
    b.commit(consumer)  # type: ignore[arg-type]
    assert client.log[-2] == f"offsets {[(P0, 6), (P1, 11)]}"  # P0 committed only up to the waiting record
    assert not b.waiting.due()
    clock[0] = 2.0
    assert b.waiting.due()
    b.waiting.release(consumer)  # type: ignore[arg-type]
    assert consumer.paused == set() and consumer.seeks[-1] == (P0, 6) and not b.waiting.holds(P0)


def test_a_waiting_partition_rewound_by_an_aborted_batch_resumes_at_the_rewind():
    topology, client, stage = Topology(), Client(), ReceiverDown()
    topology.stage_for = lambda topic: stage  # type: ignore[attr-defined]
    b = batches(topology, client)
    b.waiting = Waiting(clock=lambda: 5.0)
    consumer = Consumer({P0})
    loop = Loop(consumer, topology, b, pacing=None, lag=None, coverage=None, health=None, stop=None)  # type: ignore[arg-type]
    loop._process({P0: records(P0, 4, 5, 6)})
    b.fail(consumer, ClientError(Failure.TRANSIENT, "commit: broker gone"))  # type: ignore[arg-type]
    assert b.waiting.at == {P0: 4}  # resuming at 6 would skip the aborted 4 and 5
    b.waiting.revoked([P0])
    assert not b.waiting.holds(P0)


class EndOffsets:
    def __init__(self, ends: dict[Partition, int]) -> None:
        self.ends = ends

    def ask(self, partitions: Collection[Partition]) -> bool:
        return True

    def answer(self) -> dict[Partition, int]:
        return self.ends


class Positions(Consumer):
    def position(self, tp: Partition) -> int:
        return 3


def test_a_partition_told_to_wait_shows_its_lag_but_is_not_a_stall():
    clock = [0.0]
    health = Health(60, 30, clock=lambda: clock[0])
    health.started()
    metrics = Metrics()
    waiting = Waiting()
    waiting.at[P0] = 3
    lag = LagMeter(EndOffsets({P0: 10, P1: 3}), metrics, health, held=waiting.holds, waits=waiting.holds)  # type: ignore[arg-type]
    consumer = Positions({P0, P1})
    for clock[0] in (0.0, 31.0, 62.0):
        health.beat()
        lag.measure(consumer)  # type: ignore[arg-type]
    assert metrics.consumer_lag.labels(P0.topic, "0")._value.get() == 7
    assert health.stalled() is None and health.stuck(0) == []
    waiting.revoked([P0])  # the same lag, not told to wait: a stall
    for clock[0] in (63.0, 94.0):
        health.beat()
        lag.measure(consumer)  # type: ignore[arg-type]
    assert "7 messages wait" in (health.stalled() or "")


def test_the_batches_watch_the_waiting_they_are_given_even_while_it_is_empty():
    """Issue 42: `waiting or Waiting()` made the batches their own when the lifecycle's was empty
    (it has a length, so it was falsy): the lag meter and the watchdog watched the other one, and
    a partition waiting on a receiver read as stuck, restarting the notifier after 60 s."""
    waiting = Waiting()
    assert len(waiting) == 0
    made = batches(Topology(), Client())  # type: ignore[arg-type]
    given = Batches(
        Settings(),
        made.delivery,
        made.topology,
        metrics=Metrics(),
        health=Health(60, 60),
        committed=lambda took: None,
        wait=lambda seconds: None,
        waiting=waiting,
    )
    assert given.waiting is waiting


class Ticking(Topology):
    """Timed work due once (an expiry, a receiver's retry), and nothing to read."""

    def __init__(self) -> None:
        super().__init__()
        self.due = True

    def punctuate_due(self) -> bool:
        return self.due

    def punctuate(self) -> bool:
        self.due = False
        self.events.append("punctuated")
        return True

    def chores_due(self) -> bool:
        return False

    def admit(self, consumer: object, polled: dict) -> dict:
        return polled


class Idle(Consumer):
    def poll(self, timeout_ms: int, max_records: int) -> dict:
        return {}

    def in_group(self) -> bool:
        return True


def test_timed_work_runs_inside_a_batch_on_an_idle_topic_and_commits_with_no_offsets():
    """Issue 39: expiry ran only when a batch opened, so only when records arrived. The loop's
    punctuate step opens a batch on an idle topic, and a batch that read nothing commits its
    transaction without offsets (an empty offset commit is no request to send)."""
    from consumer.loop.pacing import Pacing

    topology, client = Ticking(), Client()
    b = batches(topology, client)
    health = Health(60, 60)
    lag = type("Lag", (), {"measure": lambda self, consumer: None})()
    coverage = type("Coverage", (), {"watch": lambda self, consumer: False})()
    pacing = Pacing(interval_s=0.0, batch_max_records=10, transaction_timeout_s=10.0, poll_timeout_ms=1)
    loop = Loop(Idle({P0}), topology, b, pacing=pacing, lag=lag, coverage=coverage, health=health, stop=None)  # type: ignore[arg-type]
    loop.run_once()
    assert topology.events[:2] == ["opened", "punctuated"]
    assert "begin" in client.log and client.log[-1] == "commit"
    assert not any(line.startswith("offsets") for line in client.log)
