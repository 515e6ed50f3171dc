"""What the notifier remembers of each incident, kept where a restart or another instance finds it.

Two things, one record per incident:
- the Alertmanager view of an open incident: Alertmanager resolves an alert its client stops
  re-sending, so the notifier re-sends every open incident until it resolves;
- the newest event each receiver accepted, by its place in the incident's order (its offset on
  the alert topic; a replayed event keeps its original place). An event a receiver already has,
  or one older than what it has (a dead letter replayed after the incident resolved), is not
  sent to it again as news.

The records live in a compacted topic (`TDM_NOTIFY_INCIDENTS_TOPIC`) with as many partitions as
the alert topic: the incidents of alert partition N are written to partition N, keyed by
incident key. A resolved incident is remembered for TDM_NOTIFY_INCIDENT_MEMORY_DAYS after its
last event, then dropped with a tombstone. The instance assigned alert partition N reads incident
partition N before it delivers anything from it. Records written before this version (the
Alertmanager view alone) are read as open incidents no receiver is known to have.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

import structlog
from pydantic import Field

from consumer.clients.seam import Partition, Reader
from consumer.delivery import Delivery
from consumer.notify.receivers import OpenIncident
from interpretation.lab_result import Frozen

log = structlog.get_logger("tdm_alerts.notify")


class IncidentRecord(Frozen):
    """One incident as the notifier knows it."""

    incident_key: str
    alertmanager: OpenIncident | None = None  # shown (and re-sent) while open
    delivered: dict[str, int] = Field(default_factory=dict)  # receiver -> newest place it accepted
    updated_at: datetime | None = None

    def has(self, receiver: str, place: int) -> bool:
        """The receiver accepted this event, or a later one of the incident."""
        newest = self.delivered.get(receiver)
        return newest is not None and newest >= place


def _read(value: bytes) -> IncidentRecord:
    data = json.loads(value)
    if "labels" in data:  # written before the receivers' places were kept
        incident = OpenIncident.model_validate(data)
        return IncidentRecord(incident_key=incident.incident_key, alertmanager=incident)
    return IncidentRecord.model_validate(data)


class Incidents:
    def __init__(self, topic: str, delivery: Delivery[Any], memory: timedelta = timedelta(days=30)) -> None:
        self.topic = topic
        self.delivery = delivery
        self.memory = memory
        self.by_partition: dict[int, dict[str, IncidentRecord]] = {}

    def restore(self, partitions: Collection[int], reader: Reader, now: datetime) -> None:
        """Read the incident partitions from their start to their end (read_committed), then
        forget resolved incidents older than the memory."""
        tps = [Partition(self.topic, p) for p in partitions]
        if not tps:
            return
        ends = reader.end_offsets(tps)
        reader.assign(tps)
        for tp in tps:
            reader.seek_to_beginning(tp)
            self.by_partition[tp.partition] = {}
        remaining = {tp for tp in tps if reader.position(tp) < ends[tp]}
        while remaining:
            for tp, records in reader.poll(200, 5000).items():
                held = self.by_partition[tp.partition]
                for record in records:
                    key = (record.key or b"").decode()
                    if record.value is None:
                        held.pop(key, None)
                    else:
                        held[key] = _read(record.value)
            remaining = {tp for tp in remaining if reader.position(tp) < ends[tp]}
        forgotten = self.forget_old(now)
        log.info(
            "incidents restored",
            partitions=sorted(partitions),
            open=self.count(),
            remembered=sum(len(held) for held in self.by_partition.values()),
            forgotten=forgotten,
        )

    def forget_old(self, now: datetime) -> int:
        """Tombstone resolved incidents whose last event is older than the memory."""
        forgotten = 0
        for partition, held in self.by_partition.items():
            for key, record in list(held.items()):
                stale = record.updated_at is not None and now - record.updated_at > self.memory
                if record.alertmanager is None and stale:
                    del held[key]
                    self.delivery.send(self.topic, key.encode(), None, [], partition=partition)
                    forgotten += 1
        return forgotten

    def revoke(self, partitions: Collection[int]) -> None:
        for partition in partitions:
            self.by_partition.pop(partition, None)

    def get(self, partition: int, key: str) -> IncidentRecord | None:
        return self.by_partition.get(partition, {}).get(key)

    def open_incident(self, partition: int, key: str) -> OpenIncident | None:
        record = self.get(partition, key)
        return record.alertmanager if record is not None else None

    def delivered(self, partition: int, key: str, receiver: str, place: int, now: datetime) -> None:
        """`receiver` accepted the event at `place` of incident `key`."""
        record = self.get(partition, key) or IncidentRecord(incident_key=key)
        if record.has(receiver, place):
            return
        self._put(partition, record, delivered={**record.delivered, receiver: place}, updated_at=now)

    def shown(self, partition: int, key: str, incident: OpenIncident | None, now: datetime) -> None:
        """What Alertmanager is shown of incident `key` now: open (re-sent), or resolved (None)."""
        record = self.get(partition, key) or IncidentRecord(incident_key=key)
        if record.alertmanager == incident:
            return
        self._put(partition, record, alertmanager=incident, updated_at=now)

    def _put(self, partition: int, record: IncidentRecord, **change: Any) -> None:
        new = record.model_copy(update=change)
        self.by_partition.setdefault(partition, {})[new.incident_key] = new
        self.delivery.send(
            self.topic, new.incident_key.encode(), new.model_dump_json().encode(), [], partition=partition
        )

    def all(self) -> list[OpenIncident]:
        """Every open incident, for the re-sends."""
        return [
            record.alertmanager
            for held in self.by_partition.values()
            for record in held.values()
            if record.alertmanager is not None
        ]

    def count(self) -> int:
        return len(self.all())
