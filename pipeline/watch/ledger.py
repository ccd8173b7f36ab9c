"""The record of which scenes a watched folder has had segmented: a SQLite file that survives restarts.

A scene is identified by its content (BLAKE2b of its bytes), not its name: a
renamed copy is not processed again, and a file whose bytes change is. Hashing
is skipped when a file's size and modification time match what the ledger saw
last time. Each record also keeps the settings its output was made with (a
``settings_id``: :func:`pipeline.watch.settings.settings_id`), so a scene is
segmented again when the model or an option that shapes the output changes; a
record written before settings were kept has none, and so counts as made with
other settings. A scene that failed is not retried for the same content and
settings (a corrupt file stays skipped until it is replaced); ``forget`` clears that.

A local output folder keeps the ledger in one SQLite file (:class:`SceneLedger`;
SQLite's own locking serialises the scenes that update it at once). Object storage
has neither locks nor renames, and SQLite cannot live on it, so an output folder
there keeps one small JSON object per record (:class:`ObjectLedger`, under
``.gigaseg-ledger/``): each scene's record is written only by the task segmenting
that scene, and an object is replaced whole by one PUT, so concurrent scenes —
in threads, processes or on other nodes — never overwrite each other's updates
(the ledger's form of "one writer per chunk"). :func:`open_ledger` picks the kind.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.errors import expected_failure
from pipeline.stores.location import ObjectLocation, Where, storage_error

LEDGER_NAME = ".gigaseg-ledger.sqlite"
"""The ledger's file in a local output folder."""
OBJECT_LEDGER_NAME = ".gigaseg-ledger"
"""The ledger's prefix in an output folder on object storage (one object per record)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scenes (
    source TEXT NOT NULL,
    content_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    output TEXT,
    message TEXT,
    started REAL,
    finished REAL,
    settings_id TEXT,
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
    settings_id: str | None = None
    """The settings the output was made with; None in a record older than that."""

    def needs_processing(self, settings_id: str) -> bool:
        """True unless done or failed with these settings (an interrupted run is redone)."""
        return self.status == "running" or self.settings_id != settings_id


def failure_reason(error: BaseException) -> str:
    """The one line that says why a scene failed: the expected failure's line, else the error's first."""
    expected = expected_failure(error)
    if expected is not None:
        return expected
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class SceneLedger:
    """What has been processed from one input location, kept in ``path`` (SQLite)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        with self._db() as db:
            db.executescript(_SCHEMA)
            _add_settings_column(db)

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
                f"SELECT {_COLUMNS} FROM scenes WHERE source = ? AND content_id = ?",
                (source, content_id),
            ).fetchone()
        return LedgerEntry(*row) if row else None

    def needs_processing(self, source: str, content_id: str, settings_id: str) -> bool:
        """True unless this content was already segmented, or failed, with these settings."""
        entry = self.get(source, content_id)
        return entry is None or entry.needs_processing(settings_id)

    def start(self, source: str, content_id: str, output: str, settings_id: str) -> None:
        """Record that processing began (a crash leaves ``running``, which the next scan redoes)."""
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO scenes (source, content_id, status, output, started, settings_id) "
                "VALUES (?, ?, 'running', ?, ?, ?)",
                (source, content_id, output, time.time(), settings_id),
            )

    def finish(self, source: str, content_id: str, ok: bool, message: str | None = None) -> None:
        """Record the outcome."""
        with self._db() as db:
            db.execute(
                "UPDATE scenes SET status = ?, message = ?, finished = ? WHERE source = ? AND content_id = ?",
                ("done" if ok else "failed", message, time.time(), source, content_id),
            )

    @contextmanager
    def processing(self, source: str, content_id: str, output: str, settings_id: str) -> Iterator[None]:
        """Record the start, then the outcome of the body: done, or failed with the error's first line."""
        self.start(source, content_id, output, settings_id)
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
            rows = db.execute(f"SELECT {_COLUMNS} FROM scenes ORDER BY started").fetchall()
        return [LedgerEntry(*r) for r in rows]


_COLUMNS = "source, content_id, status, output, message, settings_id"
"""A :class:`LedgerEntry`'s columns, in its order."""


def _add_settings_column(db: sqlite3.Connection) -> None:
    """Give a ledger written before settings were kept their column (its records: settings unknown)."""
    if "settings_id" in {row[1] for row in db.execute("PRAGMA table_info(scenes)")}:
        return
    try:
        db.execute("ALTER TABLE scenes ADD COLUMN settings_id TEXT")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):  # another process added it first
            raise


def _key(*parts: str) -> str:
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()


class ObjectLedger:
    """:class:`SceneLedger`'s records as one JSON object each under ``prefix`` on object storage.

    ``scenes/<hash(source, content)>.json`` holds a scene's status and
    ``seen/<hash(source)>.json`` the size and change marker its content id was
    computed at. Records are read in one batch on first use (a scan asks about
    every file) and written through, whole.
    """

    def __init__(self, prefix: ObjectLocation):
        self.prefix = prefix
        self.path = str(prefix)
        self._cache: dict[str, dict[str, dict[str, Any]]] = {}

    def _where(self, kind: str, key: str) -> ObjectLocation:
        return self.prefix / kind / f"{key}.json"

    def _all(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every record of ``kind`` by key (listed and fetched once per ledger object)."""
        if kind not in self._cache:
            folder = self.prefix / kind
            try:
                found = folder.fs.find(folder.url)
                blobs = folder.fs.cat([folder.fs.unstrip_protocol(k) for k in found]) if found else {}
            except Exception as exc:
                raise storage_error(folder, exc) from None
            self._cache[kind] = {
                os.path.basename(k).removesuffix(".json"): json.loads(v) for k, v in blobs.items()
            }
        return self._cache[kind]

    def _put(self, kind: str, key: str, record: dict[str, Any]) -> None:
        where = self._where(kind, key)
        try:
            where.write_text(json.dumps(record, sort_keys=True))
        except Exception as exc:
            raise storage_error(where, exc) from None
        if kind in self._cache:
            self._cache[kind][key] = record

    def _one(self, kind: str, key: str) -> dict[str, Any] | None:
        """One record (from the batch if it was read, else fetched alone)."""
        if kind in self._cache:
            return self._cache[kind].get(key)
        where = self._where(kind, key)
        try:
            return json.loads(where.read_bytes())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise storage_error(where, exc) from None

    def known_content_id(self, source: str, size: int, mtime: str) -> str | None:
        """The content id recorded for ``source`` if its size and mtime are unchanged."""
        row = self._all("seen").get(_key(source))
        return row["content_id"] if row and row["size"] == size and row["mtime"] == mtime else None

    def remember(self, source: str, size: int, mtime: str, content_id: str) -> None:
        """Cache the content id of ``source`` at this size and mtime."""
        record = {"source": source, "size": size, "mtime": mtime, "content_id": content_id}
        self._put("seen", _key(source), record)

    def get(self, source: str, content_id: str) -> LedgerEntry | None:
        """The record of this content at this source, if any."""
        row = self._all("scenes").get(_key(source, content_id))
        return _entry(row) if row else None

    def needs_processing(self, source: str, content_id: str, settings_id: str) -> bool:
        """True unless this content was already segmented, or failed, with these settings."""
        entry = self.get(source, content_id)
        return entry is None or entry.needs_processing(settings_id)

    def start(self, source: str, content_id: str, output: str, settings_id: str) -> None:
        """Record that processing began (a crash leaves ``running``, which the next scan redoes)."""
        record = {
            "source": source, "content_id": content_id, "status": "running", "output": output,
            "message": None, "started": time.time(), "finished": None, "settings_id": settings_id,
        }  # fmt: skip
        self._put("scenes", _key(source, content_id), record)

    def finish(self, source: str, content_id: str, ok: bool, message: str | None = None) -> None:
        """Record the outcome."""
        key = _key(source, content_id)
        record = dict(self._one("scenes", key) or {"source": source, "content_id": content_id})
        record.update(status="done" if ok else "failed", message=message, finished=time.time())
        self._put("scenes", key, record)

    processing = SceneLedger.processing

    def forget(self, source: str) -> int:
        """Drop every record of ``source`` (it will be processed again); returns records removed."""
        gone = [k for k, row in self._all("scenes").items() if row["source"] == source]
        for key in gone:
            self._where("scenes", key).unlink(missing_ok=True)
            del self._cache["scenes"][key]
        self._where("seen", _key(source)).unlink(missing_ok=True)
        self._cache.pop("seen", None)
        return len(gone)

    def entries(self) -> list[LedgerEntry]:
        """Every record, oldest first."""
        rows = sorted(self._all("scenes").values(), key=lambda r: r.get("started") or 0.0)
        return [_entry(r) for r in rows]


def _entry(row: dict[str, Any]) -> LedgerEntry:
    optional = (row.get(name) for name in ("output", "message", "settings_id"))
    return LedgerEntry(row["source"], row["content_id"], row["status"], *optional)


Ledger = SceneLedger | ObjectLedger


def open_ledger(output_dir: Where) -> Ledger:
    """The ledger of a watch writing into ``output_dir``: a SQLite file locally, objects on a bucket."""
    if isinstance(output_dir, ObjectLocation):
        return ObjectLedger(output_dir / OBJECT_LEDGER_NAME)
    return SceneLedger(output_dir / LEDGER_NAME)
