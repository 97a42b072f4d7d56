"""The data logger: every change of every archived property of every device, into the archive.

Two device classes. A :class:`DataLoggerManager` watches the topology and hands each device (also
those appearing later) to a :class:`DataLogger`, one logger per device server by default, so that a
slow or failing logger holds up only its own devices. The manager also answers history and
past-configuration queries from the archive.

A logger does not listen through its instance queue (exclusive, deleted when it stops) but through a
queue of its own that outlives it: named ``<domain>.datalogger.<logger id>``, durable, bounded, bound
to the ``changed`` and ``schema_updated`` signals of its devices. While the logger is stopped the
broker keeps collecting; what overflows the bound is dead-lettered into a second queue and counted
(``broker_dropped``), so a loss is visible rather than silent.

Messages are acknowledged on receipt, so a SIGKILL loses what the logger had received but not yet
written: the batch in flight (at most ``flush_interval`` seconds of changes, more only while the
database is away and the logger buffers).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from .. import codec
from ..archive import ArchiveStore, BufferedWriter, Change, WriterState, open_store, redact_url
from ..archive.store import DEFAULT_MAX_POINTS
from ..device import CHANGED_SIGNAL, SCHEMA_SIGNAL, Device, timestamp_now
from ..errors import (
    ArchiveError,
    ArchiveTypeError,
    ArchiveUnavailable,
    BeforeDeviceExisted,
    InstanceIdInUse,
    KaraboError,
    UnknownDevice,
)
from ..hash import Hash
from ..schema import Property, slot
from ..states import State
from ..timestamp import Timestamp
from ..topology import INSTANCE_GONE, INSTANCE_NEW, TopologyEvent
from ..wire import Message, Names
from .recording import RecordingRules, ref_to_wire, rows_of

log = structlog.get_logger(__name__)

SERVICE_CLASSES = frozenset({"DataLogger", "DataLoggerManager", "ConfigurationManager"})
"""Classes never logged themselves: their counters would log their own logging."""

QUERY_TIMEOUT = 10.0
STORE_WAIT = 30.0
STATUS_INTERVAL = 1.0
_RETRY_INITIAL = 0.5
_RETRY_MAX = 10.0


def logger_queue(domain: str, logger_id: str) -> str:
    """The durable queue a logger consumes; the same name after every restart."""
    return f"{domain}.datalogger.{logger_id}"


class DataLogger(Device):
    """Archives the devices the manager gives it (``log_devices``), through a durable queue."""

    database: str = Property(
        "sqlite:karabo-archive.db", init_only=True, description="Archive URL (sqlite: or postgresql://)"
    )
    batch_size: int = Property(1000, init_only=True, ge=1, description="Rows per database write")
    flush_interval: float = Property(0.5, init_only=True, gt=0, unit="s", description="Longest wait to write")
    max_buffer: int = Property(
        1_000_000, init_only=True, ge=1, description="Rows kept in memory while the database is away"
    )
    queue_max_length: int = Property(
        1_000_000, init_only=True, ge=1, description="Messages the broker keeps for this logger"
    )
    logged_devices: list[str] = Property([], readonly=True, description="Devices this logger archives")
    written: int = Property(0, readonly=True, archive=False, description="Changes written")
    buffered: int = Property(0, readonly=True, archive=False, description="Changes waiting to be written")
    dropped: int = Property(0, readonly=True, archive=False, description="Changes dropped (buffer full)")
    broker_dropped: int = Property(
        0, readonly=True, archive=False, description="Messages the broker dropped (queue bound reached)"
    )

    def __init__(self, configuration: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(configuration, **kwargs)
        self._db: ArchiveStore | None = None
        self._writer: BufferedWriter | None = None
        self._rules: dict[str, RecordingRules] = {}
        self._pending: dict[str, list[Message]] = {}
        self._snapshot_stamps: dict[tuple[str, str], Timestamp] = {}
        self._last_recorded: dict[tuple[str, str], Timestamp] = {}
        self._devices: set[str] = set()
        self._setups: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._broker_dropped = 0
        self._running = False

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    def queue_name(self) -> str:
        return logger_queue(self.signalslot.domain, self.device_id)

    @property
    def dropped_queue_name(self) -> str:
        return f"{self.queue_name}.dropped"

    async def on_initialization(self) -> None:
        self._db = await open_store(self.database)
        self._writer = BufferedWriter(
            self._db,
            batch_size=self.batch_size,
            flush_interval=self.flush_interval,
            max_buffer=max(self.max_buffer, self.batch_size),
            on_state=self._on_writer_state,
        )
        self._writer.start()
        self._running = True
        await self._declare_queues()
        self.signalslot.topology.add_listener(self._on_topology)
        self._spawn(self._report_loop())
        self.set_properties({"state": State.ON, "status": f"archiving into {redact_url(self.database)}"})

    async def _declare_queues(self) -> None:
        t = self.signalslot.hub.transport
        dropped = self.dropped_queue_name
        await t.declare_exchange(dropped)
        await t.declare_queue(dropped, exclusive=False, durable=True, max_length=self.queue_max_length)
        await t.bind(dropped, dropped, "#")
        await t.declare_queue(
            self.queue_name,
            exclusive=False,
            durable=True,
            max_length=self.queue_max_length,
            dead_letter_exchange=dropped,
        )
        await t.consume(dropped, self._on_dropped)
        await t.consume(self.queue_name, self._on_message)

    async def on_destruction(self) -> None:
        self._running = False
        self.signalslot.topology.remove_listener(self._on_topology)
        transport = self.signalslot.hub.transport
        for name in (self.queue_name, self.dropped_queue_name):
            await _stop_consuming(transport, name)
        for task in [*self._setups.values(), *self._background]:
            task.cancel()
        if self._writer is not None:
            await self._writer.close(grace=3.0)
        if self._db is not None:
            await self._db.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- slots ----------------------------------------------------------------------------------
    @slot
    async def log_devices(self, device_ids: list[str]) -> list[str]:
        """Start archiving these devices (bind their signals, record schema and configuration)."""
        ids = _id_list(device_ids)
        t, n = self.signalslot.hub.transport, self.signalslot.names
        for device_id in ids:
            for signal in (CHANGED_SIGNAL, SCHEMA_SIGNAL):
                await t.bind(self.queue_name, n.signals, Names.signal_key(device_id, signal))
            self._devices.add(device_id)
            self._start_setup(device_id)
        self.logged_devices = sorted(self._devices)
        return sorted(self._devices)

    @slot
    async def unlog_devices(self, device_ids: list[str]) -> list[str]:
        """Stop archiving these devices (what the broker already queued for them is still written)."""
        ids = _id_list(device_ids)
        t, n = self.signalslot.hub.transport, self.signalslot.names
        for device_id in ids:
            for signal in (CHANGED_SIGNAL, SCHEMA_SIGNAL):
                await t.unbind(self.queue_name, n.signals, Names.signal_key(device_id, signal))
            self._devices.discard(device_id)
        self.logged_devices = sorted(self._devices)
        return sorted(self._devices)

    @slot
    async def flush(self) -> int:
        """Write everything received so far; returns the count of changes written since start."""
        if self._writer is not None:
            await self._writer.flush()
        return self._writer.state.written if self._writer is not None else 0

    # --- recording ------------------------------------------------------------------------------
    def _start_setup(self, device_id: str) -> None:
        old = self._setups.get(device_id)
        if old is not None and not old.done():
            old.cancel()
        task = asyncio.get_running_loop().create_task(self._setup_device(device_id))
        self._setups[device_id] = task

    async def _setup_device(self, device_id: str) -> None:
        """Learn the device's schema (live, else archived), then record its full configuration.

        Signals that arrive meanwhile wait in ``_pending``: without the schema we would not know
        which of their properties are excluded from archiving.
        """
        self._pending.setdefault(device_id, [])
        ss = self.signalslot
        schema: dict[str, Any] | None = None
        config: Hash | None = None
        if device_id in ss.topology:
            try:
                schema = await ss.request(device_id, "get_schema", timeout=QUERY_TIMEOUT)
                config = await ss.request(device_id, "get_configuration", timeout=QUERY_TIMEOUT)
            except KaraboError as exc:
                log.warning(
                    "device did not answer; using its archived schema", device=device_id, error=str(exc)
                )
                schema, config = None, None
        if schema is None:
            schema = await self._retry(lambda: self._archived_schema(device_id), device_id)
        self._rules[device_id] = RecordingRules.from_schema(schema)
        for message in self._pending.pop(device_id, []):
            self._record_signal(message)
        if config is not None and schema is not None:
            await self._retry(lambda: self._record_snapshot(device_id, schema, config), device_id)

    async def _retry(self, action: Any, device_id: str) -> Any:
        """Run a database action until the database answers (the writer reports the outage)."""
        delay = _RETRY_INITIAL
        while True:
            try:
                return await action()
            except ArchiveUnavailable as exc:
                log.warning("archive unavailable; will retry", device=device_id, reason=exc.reason)
                self._report_error(exc.reason)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)

    async def _archived_schema(self, device_id: str) -> dict[str, Any] | None:
        assert self._db is not None
        try:
            return await self._db.schema_at(device_id, Timestamp.now())
        except (UnknownDevice, BeforeDeviceExisted):
            return None

    async def _record_snapshot(self, device_id: str, schema: dict[str, Any], config: Hash) -> None:
        """Archive the schema if it changed, a ``new`` event, and the values not archived yet."""
        store, writer = self._db, self._writer
        assert store is not None and writer is not None
        now = timestamp_now()
        try:
            archived = await store.configuration_at(device_id, now)
            archived_stamps = {path: stamp for path, (_, stamp) in archived.values.items()}
            archived_schema = archived.schema
        except (UnknownDevice, BeforeDeviceExisted):
            archived_stamps, archived_schema = {}, None
        fresh = []
        for path, value, stamp, alarm in rows_of(config, self._rules[device_id], now):
            key = (device_id, path)
            self._snapshot_stamps[key] = stamp
            if stamp == archived_stamps.get(path) or stamp == self._last_recorded.get(key):
                continue
            fresh.append(Change(device_id, path, value, stamp, alarm))
        if schema != archived_schema:
            # In force from the first value recorded under it, so a past configuration is read with it.
            first = min((c.timestamp for c in fresh), default=now)
            await store.write_schema(device_id, min(first, now), schema)
        info = self.signalslot.topology.get(device_id, {})
        await store.write_event(device_id, now, "new", _event_info(info))
        for change in fresh:
            self._add(change)

    def _add(self, change: Change) -> None:
        assert self._writer is not None
        try:
            self._writer.add(change)
        except ArchiveError as exc:
            log.warning("change not archivable", device=change.device_id, path=change.path, error=str(exc))
            return
        self._last_recorded[(change.device_id, change.path)] = change.timestamp

    def _on_message(self, message: Message) -> None:
        if not self._running:
            return
        device_id = message.sender
        if device_id in self._pending or device_id not in self._rules:
            if device_id not in self._pending:
                # Queued for a device we have not set up (yet): the backlog of a restart.
                self._pending[device_id] = []
                if device_id not in self._setups:
                    self._start_setup(device_id)
            self._pending[device_id].append(message)
            return
        self._record_signal(message)

    def _record_signal(self, message: Message) -> None:
        device_id = message.sender
        try:
            args = codec.decode(message.body)
        except KaraboError as exc:
            log.warning("undecodable signal not archived", device=device_id, error=str(exc))
            return
        if not isinstance(args, list) or not args:
            return
        if message.name == SCHEMA_SIGNAL:
            if isinstance(args[0], dict):
                self._rules[device_id] = RecordingRules.from_schema(args[0])
                self._spawn(self._retry(lambda: self._write_schema(device_id, args[0]), device_id))
            return
        if message.name != CHANGED_SIGNAL or not isinstance(args[0], Hash):
            return
        rules = self._rules.get(device_id, RecordingRules(frozenset()))
        fallback = Timestamp.from_float(message.timestamp)
        for path, value, stamp, alarm in rows_of(args[0], rules, fallback):
            if self._snapshot_stamps.get((device_id, path)) == stamp:
                continue  # already recorded from the configuration snapshot
            self._add(Change(device_id, path, value, stamp, alarm))

    async def _write_schema(self, device_id: str, schema: dict[str, Any]) -> None:
        assert self._db is not None
        await self._db.write_schema(device_id, timestamp_now(), schema)

    def _on_dropped(self, message: Message) -> None:
        self._broker_dropped += 1
        if self._broker_dropped == 1 or self._broker_dropped % 1000 == 0:
            log.warning("broker dropped messages for this logger", count=self._broker_dropped)

    def _on_topology(self, event: TopologyEvent) -> None:
        if event.instance_id not in self._devices or not self._running:
            return
        if event.kind == INSTANCE_NEW:
            self._start_setup(event.instance_id)
        elif event.kind == INSTANCE_GONE:
            self._spawn(
                self._retry(lambda: self._write_gone(event.instance_id, event.info), event.instance_id)
            )

    async def _write_gone(self, device_id: str, info: dict[str, Any]) -> None:
        assert self._db is not None
        await self._db.write_event(device_id, timestamp_now(), "gone", _event_info(info))

    # --- reporting ------------------------------------------------------------------------------
    def _on_writer_state(self, state: WriterState) -> None:
        if state.ok:
            self.set_properties({"state": State.ON, "status": f"archiving into {redact_url(self.database)}"})
        else:
            self._report_error(state.reason)
        self._report_counts(state)

    def _report_error(self, reason: str) -> None:
        status = f"archive unavailable, buffering: {reason}"
        if self.state is not State.ERROR or self.status != status:
            self.set_properties({"state": State.ERROR, "status": status})

    def _report_counts(self, state: WriterState) -> None:
        counts = {
            "written": state.written,
            "buffered": state.buffered,
            "dropped": state.dropped,
            "broker_dropped": self._broker_dropped,
        }
        changed = {k: v for k, v in counts.items() if getattr(self, k) != v}
        if changed:
            self.set_properties(changed)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            if self._writer is not None:
                self._report_counts(self._writer.state)


class DataLoggerManager(Device):
    """Assigns every device of the domain to a DataLogger it starts; answers history queries."""

    database: str = Property(
        "sqlite:karabo-archive.db", init_only=True, description="Archive URL (sqlite: or postgresql://)"
    )
    exclude: list[str] = Property([], init_only=True, description="Device-id patterns not to log (fnmatch)")
    max_loggers: int = Property(
        0, init_only=True, ge=0, description="Spread devices over this many loggers; 0: one per device server"
    )
    batch_size: int = Property(1000, init_only=True, ge=1, description="Rows per database write")
    flush_interval: float = Property(0.5, init_only=True, gt=0, unit="s", description="Longest wait to write")
    loggers: list[str] = Property([], readonly=True, description="The loggers this manager runs")
    logged_count: int = Property(0, readonly=True, description="Devices being archived")

    def __init__(self, configuration: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(configuration, **kwargs)
        self._db: ArchiveStore | None = None
        self._opened = asyncio.Event()
        self._assigned: dict[str, str] = {}
        self._loggers: set[str] = set()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def on_initialization(self) -> None:
        self._db = await open_store(self.database)
        self._opened.set()
        self.signalslot.topology.add_listener(self._on_topology)
        devices = [(iid, info) for iid, info in self.signalslot.topology.items() if self._wanted(iid, info)]
        await self._assign(devices)
        self.status = f"archiving into {redact_url(self.database)}"

    async def on_destruction(self) -> None:
        self.signalslot.topology.remove_listener(self._on_topology)
        for task in list(self._tasks):
            task.cancel()
        if self._db is not None:
            await self._db.close()

    def _wanted(self, instance_id: str, info: Mapping[str, Any]) -> bool:
        if info.get("type") != "device" or info.get("class") in SERVICE_CLASSES:
            return False
        return not any(fnmatch.fnmatchcase(instance_id, pattern) for pattern in self.exclude)

    def logger_for(self, server_id: str) -> str:
        """The logger of a device's server: one per server, or one of ``max_loggers`` by hash."""
        group = server_id or "standalone"
        if self.max_loggers:
            group = str(zlib.crc32(group.encode()) % self.max_loggers)
        return f"{self.server_id or self.device_id}-logger-{group}"

    def _on_topology(self, event: TopologyEvent) -> None:
        if event.kind == INSTANCE_NEW and self._wanted(event.instance_id, event.info):
            task = asyncio.get_running_loop().create_task(self._assign([(event.instance_id, event.info)]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _assign(self, devices: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        groups: dict[str, list[str]] = {}
        moved: dict[str, list[str]] = {}
        for device_id, info in devices:
            logger_id = self.logger_for(str(info.get("server", "")))
            old = self._assigned.get(device_id)
            if old is not None and old != logger_id:
                moved.setdefault(old, []).append(device_id)
            groups.setdefault(logger_id, []).append(device_id)
        async with self._lock:
            for logger_id, ids in moved.items():
                with contextlib.suppress(KaraboError):
                    await self.signalslot.request(logger_id, "unlog_devices", ids, timeout=QUERY_TIMEOUT)
            for logger_id, ids in groups.items():
                try:
                    await self._ensure_logger(logger_id)
                    await self.signalslot.request(logger_id, "log_devices", ids, timeout=QUERY_TIMEOUT)
                except KaraboError as exc:
                    log.error("devices not handed to a logger", logger=logger_id, devices=ids, error=str(exc))
                    self.status = f"logger {logger_id} failed: {exc}"
                    continue
                for device_id in ids:
                    self._assigned[device_id] = logger_id
        self.set_properties({"loggers": sorted(self._loggers), "logged_count": len(self._assigned)})

    async def _ensure_logger(self, logger_id: str) -> None:
        if logger_id in self._loggers and logger_id in self.signalslot.topology:
            return
        config = {
            "database": self.database,
            "batch_size": self.batch_size,
            "flush_interval": self.flush_interval,
        }
        try:
            await self.signalslot.request(
                self.server_id, "instantiate", "DataLogger", logger_id, config, timeout=30.0
            )
        except KaraboError as exc:
            if "InstanceIdInUse" not in str(exc) and not isinstance(exc, InstanceIdInUse):
                raise
        self._loggers.add(logger_id)

    # --- queries ----------------------------------------------------------------------------------
    @slot
    async def get_property_history(
        self,
        device_id: str,
        path: str,
        since: Timestamp | None = None,
        until: Timestamp | None = None,
        max_points: int = DEFAULT_MAX_POINTS,
    ) -> dict[str, Any]:
        """``{"points": [[Timestamp, value], ...], "reduced": bool, "total": int}``."""
        history = await (await self._archive()).property_history(device_id, path, since, until, max_points)
        return {
            "points": [[stamp, ref_to_wire(value)] for stamp, value in history.points],
            "reduced": history.reduced,
            "total": history.total,
        }

    @slot
    async def get_configuration_from_past(self, device_id: str, when: Timestamp) -> Hash:
        """Every property as it was at ``when`` (dropping those the schema of then lacked), stamped."""
        values, schema = await (await self._archive()).configuration_at(device_id, when)
        known = None if schema is None else schema.get("properties", {})
        config = Hash()
        for path, (value, stamp) in sorted(values.items()):
            if known is not None and path not in known:
                continue
            config[path] = ref_to_wire(value)
            config.set_attribute(path, "timestamp", stamp)
        return config

    @slot
    async def get_schema_from_past(self, device_id: str, when: Timestamp) -> dict[str, Any] | None:
        return await (await self._archive()).schema_at(device_id, when)

    @slot
    async def get_events(
        self, device_id: str, since: Timestamp | None = None, until: Timestamp | None = None
    ) -> list[list[Any]]:
        """Instance events as ``[[Timestamp, kind, info], ...]``."""
        events = await (await self._archive()).events(device_id, since, until)
        return [[e.timestamp, e.kind, e.info] for e in events]

    @slot
    async def get_archived_devices(self) -> list[str]:
        return await (await self._archive()).devices()

    @slot
    def get_assignments(self) -> dict[str, str]:
        """Which logger archives which device."""
        return dict(self._assigned)

    async def _archive(self) -> ArchiveStore:
        """The store, once ``on_initialization`` opened it (queries may arrive while it does)."""
        if self._db is None:
            async with asyncio.timeout(STORE_WAIT):
                await self._opened.wait()
        assert self._db is not None
        return self._db


async def _stop_consuming(transport: Any, queue: str) -> None:
    """Cancel our consumer but keep the durable queue (the transport offers delete only)."""
    spec = transport.queues.pop(queue, None)
    if spec is not None and spec.handler is not None and transport.connected:
        try:
            await transport._cancel(spec)
        except (KaraboError, OSError) as exc:
            log.warning("consumer not cancelled", queue=queue, error=str(exc))


def _id_list(device_ids: Any) -> list[str]:
    if isinstance(device_ids, str):
        device_ids = [device_ids]
    if not isinstance(device_ids, list | tuple) or not all(isinstance(d, str) and d for d in device_ids):
        raise ArchiveTypeError(f"device_ids must be a list of device id strings, not {device_ids!r:.100}")
    return list(device_ids)


def _event_info(info: Mapping[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in ("class", "server", "host", "pid") if k in info} | {"seen": time.time()}


__all__ = ["SERVICE_CLASSES", "DataLogger", "DataLoggerManager", "logger_queue"]
