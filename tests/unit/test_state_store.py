"""The local patient-state store is a cache of the changelog (issue 27): a damaged file is set
aside and rebuilt, a store that cannot be written is a named error, and a store that is not a
prefix of its changelog is found before it is used."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import pytest

from consumer.clients.seam import Partition, Record
from consumer.state.manager import _not_a_prefix
from consumer.state.store import PartitionStore, StoreBroken, StoreUnwritable, record_digest

TP = Partition("g.patient-state-changelog", 0)


def _filled(path: Path) -> PartitionStore:
    store = PartitionStore(path)
    store.apply({"PT-1": (b'{"a":1}', 1.0, None)}, 41, record_digest(b"PT-1", b'{"a":1}'))
    return store


def test_a_damaged_file_is_set_aside_and_started_anew(tmp_path):
    path = tmp_path / "0.sqlite"
    _filled(path).close()
    with path.open("r+b") as f:
        f.write(b"\x00" * 100)  # the header overwritten, as the harness did
    with pytest.raises(StoreBroken):
        PartitionStore(path)
    seen: list[str] = []
    store = PartitionStore.open_or_rebuild(path, seen.append)
    assert store.changelog_offset() is None and store.get("PT-1") is None
    assert len(seen) == 1 and "not a database" in seen[0]
    assert [p.name for p in tmp_path.iterdir() if ".broken-" in p.name]  # kept for a post-mortem


def test_a_state_dir_that_is_a_file_is_unwritable_not_broken(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnwritable, match="state"):
        PartitionStore.open_or_rebuild(blocker / "changelog" / "0.sqlite", lambda why: None)


def test_a_full_disk_is_unwritable_not_broken(tmp_path):
    store = _filled(tmp_path / "0.sqlite")
    # SQLite's own limit gives the error a full disk gives (SQLITE_FULL), without filling one.
    store._db.execute("PRAGMA max_page_count = 8")
    with pytest.raises(StoreUnwritable, match="full"):
        store.apply({f"PT-{n}": (b"x" * 4000, 1.0, None) for n in range(50)}, 42)


def test_reset_forgets_states_and_position(tmp_path):
    store = _filled(tmp_path / "0.sqlite")
    store.reset()
    assert (store.count(), store.changelog_offset(), store.changelog_digest()) == (0, None, None)


class _Changelog:
    """A reader over an in-memory changelog partition (the seam's Reader, for one partition)."""

    def __init__(self, records: dict[int, tuple[bytes, bytes | None]]) -> None:
        self.records = records
        self.at = 0

    def assign(self, partitions: Collection[Partition]) -> None:
        pass

    def seek(self, partition: Partition, offset: int) -> None:
        self.at = offset

    def position(self, partition: Partition) -> int:
        return self.at

    def poll(self, timeout_ms: int, max_records: int) -> Mapping[Partition, Sequence[Record]]:
        offsets = sorted(o for o in self.records if o >= self.at)[:max_records]
        if not offsets:
            self.at = max(self.records, default=-1) + 1
            return {}
        self.at = offsets[-1] + 1
        return {TP: [_record(o, *self.records[o]) for o in offsets]}


def _record(offset: int, key: bytes, value: bytes | None) -> Record:
    return Record(TP.topic, TP.partition, offset, key, value, (), None)


def test_a_store_is_trusted_only_where_the_changelog_holds_the_record_it_last_applied():
    log = _Changelog({40: (b"PT-0", b"{}"), 41: (b"PT-1", b'{"a":1}'), 43: (b"PT-2", b"{}")})
    digest = record_digest(b"PT-1", b'{"a":1}')
    assert _not_a_prefix(log, TP, 44, 41, digest) is None  # type: ignore[arg-type]
    assert "ends at 30" in str(_not_a_prefix(log, TP, 30, 41, digest))  # type: ignore[arg-type]
    other = record_digest(b"PT-1", b'{"a":2}')
    assert "another record" in str(_not_a_prefix(log, TP, 44, 41, other))  # type: ignore[arg-type]
    assert "no longer there" in str(_not_a_prefix(log, TP, 44, 42, digest))  # type: ignore[arg-type]


def test_a_store_written_before_follow_ups_gains_the_deadlines_index(tmp_path):
    """Issue 39: an existing store (no `due` column) opens, keeps its patients, and indexes deadlines."""
    import sqlite3

    path = tmp_path / "0.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE patient (id TEXT PRIMARY KEY, state BLOB NOT NULL, last_seen REAL);"
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO patient VALUES ('PT-OLD', x'7b7d', 1.0);"
    )
    old.commit()
    old.close()
    store = PartitionStore(path)
    assert store.get("PT-OLD") == b"{}" and store.next_due() is None
    store.apply({"PT-NEW": (b"{}", 2.0, 500.0)}, 7)
    assert store.due(499.0, 10) == [] and store.due(500.0, 10) == ["PT-NEW"]
    plan = " ".join(
        str(r)
        for r in store._db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM patient WHERE due IS NOT NULL AND due <= 1 ORDER BY due"
        )
    )
    assert "patient_due" in plan  # the tick reads the index, never every patient
