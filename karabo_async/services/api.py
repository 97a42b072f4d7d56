"""Client functions for the archive and saved configurations, acting for ``current_instance()``.

>>> points = await get_property_history("motor-1", "position", "2024-05-01T00:00", None)  # doctest: +SKIP
>>> config = await get_configuration_from_past("motor-1", "2024-05-01T03:12")           # doctest: +SKIP

Arguments are checked here, before any message is sent, so a wrong type or a reversed range fails at
once with an error naming the argument. Archive errors raised by the service (unknown device,
property never archived, time before the device existed) arrive as the same classes
(``except UnknownDevice`` works).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from ..archive import ConfigurationInfo, SavedConfiguration
from ..archive.reduce import POINTS_PER_BUCKET
from ..archive.store import DEFAULT_MAX_POINTS
from ..errors import (
    ArchiveTypeError,
    ArchiveValueError,
    InvalidTimeRange,
    KaraboError,
    ReconfigurationError,
    ServiceNotFound,
)
from ..hash import Hash, values_equal
from ..signalslot import SignalSlotable, current_instance
from ..timestamp import Timestamp
from .recording import ref_from_wire

log = structlog.get_logger(__name__)

TimeLike = Timestamp | datetime | str | int | float
QUERY_TIMEOUT = 60.0
"""History queries over millions of points may take a while; more than the default request timeout."""


class PropertyHistory(list[tuple[Timestamp, Any]]):
    """``[(Timestamp, value), ...]`` in time order; ``reduced`` says the service reduced the points
    (per time bucket first, min, max and last) and ``total`` how many the range held."""

    def __init__(self, points: Iterable[tuple[Timestamp, Any]], reduced: bool, total: int) -> None:
        super().__init__(points)
        self.reduced = reduced
        self.total = total

    def __repr__(self) -> str:
        return f"PropertyHistory({len(self)} points, reduced={self.reduced}, total={self.total})"


@dataclass
class ApplyResult:
    """What applying a saved configuration did to one device.

    ``applied``: values the device accepted (in one atomic reconfiguration); ``refused``: path ->
    reason (the device's own validation, or why nothing could be sent); ``unchanged``: already at the
    saved value; ``skipped``: readonly or init-only properties, which a running device never takes.
    """

    device_id: str
    applied: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused


# --- finding the services ----------------------------------------------------------------------


def find_service(instance: SignalSlotable, class_id: str, hint: str = "") -> str:
    """The id of a live device of class ``class_id`` (the first by id if several run)."""
    found = sorted(
        iid
        for iid, info in instance.topology.items()
        if info.get("type") == "device" and info.get("class") == class_id
    )
    if not found:
        raise ServiceNotFound(class_id, instance.domain, hint)
    return found[0]


def _manager(manager: str | None) -> tuple[SignalSlotable, str]:
    instance = current_instance()
    if manager is not None:
        return instance, _check_str(manager, "manager")
    hint = "start one with `karabo-async logger --database URL`"
    return instance, find_service(instance, "DataLoggerManager", hint)


def _confmanager(manager: str | None) -> tuple[SignalSlotable, str]:
    instance = current_instance()
    if manager is not None:
        return instance, _check_str(manager, "manager")
    hint = "`karabo-async logger` runs one beside the data logger"
    return instance, find_service(instance, "ConfigurationManager", hint)


# --- argument checks ------------------------------------------------------------------------------


def _check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ArchiveTypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise ArchiveValueError(f"{what} must not be empty")
    return value


def to_timestamp(value: object, what: str) -> Timestamp:
    """A datetime (naive = UTC), Timestamp, ISO 8601 string or epoch seconds as a Timestamp."""
    if isinstance(value, Timestamp):
        return value
    if isinstance(value, bool) or not isinstance(value, datetime | str | int | float):
        raise ArchiveTypeError(
            f"{what} must be a datetime, Timestamp or ISO 8601 string, not {type(value).__name__}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ArchiveValueError(f"{what} must be a finite time, not {value!r}")
    try:
        return Timestamp.parse(value)
    except (TypeError, ValueError) as exc:
        raise ArchiveValueError(f"{what}: cannot read {value!r} as a time: {exc}") from exc


# --- history and the past --------------------------------------------------------------------------


async def get_property_history(
    device_id: str,
    path: str,
    since: TimeLike | None = None,
    until: TimeLike | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
    *,
    manager: str | None = None,
) -> PropertyHistory:
    """The archived values of ``device_id.path`` between ``since`` and ``until`` (inclusive; None is
    an open end), at most ``max_points`` of them."""
    _check_str(device_id, "device_id")
    _check_str(path, "path")
    low = None if since is None else to_timestamp(since, "since")
    high = None if until is None else to_timestamp(until, "until")
    if low is not None and high is not None and low > high:
        raise InvalidTimeRange(f"since ({low.to_iso()}) is after until ({high.to_iso()})")
    if isinstance(max_points, bool) or not isinstance(max_points, int):
        raise ArchiveTypeError(f"max_points must be an int, not {type(max_points).__name__}")
    if max_points < POINTS_PER_BUCKET:
        raise ArchiveValueError(f"max_points must be at least {POINTS_PER_BUCKET}, not {max_points}")
    instance, target = _manager(manager)
    reply = await instance.request(
        target, "get_property_history", device_id, path, low, high, max_points, timeout=QUERY_TIMEOUT
    )
    points = [(stamp, ref_from_wire(value)) for stamp, value in reply["points"]]
    return PropertyHistory(points, bool(reply["reduced"]), int(reply["total"]))


async def get_configuration_from_past(device_id: str, when: TimeLike, *, manager: str | None = None) -> Hash:
    """Every archived property of ``device_id`` as it was at ``when``, each with its ``timestamp``
    attribute; properties the schema of that time did not have are left out."""
    _check_str(device_id, "device_id")
    stamp = to_timestamp(when, "when")
    instance, target = _manager(manager)
    config = await instance.request(
        target, "get_configuration_from_past", device_id, stamp, timeout=QUERY_TIMEOUT
    )
    config = config if isinstance(config, Hash) else Hash.from_dict(config)
    _refs_back(config)
    return config


def _refs_back(node: Hash) -> None:
    for key in node:
        value = node[key]
        restored = ref_from_wire(value)
        if restored is not value:
            node[key] = restored
        elif isinstance(value, Hash):
            _refs_back(value)


async def get_schema_from_past(
    device_id: str, when: TimeLike, *, manager: str | None = None
) -> dict[str, Any] | None:
    """The schema document ``device_id`` had at ``when`` (None if none was archived by then)."""
    _check_str(device_id, "device_id")
    stamp = to_timestamp(when, "when")
    instance, target = _manager(manager)
    schema = await instance.request(target, "get_schema_from_past", device_id, stamp, timeout=QUERY_TIMEOUT)
    return None if schema is None else dict(schema)


# --- saved configurations ----------------------------------------------------------------------------


def _device_list(device_ids: object) -> list[str]:
    if isinstance(device_ids, str):
        return [_check_str(device_ids, "device_ids")]
    if not isinstance(device_ids, list | tuple | set | frozenset):
        raise ArchiveTypeError(f"device_ids must be a list of device ids, not {type(device_ids).__name__}")
    ids = [_check_str(d, "each device id") for d in device_ids]
    if not ids:
        raise ArchiveValueError("device_ids must name at least one device")
    return ids


async def save_configuration(
    name: str,
    device_ids: str | Iterable[str],
    description: str = "",
    *,
    overwrite: bool = False,
    manager: str | None = None,
) -> list[str]:
    """Save the current configuration of the devices under ``name`` (all or nothing); a name already
    saved for one of them raises ConfigurationExists unless ``overwrite``."""
    _check_str(name, "name")
    ids = _device_list(device_ids)
    if not isinstance(description, str):
        raise ArchiveTypeError(f"description must be a str, not {type(description).__name__}")
    instance, target = _confmanager(manager)
    saved = await instance.request(target, "save_configuration", name, ids, description, bool(overwrite))
    return list(saved)


def _info(entry: Mapping[str, Any]) -> ConfigurationInfo:
    return ConfigurationInfo(
        entry["name"], entry["device_id"], entry["description"], entry["user"], entry["timestamp"]
    )


async def list_configurations(
    device_id: str | None = None, *, manager: str | None = None
) -> list[ConfigurationInfo]:
    """The configurations saved for ``device_id`` (every device for None), oldest first."""
    if device_id is not None:
        _check_str(device_id, "device_id")
    instance, target = _confmanager(manager)
    return [_info(e) for e in await instance.request(target, "list_configurations", device_id)]


async def get_saved_configuration(
    name: str, device_id: str, *, manager: str | None = None
) -> SavedConfiguration:
    """The configuration saved as ``name`` for ``device_id`` (``.config`` maps paths to values)."""
    _check_str(name, "name")
    _check_str(device_id, "device_id")
    instance, target = _confmanager(manager)
    entry = await instance.request(target, "get_saved_configuration", name, device_id)
    info = _info(entry)
    return SavedConfiguration(
        info.name, info.device_id, info.description, info.user, info.timestamp, dict(entry["config"])
    )


async def apply_configuration(
    name: str, device_ids: str | Iterable[str] | None = None, *, manager: str | None = None
) -> dict[str, ApplyResult]:
    """Reconfigure each device (all that have ``name`` saved, for None) to the saved values.

    Per device one atomic ``set`` of the reconfigurable properties that differ from the live values,
    validated by the device as for any caller; returns what was applied and refused per device.
    """
    _check_str(name, "name")
    instance, target = _confmanager(manager)
    if device_ids is None:
        listed = await instance.request(target, "list_configurations", None)
        ids = sorted({e["device_id"] for e in listed if e["name"] == name})
        if not ids:
            raise ArchiveValueError(f"no device has a configuration named {name!r}")
    else:
        ids = _device_list(device_ids)
    results = {}
    for device_id in ids:
        entry = await instance.request(target, "get_saved_configuration", name, device_id)
        results[device_id] = await _apply_one(instance, device_id, dict(entry["config"]))
    return results


async def _apply_one(instance: SignalSlotable, device_id: str, saved: dict[str, Any]) -> ApplyResult:
    result = ApplyResult(device_id)
    try:
        schema = await instance.request(device_id, "get_schema")
        live = await instance.request(device_id, "get_configuration")
    except KaraboError as exc:
        result.refused = {path: f"device not reachable: {exc}" for path in saved}
        return result
    properties = schema.get("properties", {})
    changes: dict[str, Any] = {}
    for path, value in saved.items():
        entry = properties.get(path)
        if entry is None:
            result.refused[path] = "the device's current schema has no such property"
        elif entry.get("access_mode", "reconfigurable") != "reconfigurable":
            result.skipped.append(path)
        elif path in live and values_equal(live[path], value):
            result.unchanged.append(path)
        else:
            changes[path] = value
    if not changes:
        return result
    try:
        applied = await instance.request(device_id, "set", changes)
    except ReconfigurationError as exc:
        reasons = {str(key): str(reason) for key, reason in getattr(exc, "errors", [])}
        for path in changes:
            result.refused[path] = reasons.get(path, f"refused with the others: {exc}")
        return result
    except KaraboError as exc:
        for path in changes:
            result.refused[path] = f"{type(exc).__name__}: {exc}"
        return result
    result.applied = dict(applied) if isinstance(applied, Mapping) else changes
    return result


__all__ = [
    "ApplyResult",
    "PropertyHistory",
    "apply_configuration",
    "find_service",
    "get_configuration_from_past",
    "get_property_history",
    "get_saved_configuration",
    "get_schema_from_past",
    "list_configurations",
    "save_configuration",
    "to_timestamp",
]
