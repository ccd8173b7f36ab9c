"""The record of which scenes a watched folder has had segmented: a SQLite file that survives restarts.

A scene is identified by its content (BLAKE2b of its bytes), not its name: a
renamed copy is not processed again, and a file whose bytes change is. Hashing
is skipped when a file's size and modification time match what the ledger saw
last time. A scene that failed is not retried for the same content (a corrupt
file stays skipped until it is replaced); ``forget`` clears that.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

LEDGER_NAME = ".gigaseg-ledger.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scenes (
    source TEXT NOT NULL,
    content_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    output TEXT,
    message TEXT,
    started REAL,
    finished REAL,
    PRIMARY KEY (source, content_id)
);
CREATE TABLE IF NOT EXISTS seen (
    source TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime TEXT NOT NULL,
    content_id TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class LedgerEntry:
    """One scene's record."""

    source: str
    content_id: str
    status: str
    output: str | None
    message: str | None


def failure_reason(error: BaseException) -> str:
    """The one line that says why a scene failed: the error's first line, else its type."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class SceneLedger:
    """What has been processed from one input location, kept in ``path`` (SQLite)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60)
        try:
            with db:
                yield db
        finally:
            db.close()

    def known_content_id(self, source: str, size: int, mtime: str) -> str | None:
        """The content id recorded for ``source`` if its size and mtime are unchanged."""
        with self._db() as db:
            row = db.execute(
                "SELECT size, mtime, content_id FROM seen WHERE source = ?", (source,)
            ).fetchone()
        return row[2] if row and row[0] == size and row[1] == mtime else None

    def remember(self, source: str, size: int, mtime: str, content_id: str) -> None:
        """Cache the content id of ``source`` at this size and mtime."""
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO seen (source, size, mtime, content_id) VALUES (?, ?, ?, ?)",
                (source, size, mtime, content_id),
            )

    def get(self, source: str, content_id: str) -> LedgerEntry | None:
        """The record of this content at this source, if any."""
        with self._db() as db:
            row = db.execute(
                "SELECT source, content_id, status, output, message FROM scenes "
                "WHERE source = ? AND content_id = ?",
                (source, content_id),
            ).fetchone()
        return LedgerEntry(*row) if row else None

    def needs_processing(self, source: str, content_id: str) -> bool:
        """True unless this content was already segmented or already failed (an interrupted run is redone)."""
        entry = self.get(source, content_id)
        return entry is None or entry.status == "running"

    def start(self, source: str, content_id: str, output: str) -> None:
        """Record that processing began (a crash leaves ``running``, which the next scan redoes)."""
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO scenes (source, content_id, status, output, started) "
                "VALUES (?, ?, 'running', ?, ?)",
                (source, content_id, output, time.time()),
            )

    def finish(self, source: str, content_id: str, ok: bool, message: str | None = None) -> None:
        """Record the outcome."""
        with self._db() as db:
            db.execute(
                "UPDATE scenes SET status = ?, message = ?, finished = ? WHERE source = ? AND content_id = ?",
                ("done" if ok else "failed", message, time.time(), source, content_id),
            )

    @contextmanager
    def processing(self, source: str, content_id: str, output: str) -> Iterator[None]:
        """Record the start, then the outcome of the body: done, or failed with the error's first line."""
        self.start(source, content_id, output)
        try:
            yield
        except BaseException as exc:
            self.finish(source, content_id, ok=False, message=failure_reason(exc))
            raise
        self.finish(source, content_id, ok=True)

    def forget(self, source: str) -> int:
        """Drop every record of ``source`` (it will be processed again); returns rows removed."""
        with self._db() as db:
            n = db.execute("DELETE FROM scenes WHERE source = ?", (source,)).rowcount
            db.execute("DELETE FROM seen WHERE source = ?", (source,))
        return n

    def entries(self) -> list[LedgerEntry]:
        """Every record, oldest first."""
        with self._db() as db:
            rows = db.execute(
                "SELECT source, content_id, status, output, message FROM scenes ORDER BY started"
            ).fetchall()
        return [LedgerEntry(*r) for r in rows]
