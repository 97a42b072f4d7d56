"""The archive on PostgreSQL (asyncpg): a small connection pool, COPY for batches of changes.

History reduction runs in the server: one pass groups the range into time buckets (count, first and
last time, min and max number), then per bucket an index probe on (property, t) fetches the rows
holding those four values; the index carries ``num`` so the min/max probes read no table pages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg
import structlog

from ..errors import ArchiveUnavailable, ConfigurationExists, UnknownConfiguration
from .migrations import VERSION_TABLE, pending
from .reduce import StoredPoint, merge_bucket_rows
from .store import (
    ArchiveStore,
    ChangeRow,
    ConfigurationRow,
    PreparedChange,
    numbered_placeholders,
    redact_url,
)

log = structlog.get_logger(__name__)

# What a lost or refused connection looks like through asyncpg; anything else is a real error.
_UNAVAILABLE: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidPasswordError,
    asyncpg.InterfaceError,
    # asyncpg's state machine can trip over a backend terminated under it (MagicStack/asyncpg#784):
    # the connection is unusable, so it is dropped like any lost one.
    asyncpg.exceptions.InternalClientError,
)

_CHANGE_COLUMNS: Final = ("property", "t", "train_id", "kind", "num", "val", "alarm")
_POINT: Final = "t, train_id, kind, num, val"
# Migrations of concurrent openers are serialised on this advisory lock (an arbitrary constant).
_MIGRATION_LOCK: Final = 0x6B61726162


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PostgresStore(ArchiveStore):
    """The archive in a PostgreSQL database; see :class:`ArchiveStore` for the methods."""

    def __init__(self, url: str, pool: asyncpg.Pool, version: int) -> None:
        super().__init__(url)
        self._pool = pool
        self._version = version

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        connect_timeout: float = 5.0,
        command_timeout: float = 60.0,
        pool_size: int = 4,
        target_version: int | None = None,
    ) -> PostgresStore:
        """Connect, then create or migrate the schema (``target_version``: stop early, for tests)."""
        shown = redact_url(url)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=connect_timeout,
                command_timeout=command_timeout,
                # JIT compilation costs ~0.3 s per reduction query and gains nothing on these plans
                server_settings={"jit": "off"},
            )
        except _UNAVAILABLE as exc:
            raise ArchiveUnavailable(shown, _describe(exc)) from exc
        store = cls(shown, pool, 0)
        await store._finish_open(lambda: store._migrate(target_version))
        return store

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), timeout=5.0)
        except (TimeoutError, *_UNAVAILABLE) as exc:
            log.warning("archive pool did not close cleanly; terminating", url=self.url, error=_describe(exc))
            self._pool.terminate()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; connection trouble becomes ArchiveUnavailable naming the URL."""
        try:
            async with self._pool.acquire() as conn:
                try:
                    yield conn
                except _UNAVAILABLE:
                    conn.terminate()  # never hand a half-broken connection back to the pool
                    raise
        except _UNAVAILABLE as exc:
            raise ArchiveUnavailable(self.url, _describe(exc)) from exc

    async def _migrate(self, target: int | None) -> int:
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version integer NOT NULL)")
            current = await conn.fetchval(f"SELECT max(version) FROM {VERSION_TABLE}") or 0
            version = int(current)
            for migration in pending(version, target):
                async with conn.transaction():
                    for statement in migration.postgres:
                        await conn.execute(statement)
                    await conn.execute(f"DELETE FROM {VERSION_TABLE}")
                    await conn.execute(f"INSERT INTO {VERSION_TABLE} VALUES ($1)", migration.version)
                log.info(
                    "archive migrated", url=self.url, version=migration.version, what=migration.description
                )
                version = migration.version
            return version

    # --- writing ----------------------------------------------------------------------------------

    async def _insert_changes(
        self,
        prepared: list[PreparedChange],
        devices: Mapping[str, int],
        properties: Mapping[tuple[str, str], int],
    ) -> tuple[dict[str, tuple[int, int]], dict[tuple[str, str], tuple[int, int]]]:
        async with self._connection() as conn, conn.transaction():
            new_devices = await _register_devices(conn, devices) if devices else {}
            new_properties: dict[tuple[str, str], tuple[int, int]] = {}
            if properties:
                keys = sorted(properties)  # a fixed order: concurrent writers cannot deadlock
                ids = {
                    **{d: k[0] for d, k in self._device_keys.items()},
                    **{d: k[0] for d, k in new_devices.items()},
                }
                rows = await conn.fetch(
                    "INSERT INTO properties (device, path, first_t)"
                    " SELECT * FROM unnest($1::integer[], $2::text[], $3::bigint[])"
                    " ON CONFLICT (device, path)"
                    " DO UPDATE SET first_t = least(properties.first_t, excluded.first_t)"
                    " RETURNING id, device, path, first_t",
                    [ids[d] for d, _ in keys],
                    [p for _, p in keys],
                    [properties[k] for k in keys],
                )
                device_of = {v: d for d, v in ids.items()}
                new_properties = {(device_of[r["device"]], r["path"]): (r["id"], r["first_t"]) for r in rows}
            records: list[ChangeRow] = self._change_rows(prepared, new_properties)
            await conn.copy_records_to_table("changes", records=records, columns=_CHANGE_COLUMNS)
        return new_devices, new_properties

    async def _insert_schema(self, device_id: str, t: int, train_id: int, doc: bytes) -> tuple[int, int]:
        async with self._connection() as conn, conn.transaction():
            key = (await _register_devices(conn, {device_id: t}))[device_id]
            await conn.execute(
                "INSERT INTO schemas (device, t, train_id, doc) VALUES ($1, $2, $3, $4)",
                key[0],
                t,
                train_id,
                doc,
            )
        return key

    async def _insert_event(
        self, device_id: str, t: int, train_id: int, kind: str, info: bytes | None
    ) -> tuple[int, int]:
        async with self._connection() as conn, conn.transaction():
            key = (await _register_devices(conn, {device_id: t}))[device_id]
            await conn.execute(
                "INSERT INTO events (device, t, train_id, kind, info) VALUES ($1, $2, $3, $4, $5)",
                key[0],
                t,
                train_id,
                kind,
                info,
            )
        return key

    # --- reading ----------------------------------------------------------------------------------

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection() as conn:
            return list(await conn.fetch(query, *args))

    async def _fetchone(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self._connection() as conn:
            return await conn.fetchrow(query, *args)

    def _sql(self, query: str) -> str:
        return numbered_placeholders(query)

    async def _select_points(self, property_key: int, low: int, high: int, limit: int) -> list[StoredPoint]:
        rows = await self._fetch(
            f"SELECT {_POINT} FROM changes WHERE property = $1 AND t BETWEEN $2 AND $3 ORDER BY t LIMIT $4",
            property_key,
            low,
            high,
            limit,
        )
        return [tuple(r) for r in rows]

    async def _select_reduced(
        self, property_key: int, first: int, last: int, width: int
    ) -> tuple[list[StoredPoint], int]:
        probe = f"SELECT ctid, {_POINT} FROM changes WHERE property = $1 AND t"
        rows = await self._fetch(
            "WITH buckets AS ("
            " SELECT (t - $2) / $4 AS bucket, count(*) AS n, min(t) AS t_first, max(t) AS t_last,"
            " min(num) AS low, max(num) AS high"
            " FROM changes WHERE property = $1 AND t BETWEEN $2 AND $3 GROUP BY bucket)"
            " SELECT b.bucket, b.n, p.* FROM buckets b CROSS JOIN LATERAL ("
            f" ({probe} = b.t_first LIMIT 1)"
            f" UNION ALL ({probe} = b.t_last LIMIT 1)"
            f" UNION ALL ({probe} BETWEEN b.t_first AND b.t_last AND num = b.low ORDER BY t LIMIT 1)"
            f" UNION ALL ({probe} BETWEEN b.t_first AND b.t_last AND num = b.high ORDER BY t LIMIT 1)"
            ") p",
            property_key,
            first,
            last,
            width,
        )
        return merge_bucket_rows(rows)

    async def _select_latest(
        self, device_key: int, t: int
    ) -> list[tuple[str, int, int, int, float | None, bytes | None]]:
        rows = await self._fetch(
            f"SELECT p.path, c.* FROM properties p CROSS JOIN LATERAL (SELECT {_POINT} FROM changes"
            " WHERE property = p.id AND t <= $2 ORDER BY t DESC LIMIT 1) c WHERE p.device = $1",
            device_key,
            t,
        )
        return [tuple(r) for r in rows]

    async def _select_schema(self, device_key: int, t: int) -> bytes | None:
        row = await self._fetchone(
            "SELECT doc FROM schemas WHERE device = $1 AND t <= $2 ORDER BY t DESC LIMIT 1", device_key, t
        )
        return None if row is None else bytes(row[0])

    async def _select_events(
        self, device_key: int, low: int, high: int
    ) -> list[tuple[int, int, str, bytes | None]]:
        rows = await self._fetch(
            "SELECT t, train_id, kind, info FROM events WHERE device = $1 AND t BETWEEN $2 AND $3 ORDER BY t",
            device_key,
            low,
            high,
        )
        return [tuple(r) for r in rows]

    # --- configuration manager ------------------------------------------------------------------

    async def _insert_configurations(self, rows: list[ConfigurationRow], overwrite: bool) -> None:
        insert = (
            "INSERT INTO configurations (device_id, name, saved_t, description, user_name, config)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
        )
        if overwrite:
            insert += (
                " ON CONFLICT (device_id, name) DO UPDATE SET saved_t = excluded.saved_t,"
                " description = excluded.description, user_name = excluded.user_name,"
                " config = excluded.config"
            )
        async with self._connection() as conn, conn.transaction():
            for row in rows:
                try:
                    async with conn.transaction():
                        await conn.execute(insert, *row)
                except asyncpg.UniqueViolationError as exc:
                    raise ConfigurationExists(row[1], row[0]) from exc

    async def _delete_configuration(self, name: str, device_id: str) -> None:
        async with self._connection() as conn:
            status = await conn.execute(
                "DELETE FROM configurations WHERE device_id = $1 AND name = $2", device_id, name
            )
        if status == "DELETE 0":
            raise UnknownConfiguration(name, device_id)


async def _register_devices(
    conn: asyncpg.Connection, devices: Mapping[str, int]
) -> dict[str, tuple[int, int]]:
    names = sorted(devices)
    rows = await conn.fetch(
        "INSERT INTO devices (device_id, first_t) SELECT * FROM unnest($1::text[], $2::bigint[])"
        " ON CONFLICT (device_id) DO UPDATE SET first_t = least(devices.first_t, excluded.first_t)"
        " RETURNING device_id, id, first_t",
        names,
        [devices[n] for n in names],
    )
    return {r["device_id"]: (r["id"], r["first_t"]) for r in rows}
