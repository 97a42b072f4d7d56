"""The client API: script the facility with ``await``.

Module-level functions act for the *current instance*: inside a device's or macro's code that is the
device or macro itself, elsewhere the client opened by :func:`connect`. So the same script lines work
in a notebook, a macro and a device::

    async with ka.connect():
        async with connect_device("motor-1") as motor:
            await set_wait(motor, target_position=5.0)
            await motor.move()
            await wait_until(lambda: motor.state == State.ON, timeout=30)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import structlog

from .errors import DeviceGone, NoSuchInstance
from .hash import Hash
from .proxy import DeviceLink, NodeProxy, Proxy, link_of, manager_of, next_change, notify_change
from .schema import Schema
from .signalslot import (
    SignalSlotable,
    current_instance,
    pop_default_instance,
    push_default_instance,
)
from .states import AccessLevel
from .topology import Topology, TopologyEvent
from .values import KaraboValue

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_GET_DEVICE_TIMEOUT = 10.0
INSTANTIATE_TIMEOUT = 60.0
TOPOLOGY_SETTLE = 5.0


# --- the client instance ---------------------------------------------------------------------------


class Client(SignalSlotable):
    """The instance of a script, notebook or command line tool on the broker."""

    instance_type = "client"

    async def stop(self) -> None:
        await manager_of(self).close()
        pop_default_instance(self)
        await super().stop()


class _Connection:
    """``async with ka.connect():`` or ``client = await ka.connect()`` (then ``await client.stop()``)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def _start(self) -> Client:
        await self.client.start()
        push_default_instance(self.client)
        return self.client

    def __await__(self) -> Generator[Any, None, Client]:
        return self._start().__await__()

    async def __aenter__(self) -> Client:
        return await self._start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.client.stop()


def connect(
    broker: str | None = None,
    domain: str | None = None,
    *,
    instance_id: str | None = None,
    access_level: AccessLevel | int = AccessLevel.USER,
    heartbeat_interval: float = 5.0,
    request_timeout: float | None = None,
) -> _Connection:
    """A client instance for this process; module-level functions act for it while it is open.

    ``broker`` defaults to env KARABO_BROKER (else the local RabbitMQ; ``memory://name`` is the
    in-process broker), ``domain`` to env KARABO_DOMAIN (else "karabo").
    """
    kwargs: dict[str, Any] = {}
    if request_timeout is not None:
        kwargs["request_timeout"] = request_timeout
    client = Client(
        instance_id,
        broker=broker,
        domain=domain,
        heartbeat_interval=heartbeat_interval,
        access_level=int(access_level),
        **kwargs,
    )
    return _Connection(client)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a new event loop: uvloop's when it is installed."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        log.debug("uvloop not installed; using the standard event loop")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


# --- proxies ---------------------------------------------------------------------------------------


class _ProxyRequest:
    """What connect_device and get_device return: await it for a proxy that stays connected, or use
    it with ``async with`` to disconnect at the end of the block."""

    def __init__(self, device_id: str, timeout: float | None) -> None:
        self.device_id = _device_id(device_id)
        self.timeout = timeout
        self._link: DeviceLink | None = None

    async def _open(self) -> DeviceLink:
        manager = manager_of(current_instance())
        if self.timeout is None:
            link = await manager.link(self.device_id)
        else:
            link = await _link_when_present(manager.instance, self.device_id, self.timeout)
        link.users += 1
        return link

    async def _pinned(self) -> Proxy:
        link = await self._open()
        link.pinned = True
        return link.proxy

    def __await__(self) -> Generator[Any, None, Proxy]:
        return self._pinned().__await__()

    async def __aenter__(self) -> Proxy:
        self._link = await self._open()
        return self._link.proxy

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._link is not None:
            link, self._link = self._link, None
            await link.manager.release(link)


async def _link_when_present(instance: SignalSlotable, device_id: str, timeout: float) -> DeviceLink:
    """Subscribe, waiting up to ``timeout`` for the device to appear."""
    manager = manager_of(instance)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await manager.link(device_id)
        except NoSuchInstance as exc:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _not_appeared(device_id, timeout) from exc
            if device_id in instance.topology:
                # known but not reachable yet (starting, or the topology lags): try again shortly
                await asyncio.sleep(min(0.05, remaining))
                continue
            try:
                await instance.topology.wait_for(device_id, remaining)
            except TimeoutError:
                raise _not_appeared(device_id, timeout) from None


def _not_appeared(device_id: str, timeout: float) -> NoSuchInstance:
    exc = NoSuchInstance(device_id)
    exc.add_note(f"waited {timeout:g} s for {device_id!r} to appear")
    return exc


def connect_device(device_id: str, *, timeout: float | None = None) -> _ProxyRequest:
    """A live proxy of ``device_id``: ``async with connect_device(id) as proxy`` or ``await ...``.

    It returns once subscribed, so every change after that reaches the proxy. Without ``timeout`` a
    device that does not exist raises NoSuchInstance at once; with it, the device may appear meanwhile.
    """
    return _ProxyRequest(device_id, timeout)


def get_device(device_id: str, *, timeout: float = DEFAULT_GET_DEVICE_TIMEOUT) -> _ProxyRequest:
    """Like :func:`connect_device`, but waits up to ``timeout`` seconds for the device to appear."""
    return _ProxyRequest(device_id, timeout)


async def disconnect_device(proxy: Proxy) -> None:
    """Stop updating a proxy obtained with ``await connect_device(...)`` (``async with`` does it itself)."""
    link = link_of(proxy)
    link.pinned = False
    link.users = max(link.users, 1)
    await link.manager.release(link)


def _device_id(target: Any) -> str:
    if isinstance(target, Proxy | NodeProxy):
        return link_of(target).device_id
    if not isinstance(target, str) or not target:
        raise TypeError(f"expected a device id or a proxy, got {type(target).__name__} {target!r}")
    return target


# --- setting and calling -------------------------------------------------------------------------


def _changes(changes: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    if changes is not None and not isinstance(changes, Mapping):
        raise TypeError(
            f"changes must be a mapping of property paths to values, got {type(changes).__name__}"
        )
    merged = dict(changes or {})
    merged.update(kwargs)
    return merged


async def set_wait(
    target: Proxy | str,
    changes: Mapping[str, Any] | None = None,
    /,
    *,
    timeout: float | None = None,
    **kwargs: Any,
) -> None:
    """Set properties (``set_wait(motor, velocity=2)`` or ``set_wait(motor, {"a.b": 1})``) as one
    atomic change and return when the device applied it (and the proxy shows it).

    Client-side validation raises the same ReconfigurationError the device would, before sending.
    """
    values = _changes(changes, kwargs)
    if isinstance(target, Proxy):
        await link_of(target).set_wait(values, timeout)
        return
    await current_instance().request(_device_id(target), "set", values, timeout=timeout)


async def set_no_wait(
    target: Proxy | str, changes: Mapping[str, Any] | None = None, /, **kwargs: Any
) -> None:
    """Send a change without waiting for it to be applied (a refusal is logged)."""
    values = _changes(changes, kwargs)
    if isinstance(target, Proxy):
        link = link_of(target)
        link.check_usable()
        link.outbox.update(link.validate(values))
        link.send_outbox()
        return
    await current_instance().call(_device_id(target), "set", values)


async def execute(target: Proxy | str, slot: str, *args: Any, timeout: float | None = None) -> Any:
    """Call a slot and return its result: ``await execute(motor, "move")``."""
    if isinstance(target, Proxy):
        return await link_of(target).call_slot(slot, args, timeout)
    return await current_instance().request(_device_id(target), slot, *args, timeout=timeout)


# --- waiting -------------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], Any], timeout: float | None = None) -> Any:
    """Wait until ``condition()`` is true, re-checking whenever a proxy changes; returns its value.

    Raises TimeoutError after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    topology = _current_topology()
    listener = topology.add_listener(_wake_on_topology) if topology is not None else None
    try:
        while True:
            result = condition()
            if result:
                return result
            try:
                await next_change(deadline)
            except TimeoutError:
                raise TimeoutError(f"condition not met within {timeout:g} s") from None
    finally:
        if topology is not None and listener is not None:
            topology.remove_listener(listener)


def _current_topology() -> Topology | None:
    """Conditions may ask the topology too (``"motor-1" in get_devices()``), so its events wake them."""
    try:
        return current_instance().topology
    except RuntimeError:
        return None  # waiting on proxies alone needs no instance


def _wake_on_topology(event: TopologyEvent) -> None:
    notify_change()


async def wait_until_new(value: Any, path: str | None = None, *, timeout: float | None = None) -> Any:
    """Wait for the next update of a property after this call: ``await wait_until_new(motor.position)``
    (or ``wait_until_new(motor, "position")``); returns the new value.

    Raises DeviceGone if the device dies meanwhile, TimeoutError after ``timeout`` seconds.
    """
    link, where = _source(value, path)
    return await link.next_value(where, timeout)


def _source(value: Any, path: str | None) -> tuple[DeviceLink, str]:
    if isinstance(value, Proxy | NodeProxy) and path is not None:
        link = link_of(value)
        prefix = object.__getattribute__(value, "_prefix")
        full = f"{prefix}.{path}" if prefix else path
        if full not in link.require_schema().properties:
            raise AttributeError(f"device {link.device_id!r} has no property {full!r}")
        return link, full
    if isinstance(value, KaraboValue) and value.source is not None:
        proxy, where = value.source
        return link_of(proxy), where
    raise TypeError(
        "wait_until_new takes a proxy property (wait_until_new(motor.position)) or a proxy and a path"
        f" (wait_until_new(motor, 'position')), got {type(value).__name__}"
    )


# --- locks ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def lock(target: Proxy | str) -> AsyncIterator[Proxy | str]:
    """Hold the device's lock for the block: others get DeviceLocked ("... is locked by ...").

    The device releases it by itself if this instance dies.
    """
    instance = current_instance()
    device_id = _device_id(target)
    await instance.request(device_id, "lock", instance.instance_id)
    try:
        yield target
    finally:
        try:
            await instance.request(device_id, "unlock")
        except (NoSuchInstance, DeviceGone) as exc:
            log.info("unlock skipped: device gone", device=device_id, reason=str(exc))


# --- the domain ----------------------------------------------------------------------------------


class TopologyView(dict[str, dict[str, Any]]):
    """A snapshot ``{instance_id: info}``; also awaitable, so ``await get_topology()`` reads like the
    other client functions (the data is local: nothing is waited for)."""

    def __await__(self) -> Generator[Any, None, TopologyView]:
        return self
        yield  # makes this a generator: awaiting returns at once


class IdList(list[str]):
    """A sorted list of instance ids; also awaitable, like :class:`TopologyView`."""

    def __await__(self) -> Generator[Any, None, IdList]:
        return self
        yield


def get_topology() -> TopologyView:
    """``{instance_id: info}`` of every live instance (type, class, server, host, status, ...)."""
    return TopologyView({iid: dict(info) for iid, info in current_instance().topology.items()})


def get_servers() -> IdList:
    """Ids of the live device servers."""
    return IdList(sorted(current_instance().topology.of_type("server")))


def get_devices(server: str | None = None) -> IdList:
    """Ids of the live devices, of one server if given."""
    devices = current_instance().topology.of_type("device")
    return IdList(sorted(d for d, info in devices.items() if server is None or info.get("server") == server))


async def get_classes(server: str) -> list[str]:
    """The device classes a server offers."""
    result = await current_instance().request(_device_id(server), "get_classes")
    return list(result)


async def get_schema(target: Proxy | str) -> Schema:
    """A device's schema (its class's, plus what it added at run time)."""
    if isinstance(target, Proxy):
        return link_of(target).require_schema()
    return Schema.from_document(await current_instance().request(_device_id(target), "get_schema"))


async def get_class_schema(server: str, class_id: str) -> Schema:
    """The schema of a class a server offers, before any device of it exists."""
    doc = await current_instance().request(_device_id(server), "get_class_schema", class_id)
    return Schema.from_document(doc)


async def get_configuration(target: Proxy | str) -> Hash:
    """Every property value of a device, with "timestamp" and "alarm" attributes."""
    result = await current_instance().request(_device_id(target), "get_configuration")
    if not isinstance(result, Hash):
        raise TypeError(f"{_device_id(target)!r} answered get_configuration with {type(result).__name__}")
    return result


async def instantiate(
    server: str,
    class_id: str,
    device_id: str | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    timeout: float = INSTANTIATE_TIMEOUT,
) -> str:
    """Start a device on a server; returns its id once it is up (and known to this instance)."""
    instance = current_instance()
    started = await instance.request(
        _device_id(server), "instantiate", class_id, device_id, dict(config or {}), timeout=timeout
    )
    try:
        await instance.topology.wait_for(str(started), TOPOLOGY_SETTLE)
    except TimeoutError:
        log.warning("instantiated device not yet in the topology", device=started)
    return str(started)


async def shutdown(target: Proxy | str, *, timeout: float | None = None) -> None:
    """Shut a device (or a server, with its devices) down; returns once it is gone."""
    instance = current_instance()
    device_id = _device_id(target)
    await instance.request(device_id, "shutdown", timeout=timeout)
    try:
        await instance.topology.wait_for(
            device_id, TOPOLOGY_SETTLE if timeout is None else timeout, gone=True
        )
    except TimeoutError:
        log.warning("shut down instance still in the topology", instance=device_id)


__all__ = [
    "Client",
    "connect",
    "connect_device",
    "disconnect_device",
    "execute",
    "get_classes",
    "get_class_schema",
    "get_configuration",
    "get_device",
    "get_devices",
    "get_schema",
    "get_servers",
    "get_topology",
    "instantiate",
    "lock",
    "run",
    "set_no_wait",
    "set_wait",
    "shutdown",
    "wait_until",
    "wait_until_new",
]
