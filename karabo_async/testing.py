"""Test harness for device authors, registered as a pytest plugin (entry point ``pytest11``).

Fixtures (each gives a factory of async context managers, so a test can start several)::

    async def test_move(device_context):
        async with device_context(MyMotor, {"velocity": 2.0}) as motor:   # a live proxy
            await set_wait(motor, target_position=3.0)
            await motor.move()
            await wait_for_value(motor, "position", 3.0)

    async def test_server(server_context):
        async with server_context(plugin_dirs=["plugins"]) as ctx:
            motor = await ctx.instantiate("MyMotor", "motor-1", {"velocity": 2.0})

By default everything runs in this process on the in-process broker (a fresh one per context, so tests
never see each other); pass ``broker="amqp://..."`` to use RabbitMQ (a fresh domain per context).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from .client import Client, connect, connect_device, wait_until
from .device import Device
from .proxy import Proxy, link_of
from .server import DeviceServer
from .values import unwrap

START_TIMEOUT = 30.0


def _broker(broker: str | None) -> str:
    return broker or f"memory://test-{uuid.uuid4().hex[:12]}"


def _domain(domain: str | None) -> str:
    return domain or f"test_{uuid.uuid4().hex[:12]}"


class DeviceContext:
    """One device on its own server, and a client connected to it; ``async with`` yields its proxy.

    ``device`` is the Device object itself (for white-box checks), ``client`` the connected client,
    ``broker`` and ``domain`` where they talk.
    """

    def __init__(
        self,
        device_class: type[Device],
        config: Mapping[str, Any] | None = None,
        *,
        device_id: str | None = None,
        broker: str | None = None,
        domain: str | None = None,
        heartbeat_interval: float = 1.0,
    ) -> None:
        if not (isinstance(device_class, type) and issubclass(device_class, Device)):
            raise TypeError(f"device_context needs a Device subclass, got {device_class!r}")
        self.device_class = device_class
        self.config = dict(config or {})
        self.device_id = device_id or f"{device_class.__name__}-{uuid.uuid4().hex[:6]}"
        self.broker = _broker(broker)
        self.domain = _domain(domain)
        self.server = DeviceServer(
            f"server-{uuid.uuid4().hex[:8]}",
            classes=[device_class],
            broker=self.broker,
            domain=self.domain,
            heartbeat_interval=heartbeat_interval,
            entry_points=False,
        )
        self._connection = connect(self.broker, self.domain, heartbeat_interval=heartbeat_interval)
        self.client: Client = self._connection.client
        self._proxy_request = connect_device(self.device_id)
        self._device: Device | None = None

    @property
    def device(self) -> Device:
        """The device object (still there after the context ended, offline)."""
        if self._device is None:
            raise RuntimeError("the device is started by `async with` on this context")
        return self._device

    async def __aenter__(self) -> Proxy:
        await self.server.start()
        try:
            await self.server.instantiate(self.device_class.__name__, self.device_id, self.config)
            self._device = self.server.devices[self.device_id]
            await self._connection.__aenter__()
            return await self._proxy_request.__aenter__()
        except BaseException:
            await self._close()
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._proxy_request.__aexit__(exc_type, exc, tb)
        await self._close()

    async def _close(self) -> None:
        try:
            await self.client.stop()
        finally:
            await self.server.stop()


class ServerContext:
    """A device server (plugin folders and/or classes) and a client; ``async with`` yields this object.

    ``instantiate(class_id, device_id, config)`` starts a device and returns its live proxy.
    """

    def __init__(
        self,
        plugin_dirs: Iterable[str | Path] = (),
        *,
        classes: Iterable[type[Device]] = (),
        server_id: str | None = None,
        broker: str | None = None,
        domain: str | None = None,
        heartbeat_interval: float = 1.0,
        scan_interval: float = 0.2,
    ) -> None:
        self.broker = _broker(broker)
        self.domain = _domain(domain)
        self.server_id = server_id or f"server-{uuid.uuid4().hex[:8]}"
        self.server = DeviceServer(
            self.server_id,
            plugin_dirs=plugin_dirs,
            classes=classes,
            broker=self.broker,
            domain=self.domain,
            heartbeat_interval=heartbeat_interval,
            entry_points=False,
            scan_interval=scan_interval,
        )
        self._connection = connect(self.broker, self.domain, heartbeat_interval=heartbeat_interval)
        self.client: Client = self._connection.client

    async def instantiate(
        self, class_id: str, device_id: str | None = None, config: Mapping[str, Any] | None = None
    ) -> Proxy:
        """Start a device on the server (through the broker, as any client would) and return its proxy."""
        started = await self.client.request(
            self.server_id, "instantiate", class_id, device_id, dict(config or {}), timeout=START_TIMEOUT
        )
        return await connect_device(str(started))

    async def __aenter__(self) -> ServerContext:
        await self.server.start()
        try:
            await self._connection.__aenter__()
        except BaseException:
            await self.server.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.client.stop()
        finally:
            await self.server.stop()


async def wait_for_value(proxy: Proxy, path: str, expected: Any, timeout: float = 10.0) -> Any:
    """Wait until ``proxy``'s property ``path`` equals ``expected`` (or, if ``expected`` is callable,
    until ``expected(value)`` is true); returns the value. Fails the test naming the last value seen."""
    link = link_of(proxy)
    link.require_schema()
    matches: Callable[[Any], bool] = expected if callable(expected) else lambda v: bool(unwrap(v) == expected)

    def current() -> Any:
        return link.value(path)

    try:
        await wait_until(lambda: matches(current()), timeout=timeout)
    except TimeoutError:
        want = getattr(expected, "__name__", repr(expected))
        raise AssertionError(
            f"{link.device_id}.{path} is {unwrap(current())!r} after {timeout:g} s, expected {want}"
        ) from None
    return current()


@pytest.fixture
def device_context() -> Callable[..., DeviceContext]:
    """``async with device_context(MyDevice, config) as proxy:``; see :class:`DeviceContext`."""
    return DeviceContext


@pytest.fixture
def server_context() -> Callable[..., ServerContext]:
    """``async with server_context(plugin_dirs=[...]) as ctx:``; see :class:`ServerContext`."""
    return ServerContext


__all__ = ["DeviceContext", "ServerContext", "device_context", "server_context", "wait_for_value"]
