"""The archive store: what the data logger writes and what history and configuration queries read.

:class:`ArchiveStore` holds everything both backends share (argument checking, value encoding,
bucket arithmetic, caches of integer keys); :mod:`.sqlite` and :mod:`.postgres` hold only SQL and
connection handling. :func:`open_store` picks the backend from the URL.
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import structlog

from ..errors import (
    ArchiveTypeError,
    ArchiveValueError,
    BeforeDeviceExisted,
    InvalidTimeRange,
    UnknownConfiguration,
    UnknownDevice,
    UnknownProperty,
)
from ..timestamp import Timestamp
from .reduce import POINTS_PER_BUCKET, StoredPoint, bucket_width
from .values import (
    decode_document,
    decode_value,
    encode_document,
    encode_value,
    ns_to_iso,
    timestamp_from_ns,
    timestamp_ns,
    train_to_db,
)

TimeLike = Timestamp | datetime | str | float
"""What the queries accept for a point in time (see ``Timestamp.parse``)."""

DEFAULT_MAX_POINTS: Final = 1000
_NAME_LIMIT: Final = 1000
_NS_MIN: Final = -(2**63)
_NS_MAX: Final = 2**63 - 1


class Change(NamedTuple):
    """One property change to archive; a plain tuple in this order is accepted too."""

    device_id: str
    path: str
    value: Any
    timestamp: Timestamp
    alarm: str | None = None


# (device_id, path, t_ns, train_id, kind, num, val, alarm): a change checked and encoded for the db.
PreparedChange = tuple[str, str, int, int, int, float | None, bytes | None, str | None]
# (property id, t_ns, train_id, kind, num, val, alarm): a row of ``changes``.
ChangeRow = tuple[int, int, int, int, float | None, bytes | None, str | None]


@dataclass(frozen=True)
class History:
    """The archived values of one property in a time range, in time order.

    ``reduced`` tells that there were more than the points asked for and the database kept, per time
    bucket, the first, smallest, largest and last value (first and last only for non-numbers);
    ``total`` is how many changes the range holds.
    """

    points: list[tuple[Timestamp, Any]]
    reduced: bool
    total: int


class ConfigurationAt(NamedTuple):
    """A device as it was at some time: ``values`` maps each property path to (value, stamp);
    ``schema`` is the schema document in force then (None if none was archived before it)."""

    values: dict[str, tuple[Any, Timestamp]]
    schema: dict[str, Any] | None


@dataclass(frozen=True)
class Event:
    """An instance event (``new``, ``gone``, ...) with whatever the logger recorded about it."""

    device_id: str
    timestamp: Timestamp
    kind: str
    info: Any


@dataclass(frozen=True)
class ConfigurationInfo:
    """A saved configuration's description, without the configuration itself."""

    name: str
    device_id: str
    description: str
    user: str
    timestamp: Timestamp


@dataclass(frozen=True)
class SavedConfiguration(ConfigurationInfo):
    """A saved configuration: the property values of one device under a name."""

    config: dict[str, Any]


# (device_id, name, saved_t, description, user, config blob): a row of ``configurations``.
ConfigurationRow = tuple[str, str, int, str, str, bytes]


log = structlog.get_logger(__name__)


class ArchiveStore(abc.ABC):
    """Storage of property history, device schemas, instance events and saved configurations.

    Use :func:`open_store` to get one; close it with :meth:`close` (or ``async with``). Any method
    raises ``ArchiveUnavailable`` when the database cannot be reached; a later call tries again.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        """Where the data lives, without any password."""
        # Integer keys and first-record times already in the database: lets a batch of known
        # properties go straight into ``changes`` without a lookup.
        self._device_keys: dict[str, tuple[int, int]] = {}
        self._property_keys: dict[tuple[str, str], tuple[int, int]] = {}

    async def __aenter__(self) -> ArchiveStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the database connections."""

    _version = 0

    @property
    def schema_version(self) -> int:
        """The migration version of the open database."""
        return self._version

    async def _finish_open(self, migrate: Callable[[], Awaitable[int]]) -> None:
        """Bring the schema up to date, or close again: an open store is always a migrated one."""
        try:
            self._version = await migrate()
        except BaseException:
            await self.close()
            raise
        log.info("archive opened", url=self.url, schema_version=self._version)

    # --- writing ----------------------------------------------------------------------------------

    async def write_changes(self, rows: Iterable[Change | tuple[Any, ...]]) -> int:
        """Archive many property changes in one transaction; returns how many were written.

        Every row is checked before anything is written, so a bad row leaves the batch unwritten and
        raises ArchiveTypeError/ArchiveValueError naming it.
        """
        return await self.write_prepared([prepare_change(row) for row in rows])

    async def write_prepared(self, prepared: list[PreparedChange]) -> int:
        """:meth:`write_changes` for rows already made by :func:`prepare_change` (checked and encoded
        once, when a buffering writer took them)."""
        if not prepared:
            return 0
        devices, properties = self._unregistered(prepared)
        new_devices, new_properties = await self._insert_changes(prepared, devices, properties)
        self._device_keys.update(new_devices)
        self._property_keys.update(new_properties)
        return len(prepared)

    async def write_schema(self, device_id: str, timestamp: Timestamp, schema: Mapping[str, Any]) -> None:
        """Archive the schema document a device had from ``timestamp`` on."""
        _check_name(device_id, "device_id")
        _check_stamp(timestamp)
        if not isinstance(schema, Mapping):
            raise ArchiveTypeError(f"schema of {device_id!r} must be a dict, not {type(schema).__name__}")
        doc = encode_document(dict(schema), f"the schema of {device_id!r}")
        key = await self._insert_schema(
            device_id, timestamp_ns(timestamp), train_to_db(timestamp.train_id), doc
        )
        self._device_keys[device_id] = key

    async def write_event(self, device_id: str, timestamp: Timestamp, kind: str, info: Any = None) -> None:
        """Archive an instance event such as ``"new"`` or ``"gone"``; ``info`` is any encodable value."""
        _check_name(device_id, "device_id")
        _check_stamp(timestamp)
        _check_name(kind, "event kind")
        blob = None if info is None else encode_document(info, f"the info of event {kind!r}")
        key = await self._insert_event(
            device_id, timestamp_ns(timestamp), train_to_db(timestamp.train_id), kind, blob
        )
        self._device_keys[device_id] = key

    # --- reading ----------------------------------------------------------------------------------

    async def devices(self) -> list[str]:
        """Every device id with anything archived, sorted."""
        return sorted(await self._select_device_ids())

    async def properties(self, device_id: str) -> list[str]:
        """Every archived property path of a device, sorted."""
        device_key, _ = await self._device(device_id)
        return sorted(await self._select_paths(device_key))

    async def property_history(
        self,
        device_id: str,
        path: str,
        since: TimeLike | None = None,
        until: TimeLike | None = None,
        max_points: int = DEFAULT_MAX_POINTS,
    ) -> History:
        """The values of one property between ``since`` and ``until`` (inclusive; None: open end).

        With more than ``max_points`` changes in the range the database reduces them to at most
        ``max_points`` (``max_points // 4`` time buckets, each keeping first, min, max and last).
        """
        if isinstance(max_points, bool) or not isinstance(max_points, int):
            raise ArchiveTypeError(f"max_points must be an int, not {type(max_points).__name__}")
        if max_points < POINTS_PER_BUCKET:
            raise ArchiveValueError(f"max_points must be at least {POINTS_PER_BUCKET}, not {max_points}")
        low = _NS_MIN if since is None else time_ns(since, "since")
        high = _NS_MAX if until is None else time_ns(until, "until")
        if low > high:
            raise InvalidTimeRange(f"since ({ns_to_iso(low)}) is after until ({ns_to_iso(high)})")
        property_key, device_first = await self._property(device_id, path)
        if high < device_first:
            raise BeforeDeviceExisted(device_id, ns_to_iso(high), ns_to_iso(device_first))
        points = await self._select_points(property_key, low, high, max_points + 1)
        if len(points) <= max_points:
            return History([_point(p) for p in points], reduced=False, total=len(points))
        first = points[0][0]
        last = await self._select_last_time(property_key, low, high)
        width = bucket_width(first, last, max_points)
        reduced, total = await self._select_reduced(property_key, first, last, width)
        return History([_point(p) for p in reduced], reduced=True, total=total)

    async def configuration_at(self, device_id: str, when: TimeLike) -> ConfigurationAt:
        """Every archived property of a device as it was at ``when`` (its latest value at or before
        it), with the schema document in force then."""
        t = time_ns(when, "when")
        device_key, first = await self._device(device_id)
        if t < first:
            raise BeforeDeviceExisted(device_id, ns_to_iso(t), ns_to_iso(first))
        rows = await self._select_latest(device_key, t)
        values = {
            path: (decode_value(kind, num, val), timestamp_from_ns(ts, tid))
            for path, ts, tid, kind, num, val in rows
        }
        schema = await self._select_schema(device_key, t)
        return ConfigurationAt(values, None if schema is None else decode_document(schema))

    async def schema_at(self, device_id: str, when: TimeLike) -> dict[str, Any] | None:
        """The schema document a device had at ``when``; None if none was archived before then."""
        t = time_ns(when, "when")
        device_key, first = await self._device(device_id)
        if t < first:
            raise BeforeDeviceExisted(device_id, ns_to_iso(t), ns_to_iso(first))
        schema = await self._select_schema(device_key, t)
        return None if schema is None else dict(decode_document(schema))

    async def events(
        self, device_id: str, since: TimeLike | None = None, until: TimeLike | None = None
    ) -> list[Event]:
        """The instance events of a device in a time range, in time order."""
        low = _NS_MIN if since is None else time_ns(since, "since")
        high = _NS_MAX if until is None else time_ns(until, "until")
        if low > high:
            raise InvalidTimeRange(f"since ({ns_to_iso(low)}) is after until ({ns_to_iso(high)})")
        device_key, _ = await self._device(device_id)
        rows = await self._select_events(device_key, low, high)
        return [
            Event(device_id, timestamp_from_ns(t, tid), kind, None if info is None else decode_document(info))
            for t, tid, kind, info in rows
        ]

    # --- configuration manager ------------------------------------------------------------------

    async def save_configuration(
        self,
        name: str,
        configs: Mapping[str, Mapping[str, Any]],
        *,
        description: str = "",
        user: str = "",
        timestamp: Timestamp | None = None,
        overwrite: bool = False,
    ) -> None:
        """Save ``configs`` (device id -> property values) under ``name`` for each device.

        Names are unique per device: an existing name raises ConfigurationExists and nothing of the
        call is saved, unless ``overwrite`` replaces the old ones.
        """
        _check_name(name, "configuration name")
        if not isinstance(description, str) or not isinstance(user, str):
            raise ArchiveTypeError("description and user must be str")
        if not isinstance(configs, Mapping) or not configs:
            raise ArchiveTypeError("configs must be a non-empty dict of device id -> configuration dict")
        stamp = Timestamp.now() if timestamp is None else timestamp
        _check_stamp(stamp)
        rows: list[ConfigurationRow] = []
        for device_id, config in configs.items():
            _check_name(device_id, "device_id")
            if not isinstance(config, Mapping):
                raise ArchiveTypeError(
                    f"configuration of {device_id!r} must be a dict, not {type(config).__name__}"
                )
            blob = encode_document(dict(config), f"configuration {name!r} of {device_id!r}")
            rows.append((device_id, name, timestamp_ns(stamp), description, user, blob))
        await self._insert_configurations(rows, overwrite)

    async def list_configurations(self, device_id: str | None = None) -> list[ConfigurationInfo]:
        """The configurations saved for a device (or for all devices), oldest first."""
        if device_id is not None:
            _check_name(device_id, "device_id")
        rows = await self._select_configurations(device_id)
        return [ConfigurationInfo(n, d, desc, u, timestamp_from_ns(t)) for d, n, t, desc, u in rows]

    async def get_configuration(self, name: str, device_id: str) -> SavedConfiguration:
        """The configuration saved as ``name`` for ``device_id`` (UnknownConfiguration if none)."""
        _check_name(name, "configuration name")
        _check_name(device_id, "device_id")
        d, n, t, desc, u, blob = await self._select_configuration(name, device_id)
        return SavedConfiguration(n, d, desc, u, timestamp_from_ns(t), dict(decode_document(blob)))

    async def delete_configuration(self, name: str, device_id: str) -> None:
        """Delete a saved configuration (UnknownConfiguration if there is none of that name)."""
        _check_name(name, "configuration name")
        _check_name(device_id, "device_id")
        await self._delete_configuration(name, device_id)

    # --- shared helpers ---------------------------------------------------------------------------

    def _unregistered(
        self, prepared: list[PreparedChange]
    ) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """Devices and properties of a batch that are new, or whose first record the batch moves
        earlier, each with the batch's earliest time for it."""
        devices: dict[str, int] = {}
        properties: dict[tuple[str, str], int] = {}
        device_keys, property_keys = self._device_keys, self._property_keys
        for device_id, path, t, *_ in prepared:
            known = property_keys.get((device_id, path))
            if known is None or t < known[1]:
                key = (device_id, path)
                properties[key] = min(t, properties.get(key, t))
            known = device_keys.get(device_id)
            if known is None or t < known[1] or (device_id, path) in properties:
                devices[device_id] = min(t, devices.get(device_id, t))
        return devices, properties

    def _change_rows(
        self, prepared: list[PreparedChange], new_properties: Mapping[tuple[str, str], tuple[int, int]]
    ) -> list[ChangeRow]:
        """The batch as ``changes`` rows, with property ids from the cache or just registered."""
        keys = self._property_keys
        rows: list[ChangeRow] = []
        for device_id, path, t, tid, kind, num, val, alarm in prepared:
            key = (device_id, path)
            found = new_properties.get(key) or keys[key]
            rows.append((found[0], t, tid, kind, num, val, alarm))
        return rows

    async def _device(self, device_id: str) -> tuple[int, int]:
        _check_name(device_id, "device_id")
        found = await self._select_device(device_id)
        if found is None:
            raise UnknownDevice(device_id)
        return found

    async def _property(self, device_id: str, path: str) -> tuple[int, int]:
        """(property id, first time of its device)."""
        _check_name(path, "property path")
        device_key, device_first = await self._device(device_id)
        property_key = await self._select_property(device_key, path)
        if property_key is None:
            raise UnknownProperty(device_id, path)
        return property_key, device_first

    # --- queries both backends run as written ----------------------------------------------------
    # Written with ``?`` placeholders; a backend whose driver numbers them rewrites them in _sql.

    def _sql(self, query: str) -> str:
        """``query`` in the backend's placeholder style (``?`` as it is)."""
        return query

    async def _select_device_ids(self) -> list[str]:
        return [r[0] for r in await self._fetch("SELECT device_id FROM devices")]

    async def _select_device(self, device_id: str) -> tuple[int, int] | None:
        """(id, first time) of the device, None if unknown."""
        row = await self._fetchone(
            self._sql("SELECT id, first_t FROM devices WHERE device_id = ?"), device_id
        )
        return None if row is None else (row[0], row[1])

    async def _select_property(self, device_key: int, path: str) -> int | None:
        row = await self._fetchone(
            self._sql("SELECT id FROM properties WHERE device = ? AND path = ?"), device_key, path
        )
        return None if row is None else int(row[0])

    async def _select_paths(self, device_key: int) -> list[str]:
        rows = await self._fetch(self._sql("SELECT path FROM properties WHERE device = ?"), device_key)
        return [r[0] for r in rows]

    async def _select_last_time(self, property_key: int, low: int, high: int) -> int:
        row = await self._fetchone(
            self._sql(
                "SELECT t FROM changes WHERE property = ? AND t BETWEEN ? AND ? ORDER BY t DESC LIMIT 1"
            ),
            property_key,
            low,
            high,
        )
        return int(row[0]) if row is not None else low

    async def _select_configurations(self, device_id: str | None) -> list[tuple[str, str, int, str, str]]:
        query = "SELECT device_id, name, saved_t, description, user_name FROM configurations"
        if device_id is None:
            rows = await self._fetch(query + " ORDER BY saved_t, device_id, name")
        else:
            rows = await self._fetch(
                self._sql(query + " WHERE device_id = ? ORDER BY saved_t, name"), device_id
            )
        return [tuple(r) for r in rows]

    async def _select_configuration(self, name: str, device_id: str) -> ConfigurationRow:
        row = await self._fetchone(
            self._sql(
                "SELECT device_id, name, saved_t, description, user_name, config FROM configurations"
                " WHERE device_id = ? AND name = ?"
            ),
            device_id,
            name,
        )
        if row is None:
            raise UnknownConfiguration(name, device_id)
        return (row[0], row[1], row[2], row[3], row[4], bytes(row[5]))

    # --- what a backend provides ------------------------------------------------------------------

    @abc.abstractmethod
    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        """All rows of a read-only query."""

    @abc.abstractmethod
    async def _fetchone(self, query: str, *args: Any) -> Any:
        """The first row of a read-only query, None if there is none."""

    @abc.abstractmethod
    async def _insert_changes(
        self,
        prepared: list[PreparedChange],
        devices: Mapping[str, int],
        properties: Mapping[tuple[str, str], int],
    ) -> tuple[dict[str, tuple[int, int]], dict[tuple[str, str], tuple[int, int]]]:
        """In one transaction: register ``devices``/``properties`` (lowering their first time to the
        given one), insert the rows; returns the registered (id, first time) keys."""

    @abc.abstractmethod
    async def _insert_schema(self, device_id: str, t: int, train_id: int, doc: bytes) -> tuple[int, int]:
        """Register the device and insert the schema; returns the device's (id, first time)."""

    @abc.abstractmethod
    async def _insert_event(
        self, device_id: str, t: int, train_id: int, kind: str, info: bytes | None
    ) -> tuple[int, int]:
        """Register the device and insert the event; returns the device's (id, first time)."""

    @abc.abstractmethod
    async def _select_points(self, property_key: int, low: int, high: int, limit: int) -> list[StoredPoint]:
        """The first ``limit`` points in [low, high] in time order."""

    @abc.abstractmethod
    async def _select_reduced(
        self, property_key: int, first: int, last: int, width: int
    ) -> tuple[list[StoredPoint], int]:
        """Per bucket ``(t - first) // width`` over [first, last]: the rows holding the first, min,
        max and last value, each row once, in time order; and the count of all rows."""

    @abc.abstractmethod
    async def _select_latest(
        self, device_key: int, t: int
    ) -> list[tuple[str, int, int, int, float | None, bytes | None]]:
        """(path, t, train id, kind, num, val) of each property's latest change at or before ``t``."""

    @abc.abstractmethod
    async def _select_schema(self, device_key: int, t: int) -> bytes | None: ...

    @abc.abstractmethod
    async def _select_events(
        self, device_key: int, low: int, high: int
    ) -> list[tuple[int, int, str, bytes | None]]: ...

    @abc.abstractmethod
    async def _insert_configurations(self, rows: list[ConfigurationRow], overwrite: bool) -> None: ...

    @abc.abstractmethod
    async def _delete_configuration(self, name: str, device_id: str) -> None: ...


def prepare_change(row: Change | tuple[Any, ...]) -> PreparedChange:
    """Check one change and encode it for the database (the hot path of every write)."""
    if not isinstance(row, tuple) or not 4 <= len(row) <= 5:
        raise ArchiveTypeError(
            f"a change must be Change(device_id, path, value, timestamp[, alarm]), not {row!r:.200}"
        )
    if len(row) == 5:
        device_id, path, value, timestamp, alarm = row
    else:
        device_id, path, value, timestamp = row
        alarm = None
    if type(device_id) is not str or not device_id or len(device_id) > _NAME_LIMIT:
        _check_name(device_id, "device_id")
    if type(path) is not str or not path or len(path) > _NAME_LIMIT:
        _check_name(path, f"property path of {device_id!r}")
    if type(timestamp) is not Timestamp and not isinstance(timestamp, Timestamp):
        raise ArchiveTypeError(
            f"timestamp of {device_id}.{path} must be a Timestamp, not {type(timestamp).__name__}"
        )
    if alarm is not None:
        if not isinstance(alarm, str):
            raise ArchiveTypeError(f"alarm of {device_id}.{path} must be a str, not {type(alarm).__name__}")
        alarm = str(alarm)
    try:
        kind, num, val = encode_value(value)
    except ArchiveTypeError as exc:
        raise ArchiveTypeError(f"{device_id}.{path}: {exc}") from exc
    train = timestamp.train_id
    return (
        device_id,
        path,
        timestamp_ns(timestamp),
        train if train <= _NS_MAX else train_to_db(train),
        kind,
        num,
        val,
        alarm,
    )


def time_ns(when: TimeLike, what: str) -> int:
    """A time argument as stored nanoseconds; errors name the argument."""
    if isinstance(when, bool) or not isinstance(when, Timestamp | datetime | str | int | float):
        raise ArchiveTypeError(
            f"{what} must be a Timestamp, datetime, ISO 8601 string or epoch seconds,"
            f" not {type(when).__name__}"
        )
    if isinstance(when, float) and not math.isfinite(when):
        raise ArchiveValueError(f"{what} must be a finite time, not {when!r}")
    try:
        stamp = Timestamp.parse(when)
    except (TypeError, ValueError) as exc:
        raise ArchiveValueError(f"{what}: cannot read {when!r} as a time: {exc}") from exc
    return timestamp_ns(stamp)


@functools.cache
def numbered_placeholders(query: str) -> str:
    """``query`` with its ``?`` placeholders numbered ``$1, $2, ...`` (PostgreSQL's style); the
    shared queries hold no other question marks."""
    parts = query.split("?")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], start=1))


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{user}{host}", parts.path, parts.query, parts.fragment))


async def open_store(url: str, **options: Any) -> ArchiveStore:
    """Open (and create or migrate) the archive at ``url``.

    ``sqlite:///abs/path.db``, ``sqlite:relative/path.db`` or ``sqlite::memory:`` for the embedded
    database; ``postgresql://user[:password]@host[:port]/database`` for PostgreSQL. Raises
    ArchiveUnavailable, naming the URL without its password, if the database cannot be reached.
    ``options`` go to the backend (e.g. ``connect_timeout``).
    """
    if not isinstance(url, str):
        raise ArchiveTypeError(f"archive url must be a str, not {type(url).__name__}")
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        return await SqliteStore.open(url, **options)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return await PostgresStore.open(url, **options)
    raise ArchiveValueError(f"archive url {redact_url(url)!r} must start with sqlite: or postgresql://")


def _point(stored: StoredPoint) -> tuple[Timestamp, Any]:
    t, tid, kind, num, val = stored
    return timestamp_from_ns(t, tid), decode_value(kind, num, val)


def _check_name(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise ArchiveTypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value or len(value) > _NAME_LIMIT:
        raise ArchiveValueError(f"{what} must be 1 to {_NAME_LIMIT} characters, got {len(value)}")


def _check_stamp(timestamp: object) -> None:
    if not isinstance(timestamp, Timestamp):
        raise ArchiveTypeError(f"timestamp must be a Timestamp, not {type(timestamp).__name__}")
