"""Device proxies: a remote device as a local object, kept up to date by its ``changed`` signal.

One :class:`DeviceLink` per (instance, device id) holds the mirrored configuration and schema; every
:class:`Proxy` of that device on that instance is a view of it. The link subscribes before it reads
(connect the signals, then fetch schema and configuration, then apply the updates that arrived in
between and are newer than what was fetched), so nothing that changes after a proxy is handed out is
missed. It follows the device's life through the topology (dead: ``alive`` false, state UNKNOWN,
calls raise DeviceGone; back: schema and values fetched again) and the broker link (down: values
stale; up: fetched again).

Assignments (``motor.velocity = 2``) are validated here against the device's schema, then collected
and sent as one ``set`` at the end of the loop iteration.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import structlog

from . import codec
from .device import to_wire
from .errors import (
    BrokerUnavailable,
    DeviceGone,
    DeviceLocked,
    KaraboError,
    NoSuchInstance,
    NoSuchSlot,
    RequestTimeout,
    SlotRefused,
)
from .hash import Hash
from .properties import Image
from .schema import Schema
from .signalslot import SignalSlotable
from .states import AccessLevel, AlarmCondition, State
from .timestamp import Timestamp
from .topology import INSTANCE_GONE, INSTANCE_NEW, INSTANCE_UPDATED, TopologyEvent
from .values import wrap

log = structlog.get_logger(__name__)

CHANGED_SIGNAL = "changed"
SCHEMA_SIGNAL = "schema_updated"
REFRESH_RETRY_SECONDS = 60.0
APPLIED_GRACE = 5.0
_slot_numbers = itertools.count(1)


# --- change notification -------------------------------------------------------------------------

_waiters: set[asyncio.Future[None]] = set()


def notify_change() -> None:
    """Wake everything waiting for some proxy to change (wait_until, wait_until_new, set_wait)."""
    if not _waiters:
        return
    for future in _waiters:
        if not future.done():
            future.set_result(None)
    _waiters.clear()


async def next_change(deadline: float | None) -> None:
    """Return at the next proxy change; TimeoutError at ``deadline`` (loop time)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    _waiters.add(future)
    try:
        if deadline is None:
            await future
        else:
            async with asyncio.timeout_at(deadline):
                await future
    finally:
        _waiters.discard(future)


_schemas: dict[bytes, Schema] = {}
SCHEMA_CACHE_SIZE = 64


def schema_from_document(doc: Mapping[str, Any]) -> Schema:
    """Rebuilding validation from a document costs milliseconds; devices of one class share theirs."""
    key = codec.encode(doc)
    schema = _schemas.get(key)
    if schema is None:
        schema = Schema.from_document(doc)
        if len(_schemas) >= SCHEMA_CACHE_SIZE:
            _schemas.pop(next(iter(_schemas)))
        _schemas[key] = schema
    return schema


# --- the link to one device ------------------------------------------------------------------------


class DeviceLink:
    """The mirrored state of one remote device, as seen by one instance."""

    def __init__(self, manager: ProxyManager, device_id: str) -> None:
        self.manager = manager
        self.instance = manager.instance
        self.device_id = device_id
        self.schema: Schema | None = None
        self.values: dict[str, Any] = {}
        self.stamps: dict[str, Timestamp | None] = {}
        self.alarms: dict[str, str] = {}
        self.seq: dict[str, int] = {}
        self.counter = 0
        self.alive = False
        self.stale = False
        self.process: str | None = None
        self.users = 0
        self.pinned = False
        self.subscribed = False
        self.outbox: dict[str, Any] = {}
        self.new_value_waiters: dict[str, list[asyncio.Future[Any]]] = {}
        self._flush: asyncio.Handle | None = None
        self._buffer: list[Hash] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        number = next(_slot_numbers)
        self._changed_slot = f"_proxy_{number}_changed"
        self._schema_slot = f"_proxy_{number}_schema"
        self.proxy = Proxy(self)

    # --- subscription ---------------------------------------------------------------------------
    async def subscribe(self) -> None:
        """Connect the signals first, then read, so no change in between is lost."""
        inst = self.instance
        inst.register_slot(self._on_changed, self._changed_slot)
        inst.register_slot(self._on_schema, self._schema_slot)
        try:
            await inst.connect(self.device_id, CHANGED_SIGNAL, self._changed_slot)
            await inst.connect(self.device_id, SCHEMA_SIGNAL, self._schema_slot)
            await self.refresh()
        except BaseException:
            await self.unsubscribe()
            raise
        self.subscribed = True

    async def unsubscribe(self) -> None:
        self.subscribed = False
        if self._refresh_task is not None:
            self._refresh_task.cancel()
        if self._flush is not None:
            self._flush.cancel()
            self.send_outbox()
        inst = self.instance
        try:
            if inst.online:
                await inst.disconnect(self.device_id, CHANGED_SIGNAL, self._changed_slot)
                await inst.disconnect(self.device_id, SCHEMA_SIGNAL, self._schema_slot)
        except (BrokerUnavailable, KaraboError) as exc:
            log.info("proxy unsubscribe incomplete", device=self.device_id, reason=str(exc))
        finally:
            inst.unregister_slot(self._changed_slot)
            inst.unregister_slot(self._schema_slot)

    async def refresh(self) -> None:
        """Fetch schema and configuration; updates arriving meanwhile are applied after, if newer."""
        inst = self.instance
        self._buffer = []
        try:
            doc, config = await asyncio.gather(
                inst.request(self.device_id, "get_schema"),
                inst.request(self.device_id, "get_configuration"),
            )
            if not isinstance(config, Hash) or not isinstance(doc, Mapping):
                raise DeviceGone(f"{self.device_id!r} did not answer like a device (no schema/configuration)")
            schema = schema_from_document(doc)
        except BaseException:
            buffered, self._buffer = self._buffer, None
            for changes in buffered:
                self._apply(changes, None)
            raise
        buffered, self._buffer = self._buffer, None
        self.schema = schema
        floor = self._apply_configuration(config)
        for changes in buffered:
            self._apply(changes, floor)
        info = self.instance.topology.get(self.device_id)
        self.process = info.get("process") if info else None
        self.alive = True
        self.stale = False
        notify_change()

    async def revive(self) -> None:
        """Asked for again while its device is gone: fetch now, so that a caller gets a live proxy or
        NoSuchInstance, never the dead one (a background refresh may not have run yet)."""
        if self._refresh_task is not None and not self._refresh_task.done():
            self._refresh_task.cancel()
        try:
            await self.refresh()
        except (RequestTimeout, DeviceGone) as exc:
            raise NoSuchInstance(self.device_id) from exc

    def schedule_refresh(self, *, persist: bool) -> None:
        """Fetch again in the background; with ``persist`` keep trying while the device may come back
        (after a broker restart the device may reconnect later than we do)."""
        if self._refresh_task is not None and not self._refresh_task.done():
            self._refresh_task.cancel()
        self._refresh_task = asyncio.get_running_loop().create_task(
            self._refresh_until_done(persist), name=f"refresh proxy {self.device_id}"
        )

    async def _refresh_until_done(self, persist: bool) -> None:
        delay = 0.1
        deadline = time.monotonic() + REFRESH_RETRY_SECONDS
        while self.subscribed and self.instance.online:
            try:
                await self.refresh()
                log.info("proxy reconnected", device=self.device_id, instance=self.instance.instance_id)
                return
            except (NoSuchInstance, RequestTimeout, BrokerUnavailable, DeviceGone) as exc:
                if not persist or time.monotonic() > deadline:
                    log.info("proxy not reconnected", device=self.device_id, reason=str(exc))
                    if not persist:
                        return
                    self.died()
                    return
                log.debug("proxy refresh failed, retrying", device=self.device_id, reason=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    # --- incoming -------------------------------------------------------------------------------
    def _on_changed(self, changes: Any) -> None:
        if not isinstance(changes, Hash):
            log.warning("malformed change signal dropped", device=self.device_id, got=type(changes).__name__)
            return
        if self._buffer is not None:
            self._buffer.append(changes)
            return
        self._apply(changes, None)
        notify_change()

    def _on_schema(self, doc: Any) -> None:
        try:
            self.schema = schema_from_document(doc)
        except KaraboError as exc:
            log.warning("bad schema update dropped", device=self.device_id, error=str(exc))
            return
        notify_change()

    def _leaves(self, h: Hash, prefix: str = "") -> Iterator[tuple[str, Any, dict[str, Any]]]:
        properties = self.schema.properties if self.schema is not None else {}
        for key, value in h.items():
            path = prefix + key
            if isinstance(value, Hash):
                spec = properties.get(path)
                if spec is None or spec.kind == "node":
                    yield from self._leaves(value, path + ".")
                    continue
            yield path, value, h.get_attributes(key)

    def _apply(self, changes: Hash, floor: Mapping[str, Timestamp | None] | None) -> None:
        for path, value, attrs in self._leaves(changes):
            stamp = attrs.get("timestamp")
            if floor is not None:
                oldest = floor.get(path)
                if oldest is not None and stamp is not None and stamp < oldest:
                    continue  # the fetched configuration is newer
            self._store(path, value, stamp, attrs.get("alarm"))

    def _store(self, path: str, value: Any, stamp: Timestamp | None, alarm: str | None) -> None:
        self.values[path] = value
        self.stamps[path] = stamp
        if alarm:
            self.alarms[path] = alarm
        else:
            self.alarms.pop(path, None)
        self.counter += 1
        self.seq[path] = self.counter
        waiting = self.new_value_waiters.pop(path, None)
        if waiting:  # each waiter gets the first value after its call, even if more follow at once
            current = self.value(path)
            for future in waiting:
                if not future.done():
                    future.set_result(current)

    def _apply_configuration(self, config: Hash) -> dict[str, Timestamp | None]:
        floor: dict[str, Timestamp | None] = {}
        seen = set()
        for path, value, attrs in self._leaves(config):
            stamp = attrs.get("timestamp")
            floor[path] = stamp
            seen.add(path)
            if path in self.values and self.stamps.get(path) == stamp and stamp is not None:
                continue  # unchanged: waiters for a new value keep waiting
            self._store(path, value, stamp, attrs.get("alarm"))
        for path in list(self.values):
            if path not in seen:  # the new schema no longer has it
                self.values.pop(path, None)
                self.stamps.pop(path, None)
                self.alarms.pop(path, None)
        return floor

    def died(self) -> None:
        if not self.alive and self.values.get("state") == State.UNKNOWN.value:
            return
        self.alive = False
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self.outbox:
            log.warning("changes not sent: device gone", device=self.device_id, keys=sorted(self.outbox))
            self.outbox.clear()
        self._store("state", State.UNKNOWN.value, Timestamp.now(), None)
        waiting, self.new_value_waiters = self.new_value_waiters, {}
        for futures in waiting.values():
            for future in futures:
                if not future.done():
                    future.set_exception(DeviceGone(f"device {self.device_id!r} is gone"))
        log.info("device of proxy gone", device=self.device_id, instance=self.instance.instance_id)
        notify_change()

    def on_topology(self, event: TopologyEvent) -> None:
        if event.kind == INSTANCE_GONE:
            self.died()
        elif event.kind == INSTANCE_NEW or (
            event.kind == INSTANCE_UPDATED
            and self.process is not None
            and event.info.get("process") not in (None, self.process)
        ):
            self.schedule_refresh(persist=True)

    # --- reading --------------------------------------------------------------------------------
    def require_schema(self) -> Schema:
        if self.schema is None:
            raise DeviceGone(f"proxy of {self.device_id!r} is not connected (no schema yet)")
        return self.schema

    def state(self) -> State:
        raw = self.values.get("state", State.UNKNOWN.value)
        try:
            return State(raw)
        except ValueError:
            return State.UNKNOWN

    def value(self, path: str) -> Any:
        """A property's value with its timestamp and alarm, or a node view, or a slot caller."""
        schema = self.require_schema()
        spec = schema.properties.get(path)
        if spec is None:
            if path in schema.slots:
                return SlotCall(self, path)
            raise AttributeError(
                f"device {self.device_id!r} ({schema.class_id}) has no property or slot {path!r}"
            )
        if spec.kind == "node":
            return NodeProxy(self, path)
        raw = self.values.get(path)
        if raw is None:
            return None
        value: Any = raw
        if spec.kind == "enum" and spec.enum_type is not None:
            try:
                value = spec.enum_type(raw)
            except ValueError:
                log.debug("value not in the enum", device=self.device_id, path=path, value=raw)
        elif spec.kind == "image" and isinstance(raw, Mapping):
            try:
                value = Image.from_value(raw)
            except ValueError:
                log.debug("malformed image value", device=self.device_id, path=path)
        alarm = self.alarms.get(path)
        condition = AlarmCondition(alarm) if alarm in ("warn", "alarm") else AlarmCondition.NONE
        return wrap(
            value,
            self.stamps.get(path),
            condition,
            stale=self.stale,
            source=(self.proxy, path),
            enum_value=spec.kind == "enum" and value is raw,
        )

    async def next_value(self, path: str, timeout: float | None) -> Any:
        """The value of the first update of ``path`` after this call."""
        if not self.alive:
            raise DeviceGone(f"device {self.device_id!r} is gone; no new value of {path!r} will come")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.new_value_waiters.setdefault(path, []).append(future)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise TimeoutError(f"no new value of {self.device_id}.{path} within {timeout:g} s") from None
        finally:
            waiting = self.new_value_waiters.get(path)
            if waiting is not None and future in waiting:
                waiting.remove(future)

    def children(self, prefix: str) -> list[str]:
        if self.schema is None:
            return []
        start = prefix + "." if prefix else ""
        names = {
            path[len(start) :].split(".", 1)[0]
            for path in [*self.schema.properties, *self.schema.slots]
            if path.startswith(start)
        }
        return sorted(names)

    # --- writing --------------------------------------------------------------------------------
    @property
    def access_level(self) -> AccessLevel:
        return AccessLevel(max(0, min(int(self.instance.access_level), int(AccessLevel.ADMIN))))

    def check_usable(self) -> None:
        if not self.alive:
            raise DeviceGone(
                f"device {self.device_id!r} is not alive (shut down or died); "
                "its proxy reconnects when it comes back"
            )
        holder = self.values.get("locked_by") or ""
        if holder and holder != self.instance.instance_id:
            raise DeviceLocked(f"{self.device_id} is locked by {holder!r}")

    def validate(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Refuse here what the device would refuse (type, range, options, readonly, state, level)."""
        schema = self.require_schema()
        validated = schema.validate_reconfiguration(
            changes, state=self.state(), access_level=self.access_level
        )
        return {path: to_wire(value) for path, value in validated.items()}

    def assign(self, path: str, value: Any) -> None:
        """``proxy.x = v``: validated now, sent with the other assignments of this loop iteration."""
        schema = self.require_schema()
        if path in schema.slots:
            raise AttributeError(f"{self.device_id}.{path} is a slot: call it, do not assign to it")
        wire = self.validate({path: value})
        self.check_usable()
        self.outbox.update(wire)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self.send_outbox)

    def take_outbox(self) -> dict[str, Any]:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        pending, self.outbox = self.outbox, {}
        return pending

    def send_outbox(self) -> None:
        changes = self.take_outbox()
        if changes:
            self.manager.spawn(self._send_no_wait(changes))

    async def _send_no_wait(self, changes: dict[str, Any]) -> None:
        try:
            await self.instance.request(self.device_id, "set", changes)
        except (KaraboError, ConnectionError) as exc:
            log.warning("set not applied", device=self.device_id, keys=sorted(changes), error=str(exc))

    async def set_wait(self, changes: Mapping[str, Any], timeout: float | None) -> None:
        """Send pending assignments and ``changes`` as one ``set``; return when the proxy shows them."""
        wire = self.validate(changes)
        self.check_usable()
        combined = {**self.take_outbox(), **wire}
        if not combined:
            return
        before = {path: self.seq.get(path, 0) for path in combined}
        seconds = self.instance.request_timeout if timeout is None else timeout
        try:
            applied = await self.instance.request(self.device_id, "set", combined, timeout=seconds)
        except NoSuchInstance as exc:
            raise DeviceGone(f"device {self.device_id!r} is gone") from exc
        await self._until_seen(before, applied if isinstance(applied, Mapping) else combined)

    async def _until_seen(self, before: Mapping[str, int], applied: Mapping[str, Any]) -> None:
        """The reply and the change signal travel separately: wait for the signal too, so the proxy
        shows what was set when set_wait returns."""
        deadline = asyncio.get_running_loop().time() + APPLIED_GRACE
        while self.alive and any(self.seq.get(p, 0) <= n for p, n in before.items()):
            try:
                await next_change(deadline)
            except TimeoutError:
                log.warning("change signal missing after set; using the reply", device=self.device_id)
                stamp = Timestamp.now()
                for path in before:
                    if self.seq.get(path, 0) <= before[path] and path in applied:
                        self._store(path, applied[path], stamp, None)
                notify_change()
                return

    async def call_slot(self, name: str, args: tuple[Any, ...], timeout: float | None = None) -> Any:
        schema = self.require_schema()
        spec = schema.slots.get(name)
        if spec is None:
            raise NoSuchSlot(self.device_id, name)
        self.check_usable()
        reason = spec.refusal(self.state(), self.access_level)
        if reason is not None:
            raise SlotRefused(f"{self.device_id}.{name} refused: {reason}")
        if self.outbox:  # assignments made before the call reach the device before it
            self.send_outbox()
        try:
            return await self.instance.request(self.device_id, name, *args, timeout=timeout)
        except NoSuchInstance as exc:
            raise DeviceGone(f"device {self.device_id!r} is gone (calling {name!r})") from exc


# --- views ---------------------------------------------------------------------------------------


class SlotCall:
    """``proxy.move``: call it (``await proxy.move()``) to run the slot and get its return value."""

    __slots__ = ("_link", "_name")

    def __init__(self, link: DeviceLink, name: str) -> None:
        self._link = link
        self._name = name

    async def __call__(self, *args: Any) -> Any:
        return await self._link.call_slot(self._name, args)

    def __repr__(self) -> str:
        return f"<slot {self._link.device_id}.{self._name}>"


class _View:
    """Attribute access by property path; the names of the remote schema are the attributes."""

    _link: DeviceLink
    _prefix: str

    def __init__(self, link: DeviceLink, prefix: str) -> None:
        object.__setattr__(self, "_link", link)
        object.__setattr__(self, "_prefix", prefix)

    def _path(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._link.value(self._path(name))

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or hasattr(type(self), name):
            object.__setattr__(self, name, value)
            return
        self._link.assign(self._path(name), value)

    def __dir__(self) -> list[str]:
        return sorted(
            {*self._link.children(self._prefix), *(n for n in dir(type(self)) if not n.startswith("_"))}
        )


class NodeProxy(_View):
    """A node of a device (``proxy.settings``); its properties are its attributes."""

    def __repr__(self) -> str:
        return f"<node {self._prefix} of {self._link.device_id}>"


class Proxy(_View):
    """A live remote device. Its properties and slots are its attributes (see ``dir(proxy)``);
    ``alive`` and ``stale`` are the proxy's own."""

    def __init__(self, link: DeviceLink) -> None:
        super().__init__(link, "")

    @property
    def alive(self) -> bool:
        """False once the device is gone (shut down, died); true again when it is back."""
        return self._link.alive

    @alive.setter
    def alive(self, value: bool) -> None:
        raise AttributeError("alive is read-only: it follows the remote device")

    @property
    def stale(self) -> bool:
        """True while the broker link is down: the values may be out of date."""
        return self._link.stale

    @stale.setter
    def stale(self, value: bool) -> None:
        raise AttributeError("stale is read-only: it follows the broker link")

    def __repr__(self) -> str:
        link = self._link
        class_id = link.schema.class_id if link.schema else "?"
        status = "alive" if link.alive else "gone"
        if link.stale:
            status += ", stale"
        return f"<Proxy {link.device_id} ({class_id}) {status}>"


def link_of(proxy: Proxy | NodeProxy) -> DeviceLink:
    return object.__getattribute__(proxy, "_link")  # type: ignore[no-any-return]


# --- the proxies of one instance ---------------------------------------------------------------


class ProxyManager:
    """The links of one instance (client, device or macro): one per device id, shared by its proxies."""

    def __init__(self, instance: SignalSlotable) -> None:
        self.instance = instance
        self.links: dict[str, DeviceLink] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._attached = False

    def _attach(self) -> None:
        if not self._attached:
            self._attached = True
            self.instance.topology.add_listener(self._on_topology)
            self.instance.hub.transport.add_listener(self)

    def _detach(self) -> None:
        if self._attached:
            self._attached = False
            self.instance.topology.remove_listener(self._on_topology)
            self.instance.hub.transport.remove_listener(self)

    async def link(self, device_id: str) -> DeviceLink:
        """The subscribed link of ``device_id``; NoSuchInstance if there is no such instance (also when
        this instance still holds a proxy of it from before it died)."""
        existing = self.links.get(device_id)
        if existing is not None and existing.subscribed and existing.alive:
            return existing
        lock = self._locks.setdefault(device_id, asyncio.Lock())
        async with lock:
            existing = self.links.get(device_id)
            if existing is not None and existing.subscribed:
                if not existing.alive:
                    await existing.revive()
                return existing
            self._attach()
            link = DeviceLink(self, device_id)
            await link.subscribe()
            self.links[device_id] = link
            return link

    async def release(self, link: DeviceLink) -> None:
        link.users -= 1
        if link.users <= 0 and not link.pinned and self.links.get(link.device_id) is link:
            del self.links[link.device_id]
            await link.unsubscribe()

    async def close(self) -> None:
        for link in list(self.links.values()):
            await link.unsubscribe()
        self.links.clear()
        for task in list(self._tasks):
            task.cancel()
        self._detach()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- events ---------------------------------------------------------------------------------
    def _on_topology(self, event: TopologyEvent) -> None:
        if not self.instance.online:
            self._detach()  # the instance went away without closing us (a stopped device)
            return
        link = self.links.get(event.instance_id)
        if link is not None:
            link.on_topology(event)

    def connection_lost(self, exc: BaseException | None) -> None:
        for link in self.links.values():
            link.stale = True
        if self.links:
            notify_change()

    def connection_restored(self) -> None:
        for link in self.links.values():
            link.schedule_refresh(persist=True)

    def queue_lost(self, queue: str, exc: BaseException) -> None:
        """Our own instance lost its id; the instance itself reports it."""


_managers: weakref.WeakKeyDictionary[SignalSlotable, ProxyManager] = weakref.WeakKeyDictionary()


def manager_of(instance: SignalSlotable) -> ProxyManager:
    manager = _managers.get(instance)
    if manager is None:
        manager = _managers[instance] = ProxyManager(instance)
    return manager


__all__ = ["DeviceLink", "NodeProxy", "Proxy", "ProxyManager", "SlotCall", "link_of", "manager_of"]
