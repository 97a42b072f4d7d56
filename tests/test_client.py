"""The client API's module-level functions: for the current instance, across processes, with clear errors."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import karabo_async as ka
from karabo_async import (
    AccessLevel,
    ConfigurationError,
    DeviceServer,
    Hash,
    NoSuchInstance,
    Property,
    ReconfigurationError,
    RemoteError,
    State,
    Timestamp,
    connect_device,
    get_device,
    set_wait,
    slot,
    wait_until,
)
from karabo_async.device import Device

PLUGIN = textwrap.dedent(
    '''
    from karabo_async import Property, State, slot
    from karabo_async.device import Device


    class PluginMotor(Device):
        """A motor living in another process."""

        velocity: float = Property(1.0, ge=0.01, le=10.0)
        target_position: float = Property(0.0, ge=-100.0, le=100.0)
        position: float = Property(0.0, readonly=True)

        async def on_initialization(self) -> None:
            self.state = State.ON

        @slot
        async def move(self) -> None:
            self.position = self.target_position
    '''
)


class Counter(Device):
    """A device for the in-process tests."""

    count: int = Property(0, ge=0, le=1000)

    async def on_initialization(self) -> None:
        self.state = State.ON

    @slot
    def add(self, n: int) -> int:
        self.count = self.count + n
        return int(self.count)


def memory_url() -> str:
    return f"memory://{uuid.uuid4().hex}"


@pytest.fixture
async def server(domain: str) -> AsyncIterator[DeviceServer]:
    async with DeviceServer(
        "srv", classes=[Counter], broker=memory_url(), domain=domain, entry_points=False
    ) as s:
        yield s


def test_run_uses_uvloop_and_connect_makes_the_current_instance() -> None:
    import uvloop

    async def main() -> tuple[type, str]:
        async with ka.connect(memory_url(), "run_test") as client:
            assert ka.signalslot.current_instance() is client
            return type(asyncio.get_running_loop()), client.instance_id

    loop_type, client_id = ka.run(main())
    assert loop_type is uvloop.Loop and client_id


async def test_functions_without_an_instance_say_what_to_do() -> None:
    with pytest.raises(RuntimeError, match=r"karabo_async.connect\(\)"):
        ka.get_devices()


async def test_in_process_server_functions(server: DeviceServer, domain: str) -> None:
    async with ka.connect(server.hub.broker, domain):
        await wait_until(lambda: "srv" in ka.get_servers(), timeout=5)
        assert await ka.get_classes("srv") == ["Counter"]
        schema = await ka.get_class_schema("srv", "Counter")
        assert "count" in schema.properties and "add" in schema.slots
        assert await ka.instantiate("srv", "Counter", "c1", {"count": 3}) == "c1"
        assert ka.get_devices() == ["c1"] and ka.get_devices("srv") == ["c1"] and ka.get_devices("x") == []
        assert ka.get_topology()["c1"]["type"] == "device"
        config = await ka.get_configuration("c1")
        assert isinstance(config, Hash) and config["count"] == 3
        assert isinstance(config.get_attribute("count", "timestamp"), Timestamp)
        assert "count" in (await ka.get_schema("c1")).properties
        assert await ka.execute("c1", "add", 2) == 5
        await set_wait("c1", count=10)
        await ka.set_no_wait("c1", count=11)
        async with connect_device("c1") as c1:
            await wait_until(lambda: c1.count == 11, timeout=5)
            assert await ka.execute(c1, "add", 1) == 12
            await ka.set_no_wait(c1, count=20)
            await wait_until(lambda: c1.count == 20, timeout=5)
            assert (await ka.get_schema(c1)).class_id == "Counter"
            await ka.shutdown("c1")
            assert not c1.alive and c1.state == State.UNKNOWN
        assert ka.get_devices() == []


async def test_get_device_waits_for_the_device_to_appear(server: DeviceServer, domain: str) -> None:
    async with ka.connect(server.hub.broker, domain):
        waiting = asyncio.ensure_future(get_device("late", timeout=10))
        await ka.instantiate("srv", "Counter", "late")
        proxy = await waiting
        assert proxy.alive and proxy.count == 0
        with pytest.raises(NoSuchInstance, match="never") as info:
            await get_device("never", timeout=0.2)
        assert any("waited" in note for note in getattr(info.value, "__notes__", []))


async def test_bad_input_gets_errors_that_name_the_problem(server: DeviceServer, domain: str) -> None:
    async with ka.connect(server.hub.broker, domain):
        with pytest.raises(NoSuchInstance, match="nowhere"):
            await ka.instantiate("nowhere", "Counter", "c2")
        with pytest.raises(RemoteError, match="Nope"):
            await ka.instantiate("srv", "Nope", "c2")
        with pytest.raises(ConfigurationError, match="count"):
            await ka.instantiate("srv", "Counter", "c2", {"count": -1})
        with pytest.raises(ConfigurationError, match="colour"):
            await ka.instantiate("srv", "Counter", "c2", {"colour": "red"})
        await ka.instantiate("srv", "Counter", "c2")
        with pytest.raises(ReconfigurationError, match="count"):
            await set_wait("c2", count="many")
        with pytest.raises(NoSuchInstance, match="ghost"):
            await ka.get_configuration("ghost")
        with pytest.raises(ka.NoSuchSlot, match="fly"):
            await ka.execute("c2", "fly")
        with pytest.raises(TypeError, match="mapping"):
            await set_wait("c2", ["count", 1])  # type: ignore[arg-type]


async def test_access_level_is_checked_before_sending(server: DeviceServer, domain: str) -> None:
    async with ka.connect(server.hub.broker, domain):
        await ka.instantiate("srv", "Counter", "c3")
    observer = ka.connect(server.hub.broker, domain, access_level=AccessLevel.OBSERVER)
    async with observer, connect_device("c3") as c3:
        with pytest.raises(ReconfigurationError, match="access level"):
            await set_wait(c3, count=1)
        with pytest.raises(ka.SlotRefused, match="access level"):
            await c3.add(1)


async def test_device_code_acts_for_itself(domain: str) -> None:
    """Inside a device, the module-level functions act for that device (its id as the caller)."""
    url = memory_url()

    class Watcher(Device):
        seen: str = Property("")

        @slot
        async def look(self, device_id: str) -> str:
            async with connect_device(device_id) as other:
                await set_wait(other, count=7)
                return str(other.count)

    server = DeviceServer("srv2", classes=[Counter, Watcher], broker=url, domain=domain, entry_points=False)
    async with server, ka.connect(url, domain):
        await ka.instantiate("srv2", "Counter", "target")
        await ka.instantiate("srv2", "Watcher", "watcher")
        assert await ka.execute("watcher", "look", "target") == "7"


# --- across processes, over RabbitMQ ---------------------------------------------------------


@pytest.fixture
def plugin_server(broker_url: str, domain: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    (tmp_path / "plugin_motor.py").write_text(PLUGIN)
    env = {**os.environ, "KARABO_BROKER": broker_url, "KARABO_DOMAIN": domain}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "karabo_async",
            "server",
            "--id",
            "remote-srv",
            "--plugin-dir",
            str(tmp_path),
            "--heartbeat-interval",
            "0.5",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()


@pytest.mark.rabbitmq
async def test_a_server_in_another_process(
    plugin_server: subprocess.Popen[bytes], broker_url: str, domain: str
) -> None:
    async with ka.connect(broker_url, domain, heartbeat_interval=0.5):
        await wait_until(lambda: "remote-srv" in ka.get_servers(), timeout=30)
        assert "PluginMotor" in await ka.get_classes("remote-srv")
        await ka.instantiate("remote-srv", "PluginMotor", "motor-1", {"velocity": 2.0})
        async with connect_device("motor-1") as motor:
            assert motor.velocity == 2.0 and motor.velocity.timestamp is not None
            await set_wait(motor, target_position=5.0)
            await motor.move()
            await wait_until(lambda: motor.position == 5.0, timeout=10)
            replacement: Any = asyncio.ensure_future(get_device("motor-2", timeout=20))
            await ka.instantiate("remote-srv", "PluginMotor", "motor-2")
            motor2 = await replacement
            assert motor2.alive
            plugin_server.send_signal(signal.SIGKILL)  # the proxies learn from missing heartbeats
            await wait_until(lambda: not motor.alive and not motor2.alive, timeout=10)
            assert motor.state == State.UNKNOWN
            with pytest.raises(ka.DeviceGone):
                await motor.move()


async def test_topology_functions_work_plain_and_awaited() -> None:
    import karabo_async as ka

    async with ka.connect(broker=f"memory://{uuid.uuid4().hex}", domain="d"):
        plain = ka.get_topology()
        assert plain == await ka.get_topology()
        assert ka.get_devices() == await ka.get_devices() == []
        assert await ka.get_servers() == ka.get_servers()
