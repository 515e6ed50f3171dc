"""One partition's patient states in a local SQLite file, with the changelog offset they reflect.

SQLite (stdlib) rather than RocksDB: per-patient state is a few hundred bytes read and written
once per infliximab result (about 1% of the feed), so an embedded B-tree with WAL is far from
being the bottleneck, needs no wheel, and keeps memory bounded: states live on disk, not in the
heap (measured in docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# `due`: epoch seconds of the patient's next follow-up, if one waits; indexed so a tick reads the
# few that are due, never every patient (issue 39).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS patient (id TEXT PRIMARY KEY, state BLOB NOT NULL, last_seen REAL, due REAL);
CREATE INDEX IF NOT EXISTS patient_last_seen ON patient (last_seen);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_DUE_INDEX = "CREATE INDEX IF NOT EXISTS patient_due ON patient (due) WHERE due IS NOT NULL"

# One patient's entry: its serialized state, when it was last written, its next deadline.
Entry = tuple[bytes, float, float | None]


class StoreError(Exception):
    """The local store failed; the changelog, not the store, holds the truth."""


class StoreBroken(StoreError):
    """The file is not a sound SQLite database: set it aside and rebuild from the changelog."""


class StoreUnwritable(StoreError):
    """The store cannot be written at all (disk full, read-only, not a directory): no rebuild helps."""


# SQLite's words for a damaged file; every other failure to open or write is the disk's.
_BROKEN = ("not a database", "malformed", "corrupt")


def _guarded(path: Path, action: Callable[[], T]) -> T:
    try:
        return action()
    except sqlite3.DatabaseError as err:
        text = str(err)
        if any(word in text for word in _BROKEN):
            raise StoreBroken(f"{path}: {text}") from err
        raise StoreUnwritable(f"{path}: {text}") from err
    except OSError as err:
        raise StoreUnwritable(f"{path}: {err.strerror or err}") from err


class PartitionStore:
    """Patient id -> serialized state for one changelog partition.

    Besides the states it keeps the offset of the last changelog record it reflects and a digest
    of that record, so a restore can tell a store that belongs to this changelog from one that
    does not (a recreated changelog, another cluster's state directory).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        _guarded(path, lambda: path.parent.mkdir(parents=True, exist_ok=True))
        # check_same_thread=False: a store is opened in a rebalance callback (kafka-python K6:
        # inside poll) and used in the loop.
        self._db = _guarded(
            path, lambda: sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        )
        try:
            _guarded(path, self._open)
        except StoreError:
            self._db.close()
            raise

    def _open(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # A page-level check, a few ms for 10,000 patients: a damaged file is found here, at
        # assignment, not as a failed read of some patient's state later.
        if (check := self._db.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed ({check})")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(patient)")}
        if "due" not in columns:  # a store written before follow-ups: none of its patients has one
            self._db.execute("ALTER TABLE patient ADD COLUMN due REAL")
        self._db.execute(_DUE_INDEX)

    @staticmethod
    def open_or_rebuild(path: Path, on_rebuild: Callable[[str], None]) -> PartitionStore:
        """Open the store; a damaged one is moved aside (kept for a post-mortem) and started anew."""
        try:
            return PartitionStore(path)
        except StoreBroken as err:
            on_rebuild(str(err))
        aside = path.with_name(f"{path.name}.broken-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            old = Path(f"{path}{suffix}")
            if old.exists():
                _guarded(path, partial(old.rename, f"{aside}{suffix}"))
        return PartitionStore(path)

    def reset(self) -> None:
        """Forget every state and the changelog position: the restore then replays it all."""
        _guarded(self.path, lambda: self._db.executescript("DELETE FROM patient; DELETE FROM meta;"))

    def get(self, patient_id: str) -> bytes | None:
        row = _guarded(
            self.path,
            lambda: self._db.execute("SELECT state FROM patient WHERE id = ?", (patient_id,)).fetchone(),
        )
        return None if row is None else bytes(row[0])

    def changelog_offset(self) -> int | None:
        """The offset of the last changelog record this store reflects (None: nothing yet)."""
        row = self._meta("changelog_offset")
        return None if row is None else int(row)

    def changelog_digest(self) -> int | None:
        """A digest of that record (`record_digest`); None for a store written before it was kept."""
        return self._meta("changelog_digest")

    def _meta(self, name: str) -> int | None:
        row = _guarded(
            self.path, lambda: self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        )
        return None if row is None else int(row[0])

    def apply(
        self,
        writes: Mapping[str, Entry | None],
        changelog_offset: int | None,
        digest: int | None = None,
    ) -> None:
        """Write (None deletes) and move the changelog offset (and its record's digest), atomically."""
        _guarded(self.path, lambda: self._apply(writes, changelog_offset, digest))

    def _apply(
        self,
        writes: Mapping[str, Entry | None],
        changelog_offset: int | None,
        digest: int | None,
    ) -> None:
        with self._transaction():
            for patient_id, entry in writes.items():
                if entry is None:
                    self._db.execute("DELETE FROM patient WHERE id = ?", (patient_id,))
                else:
                    state, last_seen, due = entry
                    self._db.execute(
                        "INSERT INTO patient (id, state, last_seen, due) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET state = excluded.state, "
                        "last_seen = excluded.last_seen, due = excluded.due",
                        (patient_id, state, last_seen, due),
                    )
            for name, value in (("changelog_offset", changelog_offset), ("changelog_digest", digest)):
                if value is not None:
                    self._db.execute(
                        "INSERT INTO meta (name, value) VALUES (?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                        (name, value),
                    )

    def expired(self, before: float, limit: int) -> list[str]:
        """Patients not seen since `before` (epoch seconds), at most `limit` of them."""
        rows = _guarded(
            self.path,
            lambda: self._db.execute(
                "SELECT id FROM patient WHERE last_seen IS NOT NULL AND last_seen < ? LIMIT ?",
                (before, limit),
            ).fetchall(),
        )
        return [str(r[0]) for r in rows]

    def due(self, by: float, limit: int) -> list[str]:
        """Patients with a follow-up due by `by` (epoch seconds), soonest first, at most `limit`."""
        rows = _guarded(
            self.path,
            lambda: self._db.execute(
                "SELECT id FROM patient WHERE due IS NOT NULL AND due <= ? ORDER BY due LIMIT ?",
                (by, limit),
            ).fetchall(),
        )
        return [str(r[0]) for r in rows]

    def next_due(self) -> float | None:
        """The soonest follow-up of this partition (epoch seconds), if any waits."""
        row = _guarded(
            self.path,
            lambda: self._db.execute("SELECT min(due) FROM patient WHERE due IS NOT NULL").fetchone(),
        )
        return None if row is None or row[0] is None else float(row[0])

    def count(self) -> int:
        return int(
            _guarded(self.path, lambda: self._db.execute("SELECT count(*) FROM patient").fetchone()[0])
        )

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, kind: object, *_: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


def record_digest(key: bytes | None, value: bytes | None) -> int:
    """What identifies a changelog record's content (63 bits, fits SQLite's INTEGER)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(key or b"")
    h.update(b"\x00" if value is None else b"\x01" + value)
    return int.from_bytes(h.digest(), "big") >> 1
