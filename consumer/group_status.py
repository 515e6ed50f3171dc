"""`tdm-alerts status`: the consumer group as the broker sees it.

Members and what each is assigned, and per partition the committed offset, the end of the
partition (last stable offset: what read_committed readers can reach) and the lag between them.
Read with the admin API and a group-less reader, so running it never disturbs the group.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from consumer.clients import client_for
from consumer.clients.seam import Admin, ClientError, Failure, GroupInfo, Member, Partition, Reader
from consumer.connecting import connect_once
from consumer.fatal import FatalError
from consumer.settings import Settings


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    partition: Partition
    committed: int | None  # None: the group never committed here
    end: int
    owner: str | None  # member id
    waiting: int | None = None  # records (not transaction markers) past `committed`, where counted

    @property
    def lag(self) -> int:
        """Records still to read: a transaction's commit marker takes an offset and is no record."""
        return self.waiting if self.waiting is not None else self.end - (self.committed or 0)


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
    client = client_for(settings)
    admin = connect_once(client.admin, settings)
    try:
        described, committed = _read_group(admin, settings.group_id)
    except ClientError as err:
        if err.failure is Failure.NOT_AUTHORISED_GROUP:
            raise FatalError(
                f"not authorised to DESCRIBE group {settings.group_id} (TDM_GROUP_ID): grant DESCRIBE "
                f"on Group:{settings.group_id} to this principal (README 'Operator access')"
            ) from None
        raise FatalError(f"group {settings.group_id} cannot be read: {err.name}") from None
    finally:
        admin.close()
    owners = {tp: m.member_id for m in described.members for tp in m.partitions}
    tps = sorted(set(committed) | set(owners))
    reader = connect_once(lambda: client.reader("status"), settings)
    try:
        ends: Mapping[Partition, int] = reader.end_offsets(tps) if tps else {}
        waiting = {
            tp: _records_between(reader, tp, start, ends[tp])
            for tp in tps
            if (start := committed.get(tp)) is not None and 0 < ends.get(tp, 0) - start <= COUNTED_GAP
        }
    finally:
        reader.close()
    return GroupStatus(
        group=settings.group_id,
        state=described.state,
        members=described.members,
        partitions=tuple(
            PartitionStatus(tp, committed.get(tp), ends.get(tp, 0), owners.get(tp), waiting.get(tp))
            for tp in tps
        ),
    )


COUNTED_GAP = 1000  # a gap up to this is read to tell records from transaction markers
COORDINATOR_WAIT_S = 15.0
COUNT_WAIT_S = 5.0


def _read_group(admin: Admin, group_id: str) -> tuple[GroupInfo, Mapping[Partition, int]]:
    """The group and its offsets; a coordinator still loading (or the offsets topic still being
    made, on a cluster no group has used) is waited for briefly."""
    deadline = time.monotonic() + COORDINATOR_WAIT_S
    while True:
        try:
            return admin.describe_group(group_id), admin.group_offsets(group_id)
        except ClientError as err:
            if err.failure is not Failure.TRANSIENT or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _records_between(reader: Reader, tp: Partition, start: int, end: int) -> int | None:
    """How many committed records lie in [start, end); None if they could not be read in time.

    An idle group that committed everything still shows end = committed + 1: the last
    transaction's commit marker, which no reader ever receives.
    """
    reader.assign([tp])
    reader.seek(tp, start)
    counted, deadline = 0, time.monotonic() + COUNT_WAIT_S
    try:
        while reader.position(tp) < end:
            if time.monotonic() > deadline:
                return None
            counted += sum(1 for r in reader.poll(100, 500).get(tp, []) if r.offset < end)
    except ClientError as err:
        if err.failure is not Failure.NOT_AUTHORISED_TOPIC:
            raise
        return None  # an operator with DESCRIBE but no READ: the offsets' difference is shown
    return counted
