"""The incidents Alertmanager must keep seeing, kept where a restart or another instance finds them.

Alertmanager resolves an alert its client stops re-sending, so the notifier re-sends every open
incident until it resolves. The open incidents live in a compacted topic (`TDM_NOTIFY_INCIDENTS_TOPIC`)
with as many partitions as the alert topic: the incidents of alert partition N are written to
partition N, keyed by incident key, and a resolved one is a tombstone. The instance assigned
alert partition N reads incident partition N before it delivers anything from it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import structlog

from consumer.clients.seam import Partition, Reader
from consumer.delivery import Delivery
from consumer.notify.receivers import OpenIncident

log = structlog.get_logger("tdm_alerts.notify")


class OpenIncidents:
    def __init__(self, topic: str, delivery: Delivery[Any]) -> None:
        self.topic = topic
        self.delivery = delivery
        self.by_partition: dict[int, dict[str, OpenIncident]] = {}

    def restore(self, partitions: Collection[int], reader: Reader) -> None:
        """Read the incident partitions from their start to their end (read_committed)."""
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
                        held[key] = OpenIncident.model_validate_json(record.value)
            remaining = {tp for tp in remaining if reader.position(tp) < ends[tp]}
        log.info("open incidents restored", partitions=sorted(partitions), incidents=self.count())

    def revoke(self, partitions: Collection[int]) -> None:
        for partition in partitions:
            self.by_partition.pop(partition, None)

    def get(self, partition: int, key: str) -> OpenIncident | None:
        return self.by_partition.get(partition, {}).get(key)

    def put(self, partition: int, incident: OpenIncident) -> None:
        self.by_partition.setdefault(partition, {})[incident.incident_key] = incident
        self.delivery.send(
            self.topic,
            incident.incident_key.encode(),
            incident.model_dump_json().encode(),
            [],
            partition=partition,
        )

    def close(self, partition: int, key: str) -> None:
        self.by_partition.get(partition, {}).pop(key, None)
        self.delivery.send(self.topic, key.encode(), None, [], partition=partition)

    def all(self) -> list[OpenIncident]:
        return [incident for held in self.by_partition.values() for incident in held.values()]

    def count(self) -> int:
        return sum(len(held) for held in self.by_partition.values())
