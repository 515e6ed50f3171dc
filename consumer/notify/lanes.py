"""Events a receiver has not taken yet, one lane per receiver and incident.

Each receiver progresses on its own, as Alertmanager's notifier fans out per integration: a
receiver that fails holds only its own events, and of those only the later events of the same
incident (its order is what a receiver must see: trigger before update before resolve). The
other receivers, and this receiver's other incidents, go on at once (issue 42: a webhook down
held the same partition's Alertmanager pages for minutes).

The alert partition's committed offset stays at the oldest event some lane still holds, so a
restart or a new owner reads it again and nothing is lost; what a receiver already has is not
sent to it twice (`consumer/notify/incidents.py`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from consumer.clients.seam import Partition, Record
from consumer.notify.events import AlertEvent
from consumer.notify.sending import Failing

# Events held in memory at most; past it the partition of the next event waits (paused), so a
# receiver down for hours costs a bounded amount of memory, and what waits stays on the topic.
MAX_WAITING_EVENTS = 10_000


@dataclass
class Entry:
    """One event waiting for one receiver."""

    record: Record
    event: AlertEvent
    place: int  # in its incident's order: its offset, or the original one of a replayed event
    failing: Failing = field(default_factory=Failing)
    due: float = 0.0  # monotonic: when to ask the receiver again


LaneKey = tuple[str, Partition, str]  # receiver, alert partition, incident key


class Lanes:
    def __init__(self) -> None:
        self.lanes: dict[LaneKey, deque[Entry]] = {}
        self.read_to: dict[Partition, int] = {}  # the offset after the last record processed
        self.held: set[tuple[str, Partition, int]] = set()  # receiver, partition, offset: O(1) `holds`
        self.size = 0

    def busy(self, receiver: str, tp: Partition, incident: str) -> bool:
        return (receiver, tp, incident) in self.lanes

    def holds(self, receiver: str, record: Record) -> bool:
        """This record already waits in one of the receiver's lanes (read again after a rewind)."""
        return (receiver, Partition(record.topic, record.partition), record.offset) in self.held

    def append(self, receiver: str, entry: Entry) -> None:
        tp = Partition(entry.record.topic, entry.record.partition)
        self.lanes.setdefault((receiver, tp, entry.event.incident_key), deque()).append(entry)
        self.held.add((receiver, tp, entry.record.offset))
        self.size += 1

    def read(self, record: Record) -> None:
        tp = Partition(record.topic, record.partition)
        self.read_to[tp] = max(self.read_to.get(tp, 0), record.offset + 1)

    def due(self, now: float) -> list[LaneKey]:
        return [key for key, lane in self.lanes.items() if lane[0].due <= now]

    def next_due(self) -> float | None:
        return min((lane[0].due for lane in self.lanes.values()), default=None)

    def head(self, key: LaneKey) -> Entry | None:
        lane = self.lanes.get(key)
        return lane[0] if lane else None

    def pop(self, key: LaneKey) -> None:
        lane = self.lanes[key]
        gone = lane.popleft()
        self.held.discard((key[0], key[1], gone.record.offset))
        self.size -= 1
        if not lane:
            del self.lanes[key]

    def floor(self, tp: Partition) -> int | None:
        """The offset to commit for `tp`: its oldest waiting event, else past what was read."""
        waiting = [lane[0].record.offset for (_, at, _), lane in self.lanes.items() if at == tp]
        if waiting:
            return min(waiting)
        return self.read_to.get(tp)

    def revoke(self, tp: Partition) -> None:
        for key in [key for key in self.lanes if key[1] == tp]:
            self.size -= len(self.lanes.pop(key))
        self.held = {h for h in self.held if h[1] != tp}
        self.read_to.pop(tp, None)

    def partitions(self) -> set[Partition]:
        """Alert partitions with an event some receiver has not taken yet."""
        return {tp for _, tp, _ in self.lanes}

    def entries(self) -> Iterator[tuple[str, Entry]]:
        for (receiver, _, _), lane in self.lanes.items():
            for entry in lane:
                yield receiver, entry
