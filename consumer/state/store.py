"""One partition's patient states in a local SQLite file, with the changelog offset they reflect.

SQLite (stdlib) rather than RocksDB: per-patient state is a few hundred bytes read and written
once per infliximab result (about 1% of the feed), so an embedded B-tree with WAL is far from
being the bottleneck, needs no wheel, and keeps memory bounded: states live on disk, not in the
heap (measured in docs/benchmarks.md).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS patient (id TEXT PRIMARY KEY, state BLOB NOT NULL, last_seen REAL);
CREATE INDEX IF NOT EXISTS patient_last_seen ON patient (last_seen);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class PartitionStore:
    """Patient id -> serialized state for one changelog partition."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # check_same_thread=False: kafka-python calls rebalance listeners from poll(), on the
        # service thread, but a store may be opened in one callback and used in the loop.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def get(self, patient_id: str) -> bytes | None:
        row = self._db.execute("SELECT state FROM patient WHERE id = ?", (patient_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def changelog_offset(self) -> int | None:
        """The offset of the last changelog record this store reflects (None: nothing yet)."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'changelog_offset'").fetchone()
        return None if row is None else int(row[0])

    def apply(self, writes: Mapping[str, tuple[bytes, float] | None], changelog_offset: int | None) -> None:
        """Write (None deletes) and move the changelog offset, atomically."""
        with self._transaction():
            for patient_id, entry in writes.items():
                if entry is None:
                    self._db.execute("DELETE FROM patient WHERE id = ?", (patient_id,))
                else:
                    state, last_seen = entry
                    self._db.execute(
                        "INSERT INTO patient (id, state, last_seen) VALUES (?, ?, ?) ON CONFLICT(id) "
                        "DO UPDATE SET state = excluded.state, last_seen = excluded.last_seen",
                        (patient_id, state, last_seen),
                    )
            if changelog_offset is not None:
                self._db.execute(
                    "INSERT INTO meta (name, value) VALUES ('changelog_offset', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    (changelog_offset,),
                )

    def expired(self, before: float, limit: int) -> list[str]:
        """Patients not seen since `before` (epoch seconds), at most `limit` of them."""
        rows = self._db.execute(
            "SELECT id FROM patient WHERE last_seen IS NOT NULL AND last_seen < ? LIMIT ?", (before, limit)
        )
        return [str(r[0]) for r in rows]

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM patient").fetchone()[0])

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
