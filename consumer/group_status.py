"""`tdm-alerts status`: the consumer group as the broker sees it.

Members and what each is assigned, and per partition the committed offset, the end of the
partition (last stable offset: what read_committed readers can reach) and the lag between them.
Read with the admin API and a group-less reader, so running it never disturbs the group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kafka import TopicPartition
from kafka.errors import KafkaError

from consumer.dead_letter_reader import new_reader
from consumer.fatal import FatalError
from consumer.kafka_clients import connect_once, new_admin
from consumer.settings import Settings


@dataclass(frozen=True, slots=True)
class Member:
    member_id: str
    host: str
    partitions: tuple[TopicPartition, ...]


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    partition: TopicPartition
    committed: int | None  # None: the group never committed here
    end: int
    owner: str | None  # member id

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


@dataclass(frozen=True, slots=True)
class GroupStatus:
    group: str
    state: str
    members: tuple[Member, ...]
    partitions: tuple[PartitionStatus, ...]

    def render(self) -> str:
        lines = [f"group {self.group}: {self.state}, {len(self.members)} member(s)"]
        for m in self.members:
            assigned = ", ".join(f"{tp.topic}/{tp.partition}" for tp in m.partitions)
            assigned = assigned or "no partitions (idle)"
            lines.append(f"  {m.member_id} on {m.host}: {assigned}")
        rows = [("partition", "committed", "end", "lag", "owner")]
        rows += [
            (
                f"{p.partition.topic}/{p.partition.partition}",
                "-" if p.committed is None else str(p.committed),
                str(p.end),
                str(p.lag),
                p.owner or "-",
            )
            for p in self.partitions
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines.append("")
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.append(f"\ntotal lag: {sum(p.lag for p in self.partitions)} messages")
        return "\n".join(lines)


def group_status(settings: Settings) -> GroupStatus:
    admin = connect_once(lambda: new_admin(settings), settings)
    try:
        described = admin.describe_groups([settings.group_id])[settings.group_id]
        if described.get("error"):
            raise FatalError(f"group {settings.group_id} cannot be described: {described['error']}")
        committed = admin.list_group_offsets(settings.group_id).get(settings.group_id, {})
    except KafkaError as err:
        raise FatalError(f"group {settings.group_id} cannot be read: {type(err).__name__}") from None
    finally:
        admin.close()
    members = tuple(_member(m) for m in described.get("members", []))
    owners = {tp: m.member_id for m in members for tp in m.partitions}
    tps = sorted(set(committed) | set(owners))
    reader = new_reader(settings, "status")
    try:
        ends: Mapping[TopicPartition, int] = reader.end_offsets(tps) if tps else {}
    finally:
        reader.close()
    return GroupStatus(
        group=settings.group_id,
        state=str(described.get("group_state") or "unknown"),
        members=members,
        partitions=tuple(
            PartitionStatus(
                tp, committed[tp].offset if tp in committed else None, ends.get(tp, 0), owners.get(tp)
            )
            for tp in tps
        ),
    )


def _member(described: Mapping[str, object]) -> Member:
    assignment = described.get("member_assignment")
    topics = assignment.get("assigned_partitions", []) if isinstance(assignment, dict) else []
    return Member(
        member_id=str(described.get("member_id", "?")),
        host=str(described.get("client_host", "?")).lstrip("/"),
        partitions=tuple(
            sorted(TopicPartition(t["topic"], p) for t in topics for p in t.get("partitions", []))
        ),
    )
