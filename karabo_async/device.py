"""Device: a class of typed properties and slots that lives on the broker.

A device author declares properties (``Property``) and slots (``@slot``); this module makes them
live: property values are validated on assignment, stamped with a :class:`Timestamp` carrying the
current train id, and published. All changes made in one event-loop iteration travel as one
``changed`` signal, in order. Reconfiguration from outside goes through the ``set`` slot and is
atomic: one bad key and nothing is applied.

A device is not a SignalSlotable itself but owns one (``self.signalslot``), so that the names a
device author may use for properties and slots (``stop``, ``start``, ``call`` ...) never collide
with the messaging machinery.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from .errors import (
    ConfigurationError,
    DeviceInitializationError,
    DeviceLocked,
    ReconfigurationError,
    SlotRefused,
)
from .fsm import BoundStateMachine, StateChange, StateMachine
from .hash import Hash
from .hub import Hub
from .properties import Image, PropertySpec
from .schema import PROPERTY_ATTRIBUTE, Configurable, Property, Schema, schema_of
from .signalslot import SignalSlotable, current_message, reset_current_instance, set_current_instance
from .slots import SlotSpec
from .states import AccessLevel, AlarmCondition, State
from .timestamp import Timestamp
from .wire import Message

log = structlog.get_logger(__name__)

DESTRUCTION_TIMEOUT = 5.0
CHANGED_SIGNAL = "changed"
SCHEMA_SIGNAL = "schema_updated"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
COMPONENT_ATTRIBUTE = "__karabo_component__"
"""A class attribute that has this attribute set true is a *component* (e.g. a pipeline channel).
Its value read from the device instance is asked, by duck typing (this module knows no component
class): ``await start()`` once the device is online, before ``on_initialization`` (raising fails
the initialization); ``check_reconfiguration(changes)`` before an outside reconfiguration is
applied (raise ReconfigurationError to refuse it); ``await reconfigured(changes)`` after; and
``await close()`` when the device stops (also after a failed start)."""


# --- the train clock ---------------------------------------------------------------------------------


class TrainClock:
    """The current train id of this process, from the ticks a clock device broadcasts.

    Between ticks the id is extrapolated from the last tick's time and period; without ticks for
    a few periods the id is 0 (no clock runs), so values are never stamped with a stale train.
    """

    STALE_PERIODS = 5

    def __init__(self) -> None:
        self.train_id = 0
        self.time = 0.0
        self.period = 0.0

    def tick(self, train_id: int, when: float, period: float) -> None:
        self.train_id, self.time, self.period = int(train_id), float(when), float(period)

    def current(self, now: float | None = None) -> int:
        if self.period <= 0 or self.train_id <= 0:
            return 0
        elapsed = (time.time() if now is None else now) - self.time
        if elapsed < 0 or elapsed > self.STALE_PERIODS * self.period:
            return 0 if elapsed > 0 else self.train_id
        return self.train_id + int(elapsed / self.period)

    def on_broadcast(self, message: Message) -> None:
        from . import codec

        args = codec.decode(message.body)
        if isinstance(args, list) and len(args) >= 3:
            self.tick(int(args[0]), float(args[1]), float(args[2]))


train_clock = TrainClock()
TRAIN_TICK_SLOT = "train_tick"


def timestamp_now() -> Timestamp:
    """A timestamp for a value set now, with the current train id."""
    return Timestamp.now(train_id=train_clock.current())


# --- property access -----------------------------------------------------------------------------


class _PropertyAccess:
    """Class attribute that stands in for a top-level property: reads the value, assignment
    validates, stamps and publishes. Carries the declaration for :func:`schema_of`."""

    def __init__(self, name: str, spec: PropertySpec) -> None:
        self.name = name
        setattr(self, PROPERTY_ATTRIBUTE, spec)

    def __get__(self, instance: Device | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        schema = instance._schema
        spec = schema.properties.get(self.name)
        if spec is not None and spec.kind == "node":
            return NodeView(instance, self.name)
        return instance._values.get(self.name)

    def __set__(self, instance: Device, value: Any) -> None:
        instance.set_property(self.name, value)


class NodeView:
    """``device.settings.gain`` for a node group: reads and assignments by dotted path."""

    __slots__ = ("_device", "_prefix")

    def __init__(self, device: Device, prefix: str) -> None:
        object.__setattr__(self, "_device", device)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> Any:
        path = f"{self._prefix}.{name}"
        spec = self._device._schema.properties.get(path)
        if spec is None:
            raise AttributeError(f"{self._device.device_id}: no property {path!r}")
        if spec.kind == "node":
            return NodeView(self._device, path)
        return self._device._values.get(path)

    def __setattr__(self, name: str, value: Any) -> None:
        self._device.set_property(f"{self._prefix}.{name}", value)

    def __repr__(self) -> str:
        return f"<node {self._prefix} of {self._device.device_id}>"


def to_wire(value: Any) -> Any:
    """A validated value as the codec carries it: enums as values, images as Hashes; arrays stay arrays."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Image):
        return Hash(data=value.data, encoding=value.encoding, metadata=Hash.from_dict(dict(value.metadata)))
    if isinstance(value, tuple):
        return [to_wire(v) for v in value]
    if isinstance(value, list):
        return [to_wire(v) if isinstance(v, enum.Enum | Image | tuple) else v for v in value]
    return value


# --- the device --------------------------------------------------------------------------------


class _DeviceSignalSlotable(SignalSlotable):
    instance_type = "device"

    def __init__(self, device: Device, **kwargs: Any) -> None:
        self.device = device
        super().__init__(**kwargs)

    def info_status(self) -> str:
        return self.device.info_status()

    def slot_exception(self, slot: str, exc: Exception) -> None:
        self.device._exception_in_slot(slot, exc)


class Device(Configurable):
    """Base class of devices: declare properties and slots, override the lifecycle hooks.

    ``configuration`` is validated against the class schema (unknown keys, types, limits, mandatory
    keys, readonly keys refused, every problem listed in one ConfigurationError).
    """

    device_id: str = Property("", readonly=True, description="Instance id of this device")
    class_id: str = Property("", readonly=True, description="Class of this device")
    server_id: str = Property("", readonly=True, description="Device server hosting this device")
    host: str = Property("", readonly=True, description="Host the device runs on")
    pid: int = Property(0, readonly=True, description="Process id of the hosting process")
    state: State = Property(State.UNKNOWN, readonly=True, description="Device state")
    status: str = Property("", readonly=True, description="What the device is doing, in words")
    alarm_condition: AlarmCondition = Property(
        AlarmCondition.NONE, readonly=True, description="Worst alarm over all properties"
    )
    alarm_properties: list[str] = Property(
        [], readonly=True, description="Properties beyond their warn or alarm limits", archive=False
    )
    locked_by: str = Property("", readonly=True, description="Instance holding the device's lock, if any")
    last_command: str = Property("", readonly=True, description="The last slot called", archive=False)
    log_level: str = Property("INFO", options=LOG_LEVELS, description="Log level of this device")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _install_accessors(cls)

    def __init__(
        self,
        configuration: Mapping[str, Any] | None = None,
        *,
        device_id: str | None = None,
        server_id: str = "",
        hub: Hub | None = None,
        broker: str | None = None,
        domain: str | None = None,
        heartbeat_interval: float = 5.0,
    ) -> None:
        cls = type(self)
        self._schema: Schema = schema_of(cls)
        self._values: dict[str, Any] = {}
        self._stamps: dict[str, Timestamp] = {}
        self._alarms: dict[str, AlarmCondition] = {}
        self._outbox: dict[str, Any] = {}
        self._flush_scheduled = False
        self._machines: dict[str, BoundStateMachine] = {}
        config = dict(configuration or {})
        given_id = config.pop("device_id", None) or config.pop("_deviceId_", None)
        initial = self._schema.validate_initial(config)
        self.signalslot = _DeviceSignalSlotable(
            self,
            instance_id=device_id or given_id,
            hub=hub,
            broker=broker,
            domain=domain,
            heartbeat_interval=heartbeat_interval,
            class_id=cls.__name__,
            info={"server": server_id},
        )
        now = timestamp_now()
        for path, value in initial.items():
            self._values[path] = value
            self._stamps[path] = now
        hub_ = self.signalslot.hub
        for path, value in {
            "device_id": self.signalslot.instance_id,
            "class_id": cls.__name__,
            "server_id": server_id,
            "host": hub_.host,
            "pid": hub_.pid,
        }.items():
            self._values[path] = value
        for path, value in initial.items():
            self._track_alarm(path, value)
        self._refresh_alarm_condition(now)
        self.log = structlog.get_logger(cls.__module__).bind(device=self.signalslot.instance_id)
        self._register_slots()

    # --- components -----------------------------------------------------------------------------
    def _components(self) -> list[Any]:
        """This device's components (see COMPONENT_ATTRIBUTE), in declaration order."""
        return [getattr(self, name) for name in _component_names(type(self))]

    # --- identity & schema ----------------------------------------------------------------------
    @property
    def schema(self) -> Schema:
        """This instance's schema (the class schema plus properties added at run time)."""
        return self._schema

    def get_configuration(self) -> Hash:
        """Every property value, with its timestamp and alarm as attributes."""
        h = Hash()
        for path, spec in self._schema.properties.items():
            if spec.kind == "node" or path not in self._values:
                continue
            h[path] = to_wire(self._values[path])
            stamp = self._stamps.get(path)
            if stamp is not None:
                h.set_attribute(path, "timestamp", stamp)
            alarm = self._alarms.get(path)
            if alarm is not None and alarm is not AlarmCondition.NONE:
                h.set_attribute(path, "alarm", alarm.value)
        return h

    def info_status(self) -> str:
        state = self._values.get("state", State.UNKNOWN)
        if state is State.ERROR:
            return "error"
        if state is State.UNKNOWN:
            return "unknown"
        alarm = self._values.get("alarm_condition", AlarmCondition.NONE)
        return "ok" if alarm is AlarmCondition.NONE else str(alarm.value)

    # --- setting values -------------------------------------------------------------------------
    def set_property(self, path: str, value: Any, timestamp: Timestamp | None = None) -> None:
        """Validate, stamp and publish a value the device sets itself (readonly allowed)."""
        if path not in self._schema.properties:
            raise ConfigurationError([(path, f"{self.device_id} has no such property")])
        validated = self._schema.validate_value(path, value)
        self._store(path, validated, timestamp or timestamp_now())

    def set_properties(self, values: Mapping[str, Any], timestamp: Timestamp | None = None) -> None:
        """Set several properties with one timestamp; all are validated before any is set."""
        stamp = timestamp or timestamp_now()
        validated = {}
        for path, value in values.items():
            if path not in self._schema.properties:
                raise ConfigurationError([(path, f"{self.device_id} has no such property")])
            validated[path] = self._schema.validate_value(path, value)
        for path, value in validated.items():
            self._store(path, value, stamp)

    def _store(self, path: str, value: Any, stamp: Timestamp) -> None:
        self._values[path] = value
        self._stamps[path] = stamp
        self._outbox.pop(path, None)
        self._outbox[path] = (value, stamp)
        if self._track_alarm(path, value):
            self._refresh_alarm_condition(stamp)
        if path == "log_level":
            self._apply_log_level(value)
        self._schedule_flush()

    def _track_alarm(self, path: str, value: Any) -> bool:
        spec = self._schema.properties.get(path)
        if spec is None or (
            spec.warn_low is None
            and spec.warn_high is None
            and spec.alarm_low is None
            and spec.alarm_high is None
        ):
            return False
        level = spec.alarm_level(value)
        old = self._alarms.get(path, AlarmCondition.NONE)
        if level is AlarmCondition.NONE:
            self._alarms.pop(path, None)
        else:
            self._alarms[path] = level
        return level is not old

    def _refresh_alarm_condition(self, stamp: Timestamp) -> None:
        worst = AlarmCondition.NONE
        for level in self._alarms.values():
            if level is AlarmCondition.ALARM or (
                level is AlarmCondition.WARN and worst is AlarmCondition.NONE
            ):
                worst = level
        raised = (
            [p for p in self._alarms if self._alarms[p] is worst] if worst is not AlarmCondition.NONE else []
        )
        if worst is not self._values.get("alarm_condition"):
            self._store("alarm_condition", worst, stamp)
        if raised != self._values.get("alarm_properties"):
            self._store("alarm_properties", raised, stamp)

    def _schedule_flush(self) -> None:
        if self._flush_scheduled or not self.signalslot.online:
            return
        self._flush_scheduled = True
        asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Everything changed in this loop iteration, as one ``changed`` signal, in order."""
        self._flush_scheduled = False
        if not self._outbox or not self.signalslot.online:
            return
        changes = Hash()
        for path, (value, stamp) in self._outbox.items():
            changes[path] = to_wire(value)
            changes.set_attribute(path, "timestamp", stamp)
            alarm = self._alarms.get(path)
            if alarm is not None:
                changes.set_attribute(path, "alarm", alarm.value)
        self._outbox.clear()
        self.signalslot._spawn(self.signalslot.emit(CHANGED_SIGNAL, changes))
        status = self.info_status()
        if status != self._announced_status:  # the topology shows health: tell it when that changes
            self._announced_status = status
            self.signalslot._spawn(self.signalslot.hub.update_member(self.signalslot))

    def _apply_log_level(self, level: str) -> None:
        logging.getLogger(type(self).__module__).setLevel(getattr(logging, str(level), logging.INFO))

    # --- slots ----------------------------------------------------------------------------------
    def _register_slots(self) -> None:
        ss = self.signalslot
        for name, spec in self._schema.slots.items():
            ss.register_slot(self._slot_handler(name, spec), name)
        ss.register_slot(self._slot_set, "set")
        ss.register_slot(self._slot_get_configuration, "get_configuration")
        ss.register_slot(self._slot_get_schema, "get_schema")
        ss.register_slot(self._slot_get, "get")
        ss.register_slot(self._slot_lock, "lock")
        ss.register_slot(self._slot_unlock, "unlock")
        ss.register_slot(self._slot_shutdown, "shutdown")

    def _bound_method(self, spec: SlotSpec) -> Callable[..., Any]:
        owner: Any = self
        *nodes, method = spec.name.split(".")
        for node in nodes:
            owner = getattr(owner, node)
        if isinstance(owner, NodeView):
            raise ConfigurationError([(spec.name, "slots inside nodes are not callable on this device")])
        return getattr(owner, spec.method if spec.method else method)  # type: ignore[no-any-return]

    def _slot_handler(self, name: str, spec: SlotSpec) -> Callable[..., Awaitable[Any]]:
        async def handler(*args: Any) -> Any:
            self._check_allowed(name, spec)
            method = self._bound_method(spec)
            self.set_property("last_command", name)
            result = method(*args)
            if inspect.isawaitable(result):
                result = await result
            self._flush()  # the changes a slot made reach its caller before its reply does
            return result

        return handler

    def _caller(self) -> tuple[str, AccessLevel]:
        message = current_message.get()
        if message is None:
            return "", AccessLevel.ADMIN
        level = message.access_level if message.access_level is not None else int(AccessLevel.USER)
        return message.sender, AccessLevel(max(0, min(int(level), int(AccessLevel.ADMIN))))

    def _check_lock(self, sender: str) -> None:
        holder = self._values.get("locked_by", "")
        if holder and sender and sender != holder:
            raise DeviceLocked(f"{self.device_id} is locked by {holder!r}")

    def _check_allowed(self, name: str, spec: SlotSpec) -> None:
        sender, level = self._caller()
        self._check_lock(sender)
        reason = spec.refusal(self.state, level)
        if reason is not None:
            raise SlotRefused(f"{self.device_id}.{name} refused: {reason}")

    async def _slot_set(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Atomic reconfiguration: validated as a whole against schema, state, access level and lock."""
        sender, level = self._caller()
        self._check_lock(sender)
        if not isinstance(changes, Mapping):
            raise ReconfigurationError(
                [("", f"expected a mapping of property paths to values, got {type(changes).__name__}")]
            )
        flat = changes.to_dict() if isinstance(changes, Hash) else dict(changes)
        validated = self._schema.validate_reconfiguration(flat, state=self.state, access_level=level)
        components = self._components()
        for component in components:
            component.check_reconfiguration(dict(validated))
        veto = self.pre_reconfigure(dict(validated))
        if inspect.isawaitable(veto):
            veto = await veto
        if veto is False:
            raise ReconfigurationError(
                [(next(iter(validated), ""), "refused by the device (pre_reconfigure)")]
            )
        stamp = timestamp_now()
        for path, value in validated.items():  # validated against the schema above: store as they are
            self._store(path, value, stamp)
        for component in components:
            await component.reconfigured(dict(validated))
        result = self.on_reconfigure(dict(validated))
        if inspect.isawaitable(result):
            await result
        self._flush()
        return {path: to_wire(value) for path, value in validated.items()}

    def _slot_get_configuration(self) -> Hash:
        return self.get_configuration()

    def _slot_get_schema(self) -> dict[str, Any]:
        return self._schema.to_document()

    def _slot_get(self, *paths: str) -> Any:
        if len(paths) == 1:
            return to_wire(self._values[paths[0]]) if paths[0] in self._values else self._missing(paths[0])
        config = self.get_configuration()
        if not paths:
            return config
        return Hash({p: config[p] for p in paths})

    def _missing(self, path: str) -> Any:
        raise ConfigurationError([(path, f"{self.device_id} has no such property")])

    def _slot_lock(self, holder: str | None = None) -> str:
        sender, _ = self._caller()
        holder = holder or sender
        current = self._values.get("locked_by", "")
        if current and current != holder:
            raise DeviceLocked(f"{self.device_id} is locked by {current!r}")
        self.set_property("locked_by", holder)
        return holder

    def _slot_unlock(self) -> None:
        sender, level = self._caller()
        current = self._values.get("locked_by", "")
        if current and sender and current != sender and level < AccessLevel.ADMIN:
            raise DeviceLocked(f"{self.device_id} is locked by {current!r}")
        self.set_property("locked_by", "")

    async def _slot_shutdown(self) -> None:
        # Not one of the signalslot's own tasks: going offline cancels those, and with them the stop.
        if self._shutting_down is None:
            self._shutting_down = asyncio.get_running_loop().create_task(self._shutdown_soon())

    async def _shutdown_soon(self) -> None:
        await asyncio.sleep(0)  # let the reply go out first
        try:
            if self._on_shutdown_request is not None:
                await self._on_shutdown_request(self)
            else:
                await self.stop_device()
        except Exception as exc:  # nobody awaits this task: say what went wrong
            self.log.error("shutdown failed", error=f"{type(exc).__name__}: {exc}")

    _on_shutdown_request: Callable[[Device], Awaitable[None]] | None = None
    _shutting_down: asyncio.Task[None] | None = None
    _on_stopped: Callable[[Device], None] | None = None
    _announced_status = ""

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    def online(self) -> bool:
        return self.signalslot.online

    async def start_device(self) -> None:
        """Go online, then run ``on_initialization``; if it raises, go down again and raise
        DeviceInitializationError (the hosting server stays up)."""
        self.signalslot.hub.broadcast_hooks.setdefault(TRAIN_TICK_SLOT, train_clock.on_broadcast)
        await self.signalslot.start()
        self.signalslot.topology.add_listener(self._on_topology_event)
        self.set_property("state", State.INIT)
        await self._start_state_machines()
        token = set_current_instance(self.signalslot)  # client functions in the hook act for us
        try:
            for component in self._components():
                await component.start()
            result = self.on_initialization()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self.log.error("initialization failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                self.set_properties({"state": State.ERROR, "status": f"initialization failed: {exc}"})
            await self.stop_device()
            raise DeviceInitializationError(
                f"{self.device_id}: on_initialization raised {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            reset_current_instance(token)
        if self.state is State.INIT:
            self.set_property("state", State.ON)
        self._announced_status = self.info_status()
        await self.signalslot.hub.update_member(self.signalslot)

    async def _start_state_machines(self) -> None:
        for name, value in inspect.getmembers(type(self)):
            if isinstance(value, StateMachine):
                bound = getattr(self, name)
                if isinstance(bound, BoundStateMachine):
                    self._machines[name] = bound
                    bound.add_listener(self._on_state_change)
                    await bound.start()
                    self.set_property("state", bound.state)

    def _on_state_change(self, change: StateChange) -> None:
        values: dict[str, Any] = {"state": change.new}
        if change.reason:
            values["status"] = change.reason
        self.set_properties(values)

    async def stop_device(self, timeout: float = DESTRUCTION_TIMEOUT) -> None:
        """Run ``on_destruction`` (at most ``timeout`` seconds) and go offline; others learn at once."""
        if not self.signalslot.online:
            return
        try:
            async with asyncio.timeout(timeout):
                result = self.on_destruction()
                if inspect.isawaitable(result):
                    await result
        except TimeoutError:
            self.log.warning("on_destruction did not finish in time", timeout=timeout)
        except Exception as exc:
            self.log.error("on_destruction raised", error=f"{type(exc).__name__}: {exc}")
        for component in self._components():
            try:
                await component.close()
            except Exception as exc:
                self.log.error("closing a component failed", error=f"{type(exc).__name__}: {exc}")
        self._flush()
        self.signalslot.topology.remove_listener(self._on_topology_event)
        await self.signalslot.stop()
        if self._on_stopped is not None:  # the hosting server forgets a device however it ended
            self._on_stopped(self)

    def _on_topology_event(self, event: Any) -> None:
        """A lock ends when its holder dies."""
        if event.kind == "instance_gone" and self._values.get("locked_by") == event.instance_id:
            self.log.info("lock holder gone, unlocking", holder=event.instance_id)
            self.set_property("locked_by", "")

    def _exception_in_slot(self, slot: str, exc: Exception) -> None:
        if isinstance(exc, SlotRefused | DeviceLocked | ConfigurationError):
            return
        result = self.on_exception(slot, exc)
        if inspect.isawaitable(result):
            self.signalslot._spawn(result)

    # --- run-time schema changes ----------------------------------------------------------------
    async def add_properties(self, properties: Mapping[str, PropertySpec]) -> None:
        """Add properties to this instance (not its class); clients are told the new schema."""
        self._schema = self._schema.with_properties(properties)
        stamp = timestamp_now()
        for path in properties:
            for full, spec in self._schema.properties.items():
                if (full == path or full.startswith(path + ".")) and spec.kind != "node" and spec.has_default:
                    self._store(full, spec.default_value(), stamp)
        if self.signalslot.online:
            await self.signalslot.emit(SCHEMA_SIGNAL, self._schema.to_document())

    # --- conveniences for device code -----------------------------------------------------------
    async def emit(self, signal: str, *args: Any) -> None:
        await self.signalslot.emit(signal, *args)

    # --- hooks (override) -----------------------------------------------------------------------
    def on_initialization(self) -> Awaitable[None] | None:
        """Runs once the device is online."""
        return None

    def on_destruction(self) -> Awaitable[None] | None:
        """Runs on shutdown, bounded in time."""
        return None

    def pre_reconfigure(self, changes: dict[str, Any]) -> Awaitable[bool | None] | bool | None:
        """Runs before an outside reconfiguration is applied; raise or return False to veto it."""
        return None

    def on_reconfigure(self, changes: dict[str, Any]) -> Awaitable[None] | None:
        """Runs after an outside reconfiguration was applied."""
        return None

    def on_exception(self, slot: str, exc: Exception) -> Awaitable[None] | None:
        """Runs when a slot raised (the caller gets the error too)."""
        return None


_COMPONENT_NAMES: weakref.WeakKeyDictionary[type, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _component_names(cls: type) -> tuple[str, ...]:
    names = _COMPONENT_NAMES.get(cls)
    if names is None:
        found: dict[str, None] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if getattr(value, COMPONENT_ATTRIBUTE, False) is True:
                    found[name] = None
        names = _COMPONENT_NAMES[cls] = tuple(found)
    return names


def _install_accessors(cls: type) -> None:
    """Replace each top-level PropertySpec of the class by an accessor (after schema_of read it)."""
    schema_of(cls)
    for name, value in list(vars(cls).items()):
        if isinstance(value, PropertySpec):
            setattr(cls, name, _PropertyAccess(name, value))
    properties = schema_of(cls).properties
    for name in vars(cls).get("__annotations__", {}):
        if name not in vars(cls) and name in properties and properties[name].kind == "node":
            setattr(cls, name, _PropertyAccess(name, properties[name]))


_install_accessors(Device)


__all__ = ["Device", "NodeView", "TrainClock", "timestamp_now", "to_wire", "train_clock"]
