"""What the follow-up clock costs (issue 39): a tick with 100,000 patients and 10,000 deadlines
waiting, and the patient stage's throughput with follow-ups and escalation on against off, in
the same run.

    python ops/bench/follow_up_check.py [--patients 100000] [--pending 10000]

In process, on the service's own `PatientStates` and SQLite stores (6 partitions, as
TDM_STATE_PARTITIONS' default), with the changelog sends counted instead of produced: what is
measured is the service's side of a tick, not the broker's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import feed

from consumer.metrics import Metrics
from consumer.settings import Settings
from consumer.state.manager import PatientStates
from consumer.state.topics import StateTopics
from interpretation import LabResult, SourceRef, default_ruleset
from interpretation.correlation import correlate_result

PARTITIONS = 6
TOPICS = StateTopics(patients="b.patient-results", changelog="b.patient-state-changelog", repartition=True)
HERE = SourceRef(topic="lab.results", partition=0, offset=0)
NOW = 1_900_000_000.0


class _Sent:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def offset(self, timeout_s: float) -> int:
        return self._offset


class _Delivery:
    """Counts the changelog's records; the broker is not what is measured here."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, topic, key, value, headers, *, partition=None, timestamp_ms=None):  # type: ignore[no-untyped-def]
        self.sent += 1
        return _Sent(self.sent)


def _level(patient: str, value: str = "1.6") -> LabResult:
    drawn = datetime.fromtimestamp(NOW, UTC) - timedelta(days=1)
    return LabResult(
        patient_id=patient,
        specimen_id=f"S-{patient}",
        code="39803-2",
        value=value,
        unit="ug/mL",
        collected_at=drawn,
    )


def _states(
    root: Path, escalate: float | None, ruleset_follow_ups: bool
) -> tuple[PatientStates, list[float]]:
    os.environ["TDM_STATE_DIR"] = str(root)
    if escalate is None:
        os.environ.pop("TDM_ESCALATE_AFTER_MINUTES", None)
    else:
        os.environ["TDM_ESCALATE_AFTER_MINUTES"] = str(escalate)
    ruleset = default_ruleset()
    if not ruleset_follow_ups:
        ruleset = ruleset.model_copy(update={"follow_ups": ()})
    clock = [NOW]
    states = PatientStates(Settings(), TOPICS, ruleset, _Delivery(), Metrics(), clock=lambda: clock[0])  # type: ignore[arg-type]
    states.assign(range(PARTITIONS))
    states.pending.clear()
    return states, clock


def fill(states: PatientStates, patients: int, pending: int) -> float:
    """`patients` states in the stores, `pending` of them with a follow-up waiting: one real
    state with a deadline and one without, copied under every id (building each by correlation
    would measure correlation). Returns the seconds it took."""
    began = time.perf_counter()
    with_deadline = correlate_result(
        None,
        _level("TEMPLATE"),
        HERE,
        states.ruleset,
        rules=states.rules,
        read_at=datetime.fromtimestamp(NOW, UTC),
    )
    plain = correlate_result(
        None,
        _level("TEMPLATE", "5.0"),
        HERE,
        states.ruleset,
        rules=states.rules,
        read_at=datetime.fromtimestamp(NOW, UTC),
    )
    if with_deadline is None or plain is None:
        raise RuntimeError("the template results were not read as infliximab levels")
    waiting = with_deadline.state.model_dump_json().encode()
    quiet = plain.state.model_dump_json().encode()
    due = with_deadline.state.next_due()
    if due is None:
        raise RuntimeError("a low level opened no follow-up: is the rule set's follow_ups empty?")
    every = max(patients // pending, 1) if pending else patients + 1
    for partition in range(PARTITIONS):
        writes: dict[str, tuple[bytes, float, float | None]] = {}
        for n in range(partition, patients, PARTITIONS):
            if n % every == 0 and n // every < pending:
                # Deadlines spread over the next 10 days, as a ward's would be.
                writes[f"P{n:07d}"] = (waiting, NOW, due.timestamp() + (n % 864) * 1000.0)
            else:
                writes[f"P{n:07d}"] = (quiet, NOW, None)
        states.stores[partition].apply(writes, 0)
    return time.perf_counter() - began


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def tick_costs(states: PatientStates, clock: list[float], due_from: float, fire: int) -> dict[str, float]:
    """The idle check (nothing due) and a tick that fires `fire` follow-ups."""
    idle = []
    for _ in range(300):
        states._tick_at = 0.0
        began = time.perf_counter()
        if states.follow_ups_due(due_from - 1):
            raise RuntimeError("a follow-up was due before the first deadline")
        idle.append(time.perf_counter() - began)
    # Move the clock until `fire` deadlines are due (they are spread 1000 s apart per 6 patients).
    by = due_from + (fire / 6 / PARTITIONS) * 1000.0 * PARTITIONS
    clock[0] = by
    states._tick_at = 0.0
    began = time.perf_counter()
    if not states.follow_ups_due(by):
        raise RuntimeError("no follow-up due at the tick")
    fired = states.fire_due(by)
    took = time.perf_counter() - began
    states.committed()
    return {"idle_check_us": _median_us(idle), "tick_s": took, "fired": len(fired)}


def throughput(root: Path, on: bool, results: int) -> float:
    """Results per second through the patient stage's state work (read, correlate, write)."""
    states, _ = _states(root, 30.0 if on else None, on)
    patients = [f"T{n:06d}" for n in range(results)]
    levels = [_level(p) for p in patients]
    began = time.perf_counter()
    for n, level in enumerate(levels):
        states.correlate(n % PARTITIONS, level, HERE)
        if n % 200 == 199:
            states.committed()
    states.committed()
    took = time.perf_counter() - began
    states.close()
    return results / took


def feed_throughput(root: Path, on: bool, messages: list[bytes]) -> float:
    """Messages per second of the bench's mixed feed (about 1% infliximab) through the intake's
    picking out and the patient stage's state work, as the service does them in one process."""
    from consumer.pipeline import Pipeline

    states, _ = _states(root, 30.0 if on else None, on)
    pipeline = Pipeline(states.ruleset, 1 << 20)
    began = time.perf_counter()
    for n, value in enumerate(messages):
        done = pipeline.process(value, HERE, interpret=False)
        for result in done.results:
            states.correlate(hash(result.patient_id) % PARTITIONS, result, HERE)
        if n % 500 == 499:
            states.committed()
    states.committed()
    took = time.perf_counter() - began
    states.close()
    return len(messages) / took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--results", type=int, default=3_000, help="results per patient-stage run")
    parser.add_argument("--feed", type=int, default=20_000, help="messages per mixed-feed run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        states, clock = _states(root / "tick", None, True)
        filled = fill(states, args.patients, args.pending)
        due_from = min(d for s in states.stores.values() if (d := s.next_due()) is not None)
        baseline = []
        for n in range(300):  # the same run's yardstick: reading one result with its patient's state
            began = time.perf_counter()
            states.correlate(n % PARTITIONS, _level(f"P{n * 7:07d}", "5.5"), HERE)
            baseline.append(time.perf_counter() - began)
        states.discarded()
        costs = tick_costs(states, clock, due_from, 500)
        print(
            f"follow-up clock: {args.patients:,} patients in {PARTITIONS} stores ({filled:.1f} s to fill), "
            f"{args.pending:,} deadlines waiting"
        )
        print(f"  the look each second, nothing due: {costs['idle_check_us']:.0f} us (median of 300)")
        print(
            f"  a tick firing {costs['fired']} follow-ups: {costs['tick_s'] * 1000:.0f} ms, "
            f"{costs['tick_s'] / max(costs['fired'], 1) * 1e6:.0f} us each"
        )
        yardstick = _median_us(baseline)
        each = costs["tick_s"] / max(costs["fired"], 1) * 1e6
        print(f"  yardstick, one result read with its patient's state: {yardstick:.0f} us (median of 300)")
        print(
            f"  ratios: the idle look {costs['idle_check_us'] / yardstick:.2f}x one result; "
            f"one fired follow-up {each / yardstick:.2f}x"
        )
        states.close()
        runs: dict[bool, list[float]] = {True: [], False: []}
        for attempt in range(3):  # alternated, so drift on a noisy machine hits both
            for on in (False, True):
                runs[on].append(throughput(root / f"tp-{attempt}-{on}", on, args.results))
        off, on_ = statistics.median(runs[False]), statistics.median(runs[True])
        spread = (max(runs[False]) - min(runs[False])) / off
        print(
            f"patient stage alone, {args.results:,} low levels (each opens an antibody follow-up and an "
            f"escalation when on): off {off:,.0f}/s, on {on_:,.0f}/s (median of 3): {on_ / off:.2f}x; "
            f"run-to-run spread off {spread:.0%}"
        )
        mixed = [m.value for m in feed.generate(args.feed)]
        whole: dict[bool, list[float]] = {True: [], False: []}
        for attempt in range(3):
            for on in (False, True):
                whole[on].append(feed_throughput(root / f"feed-{attempt}-{on}", on, mixed))
        off, on_ = statistics.median(whole[False]), statistics.median(whole[True])
        spread = (max(whole[False]) - min(whole[False])) / off
        print(
            f"the bench feed, {args.feed:,} messages (1% infliximab), intake and patient stage: "
            f"off {off:,.0f}/s, on {on_:,.0f}/s (median of 3): {on_ / off:.2f}x; "
            f"run-to-run spread off {spread:.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
