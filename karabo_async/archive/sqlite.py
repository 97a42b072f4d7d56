"""The archive in an embedded SQLite file (aiosqlite): the default, needing no server.

One connection in WAL mode, used under an asyncio lock so that a transaction of one task never
interleaves with statements of another. Before every use the store checks that the path still names
the file it opened: a deleted, moved or unmounted database would otherwise swallow writes into an
unreachable inode. A lost file makes calls raise ArchiveUnavailable until it is back; reopening never
creates a new empty file in its place.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

import aiosqlite
import structlog

from ..errors import ArchiveUnavailable, ArchiveValueError, ConfigurationExists, UnknownConfiguration
from .migrations import VERSION_TABLE, pending
from .reduce import StoredPoint, merge_bucket_rows
from .store import (
    ArchiveStore,
    ConfigurationRow,
    PreparedChange,
)

log = structlog.get_logger(__name__)

MEMORY: Final = ":memory:"
# Primary result codes that mean "the file cannot be used now" rather than "the SQL is wrong":
# BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN.
_UNAVAILABLE_CODES: Final = frozenset({5, 6, 8, 10, 13, 14})
_POINT: Final = "t, train_id, kind, num, val"
_INSERT_CHANGE: Final = (
    "INSERT INTO changes (property, t, train_id, kind, num, val, alarm) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def path_of(url: str) -> str:
    """The file named by ``sqlite:///abs.db``, ``sqlite:rel.db`` or ``sqlite::memory:``."""
    parts = urlsplit(url)
    if parts.netloc:
        raise ArchiveValueError(
            f"sqlite url {url!r} names a host; write sqlite:///absolute/path.db or sqlite:relative.db"
        )
    if not parts.path:
        raise ArchiveValueError(f"sqlite url {url!r} names no file")
    # sqlite:////abs.db (four slashes, as SQLAlchemy writes it) means the same absolute path
    return "/" + parts.path.lstrip("/") if parts.path.startswith("/") else parts.path


class SqliteStore(ArchiveStore):
    """The archive in a SQLite file; see :class:`ArchiveStore` for the methods."""

    def __init__(self, url: str, path: str, conn: aiosqlite.Connection, version: int) -> None:
        super().__init__(url)
        self._path = path
        self._db: aiosqlite.Connection | None = conn
        self._version = version
        self._identity = self._file_identity()
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str, *, target_version: int | None = None) -> SqliteStore:
        """Open or create the file, then create or migrate the schema (``target_version``: for tests)."""
        path = path_of(url)
        if path != MEMORY and not Path(path).parent.is_dir():
            raise ArchiveUnavailable(url, f"directory {str(Path(path).parent)!r} does not exist")
        conn = await _connect(url, path, create=True)
        store = cls(url, path, conn, 0)

        async def migrate() -> int:
            async with store._connection() as db:
                return await _migrate(db, url, target_version)

        await store._finish_open(migrate)
        return store

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await _close(db, self.url)

    def _file_identity(self) -> tuple[int, int] | None:
        if self._path == MEMORY:
            return None
        try:
            info = os.stat(self._path)
        except OSError as exc:
            log.warning("archive file is not reachable", url=self.url, error=str(exc))
            return None
        return info.st_dev, info.st_ino

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, held exclusively; reconnects after a loss, maps file trouble."""
        async with self._lock:
            db = await self._usable_connection()
            try:
                yield db
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
                if code not in _UNAVAILABLE_CODES:
                    raise
                if code not in (5, 6):  # anything but contention: start afresh next time
                    await self.close()
                raise ArchiveUnavailable(self.url, str(exc)) from exc

    async def _usable_connection(self) -> aiosqlite.Connection:
        if self._path != MEMORY and self._db is not None and self._file_identity() != self._identity:
            await self.close()
            raise ArchiveUnavailable(
                self.url, f"database file {self._path!r} is gone (moved, deleted or unmounted)"
            )
        if self._db is None:
            if self._path == MEMORY:
                raise ArchiveUnavailable(self.url, "the in-memory database was closed")
            self._db = await _connect(self.url, self._path, create=False)
            self._identity = self._file_identity()
            log.info("archive reconnected", url=self.url)
        return self._db

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._connection() as db:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await _rollback(db, self.url)
                raise
            await db.execute("COMMIT")

    # --- writing ----------------------------------------------------------------------------------

    async def _insert_changes(
        self,
        prepared: list[PreparedChange],
        devices: Mapping[str, int],
        properties: Mapping[tuple[str, str], int],
    ) -> tuple[dict[str, tuple[int, int]], dict[tuple[str, str], tuple[int, int]]]:
        async with self._transaction() as db:
            new_devices = {d: await _register_device(db, d, t) for d, t in sorted(devices.items())}
            new_properties: dict[tuple[str, str], tuple[int, int]] = {}
            if properties:
                ids = {d: k[0] for d, k in self._device_keys.items()} | {
                    d: k[0] for d, k in new_devices.items()
                }
                await db.executemany(
                    "INSERT INTO properties (device, path, first_t) VALUES (?, ?, ?)"
                    " ON CONFLICT (device, path) DO UPDATE SET first_t = min(first_t, excluded.first_t)",
                    [(ids[d], p, t) for (d, p), t in sorted(properties.items())],
                )
                for device_id in {d for d, _ in properties}:
                    rows = await db.execute_fetchall(
                        "SELECT path, id, first_t FROM properties WHERE device = ?", (ids[device_id],)
                    )
                    for path, key, first in rows:
                        if (device_id, path) in properties:
                            new_properties[(device_id, path)] = (key, first)
            await db.executemany(_INSERT_CHANGE, self._change_rows(prepared, new_properties))
        return new_devices, new_properties

    async def _insert_schema(self, device_id: str, t: int, train_id: int, doc: bytes) -> tuple[int, int]:
        async with self._transaction() as db:
            key = await _register_device(db, device_id, t)
            await db.execute(
                "INSERT INTO schemas (device, t, train_id, doc) VALUES (?, ?, ?, ?)",
                (key[0], t, train_id, doc),
            )
        return key

    async def _insert_event(
        self, device_id: str, t: int, train_id: int, kind: str, info: bytes | None
    ) -> tuple[int, int]:
        async with self._transaction() as db:
            key = await _register_device(db, device_id, t)
            await db.execute(
                "INSERT INTO events (device, t, train_id, kind, info) VALUES (?, ?, ?, ?, ?)",
                (key[0], t, train_id, kind, info),
            )
        return key

    # --- reading ----------------------------------------------------------------------------------

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        async with self._connection() as db:
            return list(await db.execute_fetchall(query, args))

    async def _fetchone(self, query: str, *args: Any) -> Any:
        rows = await self._fetch(query, *args)
        return rows[0] if rows else None

    async def _select_points(self, property_key: int, low: int, high: int, limit: int) -> list[StoredPoint]:
        rows = await self._fetch(
            f"SELECT {_POINT} FROM changes WHERE property = ? AND t BETWEEN ? AND ?"
            " ORDER BY t, rowid LIMIT ?",
            property_key,
            low,
            high,
            limit,
        )
        return [tuple(r) for r in rows]

    async def _select_reduced(
        self, property_key: int, first: int, last: int, width: int
    ) -> tuple[list[StoredPoint], int]:
        # SQLite has no LATERAL: correlated subqueries pick each bucket's rowids instead.
        probe = "SELECT rowid FROM changes WHERE property = :p AND t"
        within = f"{probe} BETWEEN b.t_first AND b.t_last AND num ="
        rows = await self._fetch_named(
            "WITH buckets AS ("
            " SELECT (t - :first) / :width AS bucket, count(*) AS n, min(t) AS t_first, max(t) AS t_last,"
            " min(num) AS low, max(num) AS high"
            " FROM changes WHERE property = :p AND t BETWEEN :first AND :last GROUP BY bucket),"
            " picks AS ("
            f" SELECT bucket, n, ({probe} = b.t_first ORDER BY t, rowid LIMIT 1) AS id FROM buckets b"
            f" UNION ALL SELECT bucket, n, ({probe} = b.t_last ORDER BY t DESC, rowid DESC LIMIT 1)"
            " FROM buckets b"
            f" UNION ALL SELECT bucket, n, ({within} b.low ORDER BY t, rowid LIMIT 1) FROM buckets b"
            f" UNION ALL SELECT bucket, n, ({within} b.high ORDER BY t, rowid LIMIT 1) FROM buckets b)"
            f" SELECT p.bucket, p.n, c.rowid, c.{_POINT.replace(', ', ', c.')}"
            " FROM picks p JOIN changes c ON c.rowid = p.id",
            {"p": property_key, "first": first, "last": last, "width": width},
        )
        return merge_bucket_rows(rows)

    async def _fetch_named(self, query: str, params: Mapping[str, Any]) -> list[Any]:
        async with self._connection() as db:
            return list(await db.execute_fetchall(query, params))

    async def _select_latest(
        self, device_key: int, t: int
    ) -> list[tuple[str, int, int, int, float | None, bytes | None]]:
        rows = await self._fetch(
            "SELECT p.path, c.t, c.train_id, c.kind, c.num, c.val FROM properties p JOIN changes c"
            " ON c.rowid = (SELECT rowid FROM changes WHERE property = p.id AND t <= ?"
            " ORDER BY t DESC, rowid DESC LIMIT 1) WHERE p.device = ?",
            t,
            device_key,
        )
        return [tuple(r) for r in rows]

    async def _select_schema(self, device_key: int, t: int) -> bytes | None:
        row = await self._fetchone(
            "SELECT doc FROM schemas WHERE device = ? AND t <= ? ORDER BY t DESC, rowid DESC LIMIT 1",
            device_key,
            t,
        )
        return None if row is None else bytes(row[0])

    async def _select_events(
        self, device_key: int, low: int, high: int
    ) -> list[tuple[int, int, str, bytes | None]]:
        rows = await self._fetch(
            "SELECT t, train_id, kind, info FROM events WHERE device = ? AND t BETWEEN ? AND ?"
            " ORDER BY t, rowid",
            device_key,
            low,
            high,
        )
        return [tuple(r) for r in rows]

    # --- configuration manager ------------------------------------------------------------------

    async def _insert_configurations(self, rows: list[ConfigurationRow], overwrite: bool) -> None:
        verb = "INSERT OR REPLACE" if overwrite else "INSERT"
        async with self._transaction() as db:
            for row in rows:
                try:
                    await db.execute(
                        f"{verb} INTO configurations"
                        " (device_id, name, saved_t, description, user_name, config)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        row,
                    )
                except sqlite3.IntegrityError as exc:
                    raise ConfigurationExists(row[1], row[0]) from exc

    async def _delete_configuration(self, name: str, device_id: str) -> None:
        async with self._connection() as db:
            cursor = await db.execute(
                "DELETE FROM configurations WHERE device_id = ? AND name = ?", (device_id, name)
            )
            deleted = cursor.rowcount
            await cursor.close()
        if deleted == 0:
            raise UnknownConfiguration(name, device_id)


async def _connect(url: str, path: str, *, create: bool) -> aiosqlite.Connection:
    """Open the file (creating it only on first start) with the settings the archive relies on."""
    if not create and not _exists(path):
        raise ArchiveUnavailable(url, f"database file {path!r} is missing")
    target = path if path == MEMORY else f"file:{quote(path)}?mode={'rwc' if create else 'rw'}"
    pending = aiosqlite.connect(target, uri=path != MEMORY, isolation_level=None)
    try:
        db = await pending
    except sqlite3.Error as exc:
        # aiosqlite stops its worker thread without waiting; wait here, or the thread may report
        # to an event loop that is gone by then.
        worker = getattr(pending, "_thread", None)
        if worker is not None:
            await asyncio.to_thread(worker.join, 5.0)
        raise ArchiveUnavailable(url, f"cannot open {path!r}: {exc}") from exc
    try:
        await db.execute("PRAGMA busy_timeout = 5000")
        if path != MEMORY:
            # WAL: readers are not blocked by the logger's writes; NORMAL sync is safe in WAL mode
            # (a power cut may lose the last transactions, never corrupt the file).
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        await _close(db, url)
        raise ArchiveUnavailable(url, f"cannot use {path!r}: {exc}") from exc
    return db


def _exists(path: str) -> bool:
    """A stat, cheap enough for the event loop: the file is local or the archive is broken anyway."""
    return os.path.exists(path)


async def _close(db: aiosqlite.Connection, url: str) -> None:
    try:
        await db.close()
    except sqlite3.Error as exc:
        log.warning("archive connection did not close cleanly", url=url, error=str(exc))


async def _rollback(db: aiosqlite.Connection, url: str) -> None:
    try:
        await db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        # The transaction may already be gone with the file; the connection is dropped anyway.
        log.warning("archive rollback failed", url=url, error=str(exc))


async def _migrate(db: aiosqlite.Connection, url: str, target: int | None) -> int:
    # BEGIN IMMEDIATE takes the write lock: two processes opening a new file migrate one at a time.
    await db.execute("BEGIN IMMEDIATE")
    try:
        await db.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)")
        rows = list(await db.execute_fetchall(f"SELECT max(version) FROM {VERSION_TABLE}"))
        version = int(rows[0][0] or 0)
        for migration in pending(version, target):
            for statement in migration.sqlite:
                await db.execute(statement)
            await db.execute(f"DELETE FROM {VERSION_TABLE}")
            await db.execute(f"INSERT INTO {VERSION_TABLE} VALUES (?)", (migration.version,))
            log.info("archive migrated", url=url, version=migration.version, what=migration.description)
            version = migration.version
    except BaseException:
        await _rollback(db, url)
        raise
    await db.execute("COMMIT")
    return version


async def _register_device(db: aiosqlite.Connection, device_id: str, t: int) -> tuple[int, int]:
    rows = list(
        await db.execute_fetchall(
            "INSERT INTO devices (device_id, first_t) VALUES (?, ?) ON CONFLICT (device_id)"
            " DO UPDATE SET first_t = min(first_t, excluded.first_t) RETURNING id, first_t",
            (device_id, t),
        )
    )
    return int(rows[0][0]), int(rows[0][1])
