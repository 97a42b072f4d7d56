"""Pipeline channels on devices: ``output = OutputChannel()`` and ``input = InputChannel(...)``.

A channel declared as a Device class attribute is three things at once:

- a node of the device's schema (``output.*``, ``input.*``): its policies as init-only
  properties, the input's ``connected_output_channels`` as a reconfigurable list, and its counters
  (dropped items, queue depth, missing connections...) as readonly properties, published like any
  other property but at most every ``stats_interval`` seconds and only when they change;
- a device component (see :data:`karabo_async.device.COMPONENT_ATTRIBUTE`): started once the
  device is online, closed when it stops, told about reconfiguration;
- on the instance, a bound channel (``self.output.write(...)``) wrapping the engine of
  :mod:`karabo_async.pipeline`.

Outputs are found through the broker: every device with an output answers the slot
``get_output_channel_info(name)`` with the output's address. Inputs ask it on every (re)connect and
try again at once when the output's device appears or updates in the topology, so they reconnect by
themselves when that device restarts.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar, overload

import structlog

from .device import Device, NodeView, timestamp_now
from .errors import ConfigurationError, PipelineError, ReconfigurationError
from .hash import Hash
from .pipeline import InputEndpoint, ItemMeta, OutputEndpoint
from .pipeline.policies import (
    DATA_DISTRIBUTIONS,
    NO_SHARED_READY,
    ON_SLOWNESS,
    TRANSPORTS,
    DataDistribution,
    NoSharedReady,
    OnSlowness,
    Transport,
    check_channel_id,
    check_choice,
    check_positive,
)
from .properties import Property, PropertySpec
from .schema import PROPERTY_ATTRIBUTE, Node, schema_of
from .timestamp import Timestamp
from .topology import INSTANCE_NEW, INSTANCE_UPDATED, TopologyEvent

log = structlog.get_logger(__name__)

INFO_SLOT: Final = "get_output_channel_info"
"""The slot of a device with outputs: ``(name) -> address_info`` of its output ``name``."""

DEFAULT_STATS_INTERVAL: Final = 0.25
RESOLVE_TIMEOUT: Final = 2.0
EOS_AT_CLOSE_TIMEOUT: Final = 2.0


@dataclass(frozen=True, slots=True)
class ChannelMeta:
    """What comes with each item (and with an end of stream): who sent it, when, for which train."""

    source: str
    timestamp: Timestamp
    train_id: int

    @classmethod
    def from_item(cls, meta: ItemMeta) -> ChannelMeta:
        t = meta.timestamp
        stamp = t if isinstance(t, Timestamp) else Timestamp.from_float(t, meta.train_id)
        return cls(meta.source, stamp, meta.train_id)


OnData = Callable[[Any, Hash, ChannelMeta], Awaitable[None] | None]
OnEndOfStream = Callable[[Any, ChannelMeta], Awaitable[None] | None]
B = TypeVar("B")


def _node(class_name: str, description: str, members: dict[str, tuple[Any, PropertySpec]]) -> PropertySpec:
    """The declaration of a schema node made of ``members`` (name: (type, spec)), as a PropertySpec."""
    namespace: dict[str, Any] = {"__annotations__": {k: t for k, (t, _) in members.items()}}
    namespace.update({k: spec for k, (_, spec) in members.items()})
    namespace["__module__"] = __name__
    node_type = type(class_name, (Node,), namespace)
    spec: PropertySpec = Property(description=description)
    return dataclasses.replace(spec, annotation=node_type)


def _readonly_int(description: str) -> tuple[type, PropertySpec]:
    return int, Property(0, readonly=True, archive=False, description=description)


class _Channel(Generic[B]):
    """What both declarations share: the name, the schema node, the per-instance bound channel."""

    __karabo_component__: Final = True

    name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        if self.name and self.name != name:
            raise PipelineError(f"a channel declaration is used twice: as {self.name!r} and as {name!r}")
        self.name = name

    def _bind(self, device: Device) -> B:
        raise NotImplementedError

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> _Channel[B]: ...

    @overload
    def __get__(self, instance: Device, owner: type | None = None) -> B: ...

    def __get__(self, instance: Device | None, owner: type | None = None) -> _Channel[B] | B:
        if instance is None:
            return self
        bound = instance.__dict__.get(self.name)
        if bound is None:
            bound = instance.__dict__[self.name] = self._bind(instance)
        return bound


D = TypeVar("D", bound=_Channel[Any])
E = TypeVar("E", OutputEndpoint, InputEndpoint)


class _BoundChannel(Generic[D, E]):
    """What both bound channels share: the device, its declaration, the endpoint once started."""

    def __init__(self, device: Device, declaration: D) -> None:
        self.device = device
        self.declaration = declaration
        self.name = declaration.name
        self.endpoint: E | None = None
        self._stats: _StatsPublisher | None = None

    @property
    def channel_id(self) -> str:
        return f"{self.device.device_id}:{self.name}"


# --- output ------------------------------------------------------------------------------------------


class OutputChannel(_Channel["BoundOutputChannel"]):
    """An output channel of a device: ``output = OutputChannel()``; write with ``self.output.write``.

    ``schema`` (a Node subclass) may describe what the items hold; it is handed to inputs with the
    address. The other arguments are the defaults of the init-only properties ``<name>.transport``
    (``auto``, or force ``local``/``shm``/``tcp``), ``<name>.no_shared_ready`` (``drop``, ``queue``,
    ``wait``: what happens to an item for shared inputs when none is ready) and
    ``<name>.shared_queue_length``; the shared-memory pool and TCP settings are fixed here.
    """

    def __init__(
        self,
        *,
        schema: type[Node] | None = None,
        description: str = "",
        transport: Transport = "auto",
        no_shared_ready: NoSharedReady = "drop",
        shared_queue_length: int = 100,
        pool_slots: int = 8,
        slot_size: int = 8 * 1024 * 1024,
        alloc_attempts: int = 20,
        alloc_interval: float = 0.05,
        tcp_host: str = "0.0.0.0",
        advertise_host: str | None = None,
        stats_interval: float = DEFAULT_STATS_INTERVAL,
    ) -> None:
        check_choice("transport", transport, TRANSPORTS)
        check_choice("no_shared_ready", no_shared_ready, NO_SHARED_READY)
        check_positive("shared_queue_length", shared_queue_length)
        if schema is not None:
            schema_of(schema)  # a bad item schema fails here, not at an input's first lookup
        self.data_schema = schema
        self.pool_slots = check_positive("pool_slots", pool_slots)
        self.slot_size = check_positive("slot_size", slot_size)
        self.alloc_attempts = check_positive("alloc_attempts", alloc_attempts)
        self.alloc_interval = alloc_interval
        self.tcp_host = tcp_host
        self.advertise_host = advertise_host
        self.stats_interval = stats_interval
        members: dict[str, tuple[Any, PropertySpec]] = {
            "transport": (str, Property(transport, options=TRANSPORTS, init_only=True, description=(
                "Paths offered to inputs: auto (same process, shared memory, TCP) or one forced"))),
            "no_shared_ready": (str, Property(no_shared_ready, options=NO_SHARED_READY, init_only=True,
                description="What happens to an item for shared inputs when none is ready")),
            "shared_queue_length": (int, Property(shared_queue_length, ge=1, init_only=True,
                description="Items kept for shared inputs under policy 'queue' (oldest dropped)")),
            "items_written": _readonly_int("Items written since the device started"),
            "dropped": _readonly_int("Items not delivered: dropped for slow inputs or no shared input ready"),
            "queue_depth": _readonly_int("Items waiting at the output for inputs to grant credit"),
            "connected_inputs": (list[str], Property([], readonly=True, archive=False,
                description="Inputs connected now")),
        }  # fmt: skip
        setattr(
            self, PROPERTY_ATTRIBUTE, _node("OutputChannelNode", description or "Pipeline output", members)
        )

    def _bind(self, device: Device) -> BoundOutputChannel:
        return BoundOutputChannel(device, self)


class BoundOutputChannel(_BoundChannel[OutputChannel, OutputEndpoint]):
    """A device's output channel: ``await write(data)``, ``await write_end_of_stream()``."""

    def __init__(self, device: Device, declaration: OutputChannel) -> None:
        super().__init__(device, declaration)
        self._eos_task: asyncio.Task[None] | None = None  # the latest end of stream not yet sent

    async def start(self) -> None:
        decl, node = self.declaration, NodeView(self.device, self.name)
        endpoint = OutputEndpoint(
            self.device.device_id,
            self.name,
            transport=node.transport,
            no_shared_ready=node.no_shared_ready,
            shared_queue_length=node.shared_queue_length,
            pool_slots=decl.pool_slots,
            slot_size=decl.slot_size,
            alloc_attempts=decl.alloc_attempts,
            alloc_interval=decl.alloc_interval,
            tcp_host=decl.tcp_host,
            advertise_host=decl.advertise_host,
        )
        await endpoint.start()
        self.endpoint = endpoint
        ss = self.device.signalslot
        if not ss.has_slot(INFO_SLOT):
            ss.register_slot(_info_slot(self.device), INFO_SLOT)
        self._stats = _StatsPublisher(self.device, self.name, self._counters, decl.stats_interval)

    def address_info(self) -> dict[str, Any]:
        """Where inputs reach this output (and the declared item schema, if any)."""
        info = self._running().address_info()
        if self.declaration.data_schema is not None:
            info["schema"] = schema_of(self.declaration.data_schema).to_document()
        return info

    async def write(self, data: Mapping[str, Any], timestamp: Timestamp | None = None) -> None:
        """Send ``data`` (a Hash; other mappings are made one) to the connected inputs.

        ``timestamp`` defaults to now with the current train id. After this call the item belongs
        to the pipeline (in-process inputs get the very object): build a new one for the next.
        May wait (an input's policy ``wait``, or ``no_shared_ready="wait"``); raises PoolExhausted
        if the shared-memory pool stayed full (that item is counted as dropped, the output goes on).
        """
        endpoint = self._running()
        if self._eos_task is not None and not self._eos_task.done():
            # An end of stream requested without await goes out before this item, as it was asked first.
            await asyncio.wait([self._eos_task])
        stamp = timestamp if timestamp is not None else timestamp_now()
        item = data if isinstance(data, Hash) else Hash(data)
        await endpoint.write(item, ItemMeta(endpoint.channel_id, stamp, stamp.train_id))

    def write_end_of_stream(self) -> asyncio.Task[None]:
        """Each connected input gets one end of stream, after everything written before.

        Scheduled at once, so ``self.output.write_end_of_stream()`` works without ``await``; the
        returned task may be awaited to know it was sent (and to get its error). Items written
        afterwards follow it. A failure nobody awaits is logged.
        """
        endpoint = self._running()
        task = asyncio.get_running_loop().create_task(
            self._end_of_stream(endpoint, self._eos_task), name=f"end-of-stream-{self.channel_id}"
        )
        task.add_done_callback(self._end_of_stream_done)
        self._eos_task = task
        return task

    async def _end_of_stream(self, endpoint: OutputEndpoint, previous: asyncio.Task[None] | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        await endpoint.write_end_of_stream()

    def _end_of_stream_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, so an un-awaited failure is not reported twice
        if exc is not None:
            log.error("end of stream not sent", output=self.channel_id, error=repr(exc))

    @property
    def inputs(self) -> list[str]:
        return self.endpoint.inputs if self.endpoint is not None else []

    @property
    def stats(self) -> dict[str, Any]:
        return self._running().stats

    def _counters(self) -> dict[str, Any]:
        endpoint = self.endpoint
        if endpoint is None:
            return {}
        stats = endpoint.stats
        inputs = stats["inputs"].values()
        return {
            "items_written": stats["items_written"],
            "dropped": stats["dropped"],
            "queue_depth": stats["shared_queue_depth"] + sum(i["queue_depth"] for i in inputs),
            "connected_inputs": sorted(stats["inputs"]),
        }

    def _running(self) -> OutputEndpoint:
        if self.endpoint is None:
            raise PipelineError(f"output {self.channel_id} is not started (the device is not online)")
        return self.endpoint

    def check_reconfiguration(self, changes: dict[str, Any]) -> None:
        return None

    async def reconfigured(self, changes: dict[str, Any]) -> None:
        return None

    async def close(self) -> None:
        eos = self._eos_task
        if eos is not None and not eos.done():
            # Let a requested end of stream go out first, but never hang the device's shutdown on it.
            await asyncio.wait([eos], timeout=EOS_AT_CLOSE_TIMEOUT)
            eos.cancel()
        if self._stats is not None:
            await self._stats.stop()
        if self.endpoint is not None:
            await self.endpoint.close()


def _info_slot(device: Device) -> Callable[[str], dict[str, Any]]:
    def get_output_channel_info(name: str) -> dict[str, Any]:
        for component in device._components():
            if isinstance(component, BoundOutputChannel) and component.name == name:
                return component.address_info()
        raise PipelineError(f"{device.device_id} has no output channel {name!r}")

    return get_output_channel_info


# --- input -------------------------------------------------------------------------------------------


class InputChannel(_Channel["BoundInputChannel"]):
    """An input channel of a device; decorate its handlers with ``@input.on_data`` and
    ``@input.on_end_of_stream``.

    The arguments are the defaults of init-only properties ``<name>.data_distribution`` (``copy``:
    every item; ``shared``: a share), ``<name>.on_slowness`` (``drop``, ``queue_drop``, ``wait``),
    ``<name>.max_queue_length``, ``<name>.credit_window`` and ``<name>.transport`` (force a path);
    ``connected_output_channels`` is the default of the reconfigurable
    ``<name>.connected_output_channels`` (``["instanceId:channelName", ...]``).
    """

    def __init__(
        self,
        *,
        data_distribution: DataDistribution = "copy",
        on_slowness: OnSlowness = "wait",
        max_queue_length: int = 2,
        credit_window: int = 8,
        transport: Transport = "auto",
        connected_output_channels: list[str] | None = None,
        description: str = "",
        stats_interval: float = DEFAULT_STATS_INTERVAL,
        resolve_timeout: float = RESOLVE_TIMEOUT,
    ) -> None:
        check_choice("data_distribution", data_distribution, DATA_DISTRIBUTIONS)
        check_choice("on_slowness", on_slowness, ON_SLOWNESS)
        check_choice("transport", transport, TRANSPORTS)
        check_positive("max_queue_length", max_queue_length)
        check_positive("credit_window", credit_window)
        for output_id in connected_output_channels or []:
            check_channel_id(output_id)
        self.stats_interval = stats_interval
        self.resolve_timeout = resolve_timeout
        self.data_handler: OnData | None = None
        self.eos_handler: OnEndOfStream | None = None
        members: dict[str, tuple[Any, PropertySpec]] = {
            "connected_output_channels": (list[str], Property(list(connected_output_channels or []),
                description="Outputs to receive from, as instanceId:channelName")),
            "data_distribution": (str, Property(data_distribution, options=DATA_DISTRIBUTIONS, init_only=True,
                description="copy: every item; shared: items are shared out among the shared inputs")),
            "on_slowness": (str, Property(on_slowness, options=ON_SLOWNESS, init_only=True,
                description="When this copy input is not ready: drop, queue_drop (bounded) or wait")),
            "max_queue_length": (int, Property(max_queue_length, ge=1, init_only=True,
                description="Items waiting for this input under queue_drop")),
            "credit_window": (int, Property(credit_window, ge=1, init_only=True,
                description="Items an output may send ahead of this input's processing")),
            "transport": (str, Property(transport, options=TRANSPORTS, init_only=True,
                description="auto picks the fastest path; local, shm or tcp force one")),
            "missing_connections": (list[str], Property([], readonly=True, archive=False,
                description="Configured outputs not connected now")),
            "connections": (list[str], Property([], readonly=True, archive=False,
                description="Connected outputs with the path taken, as output=local|shm|tcp")),
            "received": _readonly_int("Items received since the device started"),
            "processed": _readonly_int("Items handed to the data handler"),
            "queue_depth": _readonly_int("Items received and waiting for the data handler"),
            "handler_errors": _readonly_int("Items whose handler raised"),
            "end_of_streams": _readonly_int("End-of-stream calls made"),
        }  # fmt: skip
        setattr(self, PROPERTY_ATTRIBUTE, _node("InputChannelNode", description or "Pipeline input", members))

    def on_data(self, fn: OnData) -> OnData:
        """Decorate ``async def handle(self, data: Hash, meta: ChannelMeta)``: called for each item in turn."""
        self.data_handler = fn
        return fn

    def on_end_of_stream(self, fn: OnEndOfStream) -> OnEndOfStream:
        """Decorate ``async def eos(self, meta)``: called once all connected outputs ended their stream."""
        self.eos_handler = fn
        return fn

    def _bind(self, device: Device) -> BoundInputChannel:
        return BoundInputChannel(device, self)


class BoundInputChannel(_BoundChannel[InputChannel, InputEndpoint]):
    """A device's input channel; connections follow ``<name>.connected_output_channels``."""

    def __init__(self, device: Device, declaration: InputChannel) -> None:
        super().__init__(device, declaration)
        self._listener: Callable[[TopologyEvent], None] | None = None

    @property
    def _path(self) -> str:
        return f"{self.name}.connected_output_channels"

    async def start(self) -> None:
        node = NodeView(self.device, self.name)
        wanted = list(dict.fromkeys(node.connected_output_channels))
        errors = _bad_ids(self._path, wanted)
        if errors:
            raise ConfigurationError(errors)
        self.endpoint = InputEndpoint(
            self.device.device_id,
            self.name,
            data_distribution=node.data_distribution,
            on_slowness=node.on_slowness,
            max_queue_length=node.max_queue_length,
            credit_window=node.credit_window,
            transport=node.transport,
            on_data=self._on_data,
            on_end_of_stream=self._on_end_of_stream,
            resolve=self._resolve,
        )
        self._listener = self.device.signalslot.topology.add_listener(self._on_topology)
        for output_id in wanted:
            await self.endpoint.connect(output_id, timeout=0)
        self._stats = _StatsPublisher(self.device, self.name, self._counters, self.declaration.stats_interval)

    async def _resolve(self, output_id: str) -> Mapping[str, Any]:
        instance, _, name = output_id.rpartition(":")
        info = await self.device.signalslot.request(
            instance, INFO_SLOT, name, timeout=self.declaration.resolve_timeout
        )
        if not isinstance(info, Mapping):
            raise PipelineError(f"{instance}.{INFO_SLOT} answered {type(info).__name__}, not an address")
        return info

    def _on_topology(self, event: TopologyEvent) -> None:
        # The output's device came (back) or updated its info (its outputs start after it goes
        # online): worth trying at once rather than after the back-off.
        if event.kind not in (INSTANCE_NEW, INSTANCE_UPDATED) or self.endpoint is None:
            return
        for output_id in self.endpoint.missing_connections:
            if output_id.rpartition(":")[0] == event.instance_id:
                self.endpoint.retry(output_id)

    def _on_data(self, data: Mapping[str, Any], meta: ItemMeta) -> Awaitable[None] | None:
        handler = self.declaration.data_handler
        if handler is None:
            return None
        item = data if isinstance(data, Hash) else Hash(data)
        return handler(self.device, item, ChannelMeta.from_item(meta))

    def _on_end_of_stream(self) -> Awaitable[None] | None:
        handler = self.declaration.eos_handler
        if handler is None:
            return None
        stamp = timestamp_now()
        source = self.endpoint.last_end_of_stream_from if self.endpoint is not None else ""
        return handler(self.device, ChannelMeta(source, stamp, stamp.train_id))

    @property
    def connected(self) -> list[str]:
        return self.endpoint.connected if self.endpoint is not None else []

    @property
    def missing_connections(self) -> list[str]:
        return self.endpoint.missing_connections if self.endpoint is not None else []

    async def wait_connected(self, output_id: str, timeout: float = 5.0) -> bool:
        """True once connected to ``output_id`` (which must be configured), False after ``timeout``."""
        if self.endpoint is None:
            raise PipelineError(f"input {self.channel_id} is not started (the device is not online)")
        return await self.endpoint.wait_connected(output_id, timeout)

    @property
    def stats(self) -> dict[str, Any]:
        if self.endpoint is None:
            raise PipelineError(f"input {self.channel_id} is not started (the device is not online)")
        return self.endpoint.stats

    def _counters(self) -> dict[str, Any]:
        endpoint = self.endpoint
        if endpoint is None:
            return {}
        stats = endpoint.stats
        return {
            "missing_connections": endpoint.missing_connections,
            "connections": [
                f"{k}={c['transport']}" for k, c in stats["connections"].items() if c["connected"]
            ],
            "received": stats["received"],
            "processed": stats["processed"],
            "queue_depth": stats["queue_depth"],
            "handler_errors": stats["on_data_errors"],
            "end_of_streams": stats["end_of_stream_calls"],
        }

    def check_reconfiguration(self, changes: dict[str, Any]) -> None:
        if self._path in changes:
            errors = _bad_ids(self._path, changes[self._path])
            if errors:
                raise ReconfigurationError(errors)

    async def reconfigured(self, changes: dict[str, Any]) -> None:
        if self._path not in changes or self.endpoint is None:
            return
        wanted = list(dict.fromkeys(changes[self._path]))
        for output_id in self.endpoint.connected_output_channels:
            if output_id not in wanted:
                await self.endpoint.disconnect(output_id)
        for output_id in wanted:
            if output_id not in self.endpoint.connected_output_channels:
                await self.endpoint.connect(output_id, timeout=0)
        if self._stats is not None:
            self._stats.publish()

    async def close(self) -> None:
        if self._listener is not None:
            self.device.signalslot.topology.remove_listener(self._listener)
            self._listener = None
        if self._stats is not None:
            await self._stats.stop()
        if self.endpoint is not None:
            await self.endpoint.close()


def _bad_ids(path: str, ids: list[str]) -> list[tuple[str, str]]:
    errors = []
    for output_id in ids:
        try:
            check_channel_id(output_id)
        except PipelineError as exc:
            errors.append((path, str(exc)))
    return errors


# --- counters as properties ----------------------------------------------------------------------------


class _StatsPublisher:
    """Sets a channel's counter properties every ``interval`` seconds, only those that changed."""

    def __init__(
        self, device: Device, prefix: str, counters: Callable[[], dict[str, Any]], interval: float
    ) -> None:
        self.device = device
        self.prefix = prefix
        self.counters = counters
        self.interval = interval
        self._last: dict[str, Any] = {}
        self.publish()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"channel-stats-{prefix}")

    def publish(self) -> None:
        changed = {f"{self.prefix}.{k}": v for k, v in self.counters().items() if self._last.get(k) != v}
        if changed:
            self.device.set_properties(changed)
            self._last.update({k.rpartition(".")[2]: v for k, v in changed.items()})

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)  # a rate limit: counters change far more often
            try:
                self.publish()
            except Exception:
                log.exception("publishing channel counters failed", device=self.device.device_id)

    async def stop(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        try:
            self.publish()
        except Exception:
            log.exception("publishing channel counters failed", device=self.device.device_id)


__all__ = [
    "BoundInputChannel",
    "BoundOutputChannel",
    "ChannelMeta",
    "InputChannel",
    "OutputChannel",
]
