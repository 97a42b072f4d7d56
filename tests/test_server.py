"""DeviceServer: classes and schemas announced, validated instantiation, plugins (hot-added, broken),
failing devices, init files, signals, one heartbeat, deaths reported at once, bad input over the broker.

Fast behaviour runs in-process on the in-process broker; what crosses processes runs the server as a
subprocess (``python -m karabo_async server ...``) against RabbitMQ.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from devices_support import DEVICES_DIR, memory_url, output_of, running, server_command, until

from karabo_async import (
    ConfigurationError,
    DeviceInitializationError,
    InstanceIdInUse,
    ReconfigurationError,
    RemoteError,
    SignalSlotable,
    TopologyEvent,
)
from karabo_async.errors import UnknownClass
from karabo_async.server import DeviceServer

PLUGINS = {
    "strict.py": '''
        from karabo_async import Device, Property

        class NeedsPort(Device):
            """A device that cannot start without being told its port."""
            port: int = Property(mandatory=True, ge=1, le=65535)
            label: str = Property("x")
    ''',
    "faulty.py": '''
        import asyncio
        from karabo_async import Device, slot

        class RaisesInConstructor(Device):
            def __init__(self, *args, **kwargs):
                raise RuntimeError("no such hardware")

        class RaisesInInitialization(Device):
            async def on_initialization(self):
                raise OSError("cable unplugged")

        class Fragile(Device):
            @slot
            def fail_fatally(self):
                """A fault the device cannot survive: it takes itself offline."""
                asyncio.get_running_loop().create_task(self.stop_device())
    ''',
}


def plugin_dir(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir(exist_ok=True)
    for name, text in (PLUGINS if files is None else files).items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


async def local_server(tmp_path: Path, url: str, **kwargs: Any) -> DeviceServer:
    server = DeviceServer(
        "srv",
        plugin_dirs=[DEVICES_DIR, plugin_dir(tmp_path)],
        broker=url,
        domain="d",
        entry_points=False,
        **kwargs,
    )
    await server.start()
    return server


async def test_classes_and_schemas_are_announced_and_answered(tmp_path: Path) -> None:
    url = memory_url()
    server = await local_server(tmp_path, url)
    try:
        async with SignalSlotable("client", broker=url, domain="d") as client:
            info = client.topology["srv"]
            assert info["type"] == "server"
            classes = info["classes"]
            assert {"SimulatedMotor", "SimulatedCamera", "TemperatureSensor", "Clock", "NeedsPort"} <= set(
                classes
            )
            assert "velocity" in json.dumps(classes["SimulatedMotor"])
            schema = await client.request("srv", "get_class_schema", "SimulatedMotor", timeout=5)
            assert schema == classes["SimulatedMotor"]
            assert "SimulatedMotor" in await client.request("srv", "get_classes", timeout=5)
            with pytest.raises(UnknownClass, match="Teleporter"):
                await client.request("srv", "get_class_schema", "Teleporter", timeout=5)
    finally:
        await server.stop()


async def test_instantiate_validates_and_starts_nothing_on_error(tmp_path: Path) -> None:
    url = memory_url()
    server = await local_server(tmp_path, url)
    try:
        async with SignalSlotable("client", broker=url, domain="d") as client:
            assert (
                await client.request("srv", "instantiate", "SimulatedMotor", "motor-1", {}, timeout=5)
                == "motor-1"
            )
            bad: list[tuple[tuple[Any, ...], type[Exception], str]] = [
                (("NeedsPort", "np-1", {}), ConfigurationError, "port"),  # mandatory
                (("NeedsPort", "np-1", {"port": "eighty"}), ConfigurationError, "port"),  # type
                (("NeedsPort", "np-1", {"port": 70000}), ConfigurationError, "port"),  # limit
                (
                    ("NeedsPort", "np-1", {"port": 80, "colour": "red"}),
                    ConfigurationError,
                    "colour",
                ),  # unknown key
                (("SimulatedMotor", "m-2", {"velocity": 50.0}), ConfigurationError, "velocity"),
                (("SimulatedMotor", "m-2", {"position": 3.0}), ConfigurationError, "position"),  # readonly
                (("Teleporter", "t-1", {}), UnknownClass, "Teleporter"),
                (("SimulatedMotor", "motor-1", {}), InstanceIdInUse, "motor-1"),  # duplicate
                (("SimulatedMotor", "m-2", [1, 2]), ConfigurationError, "config"),  # not a mapping
            ]
            for args, error, culprit in bad:
                with pytest.raises(error, match=culprit):
                    await client.request("srv", "instantiate", *args, timeout=5)
            assert await client.request("srv", "get_devices", timeout=5) == ["motor-1"]
            assert not {"np-1", "m-2", "t-1"} & set(client.topology)
            assert (
                await client.request("srv", "instantiate", "NeedsPort", "np-1", {"port": 80}, timeout=5)
                == "np-1"
            )
    finally:
        await server.stop()


async def test_instantiate_refuses_an_id_taken_elsewhere_in_the_domain(tmp_path: Path) -> None:
    url = memory_url()
    server = await local_server(tmp_path, url)
    try:
        async with SignalSlotable("motor-1", broker=url, domain="d") as squatter:
            with pytest.raises(InstanceIdInUse, match="motor-1"):
                await squatter.request("srv", "instantiate", "SimulatedMotor", "motor-1", {}, timeout=5)
            assert server.devices == {}
    finally:
        await server.stop()


async def test_shutdown_device_reports_it_gone(tmp_path: Path) -> None:
    url = memory_url()
    server = await local_server(tmp_path, url)
    try:
        async with SignalSlotable("client", broker=url, domain="d") as client:
            await client.request("srv", "instantiate", "TemperatureSensor", "sensor-1", {}, timeout=5)
            await client.topology.wait_for("sensor-1", timeout=5)
            await client.request("srv", "shutdown_device", "sensor-1", timeout=5)
            await client.topology.wait_for("sensor-1", timeout=1, gone=True)
            assert await client.request("srv", "get_devices", timeout=5) == []
            with pytest.raises(RemoteError, match="sensor-1"):
                await client.request("srv", "shutdown_device", "sensor-1", timeout=5)
    finally:
        await server.stop()


async def test_failing_devices_are_reported_and_the_server_keeps_running(tmp_path: Path) -> None:
    url = memory_url()
    server = await local_server(tmp_path, url)
    try:
        async with SignalSlotable("client", broker=url, domain="d") as client:
            with pytest.raises(
                DeviceInitializationError, match="constructor raised RuntimeError: no such hardware"
            ):
                await client.request("srv", "instantiate", "RaisesInConstructor", "c-1", {}, timeout=5)
            with pytest.raises(
                DeviceInitializationError, match="on_initialization raised OSError: cable unplugged"
            ):
                await client.request("srv", "instantiate", "RaisesInInitialization", "i-1", {}, timeout=5)
            assert "i-1" not in client.topology and "c-1" not in client.topology
            assert await client.request("srv", "get_devices", timeout=5) == []
            assert await client.request("srv", "instantiate", "SimulatedMotor", "m-1", {}, timeout=5) == "m-1"
    finally:
        await server.stop()


async def test_the_death_of_a_device_is_reported_at_once(tmp_path: Path) -> None:
    url = memory_url()
    server = await local_server(tmp_path, url, heartbeat_interval=30.0)  # heartbeats could not tell in time
    try:
        async with SignalSlotable("client", broker=url, domain="d") as client:
            await client.request("srv", "instantiate", "Fragile", "fragile-1", {}, timeout=5)
            await client.request("srv", "instantiate", "SimulatedMotor", "m-1", {}, timeout=5)
            await client.topology.wait_for("fragile-1", timeout=5)
            began = time.monotonic()
            await client.call("fragile-1", "fail_fatally")  # it dies before it could reply
            await client.topology.wait_for("fragile-1", timeout=2, gone=True)
            assert time.monotonic() - began < 1.0
            assert "srv" in client.topology and "m-1" in client.topology
            assert await client.request("srv", "get_devices", timeout=5) == ["m-1"]
    finally:
        await server.stop()


async def test_values_of_the_wrong_type_get_clear_errors_and_disturb_nothing(tmp_path: Path) -> None:
    url = memory_url()
    server = await local_server(tmp_path, url)
    try:
        async with SignalSlotable("client", broker=url, domain="d") as client:
            await client.request("srv", "instantiate", "SimulatedMotor", "m-1", {"velocity": 2.0}, timeout=5)
            motor = server.devices["m-1"]
            bad_sets: list[tuple[Any, str]] = [
                ({"velocity": "fast"}, "velocity"),
                ({"velocity": [1.0]}, "velocity"),
                ({"velocity": None}, "velocity"),
                ({"target_position": {"x": 1}}, "target_position"),
                ({"log_level": "LOUD"}, "log_level"),
                ([("velocity", 3.0)], "mapping"),
                ("velocity=3", "mapping"),
            ]
            for changes, culprit in bad_sets:
                with pytest.raises(ReconfigurationError, match=culprit):
                    await client.request("m-1", "set", changes, timeout=5)
            with pytest.raises(RemoteError, match="TypeError"):
                await client.request("m-1", "move", "now", 3, timeout=5)
            with pytest.raises(RemoteError):
                await client.request("srv", "instantiate", 42, timeout=5)
            with pytest.raises(RemoteError, match="instance id"):
                await client.request("srv", "instantiate", "SimulatedMotor", "bad id!", {}, timeout=5)
            assert motor.velocity == 2.0 and motor.online
            assert await client.request("m-1", "set", {"velocity": 3.0}, timeout=5) == {"velocity": 3.0}
            assert await client.request("srv", "get_devices", timeout=5) == ["m-1"]
    finally:
        await server.stop()


async def test_init_file_starts_valid_entries_and_reports_invalid_ones(tmp_path: Path) -> None:
    url = memory_url()
    server = await local_server(tmp_path, url)
    init = tmp_path / "init.yaml"
    init.write_text(
        textwrap.dedent("""
        devices:
          - {id: motor-1, class: SimulatedMotor, config: {velocity: 2.0}}
          - {id: motor-2, class: SimulatedMotor, config: {velocity: fast}}
          - {id: cam-1, class: NoSuchCamera}
          - {id: np-1, class: NeedsPort, config: {}}
          - {id: bad-1, class: RaisesInConstructor}
          - {id: sensor-1, class: TemperatureSensor, colour: blue}
          - {id: sensor-2, class: TemperatureSensor, config: {setpoint: 19.5}}
        """)
    )
    try:
        results = await server.start_from_file(init)
        assert results["motor-1"] == results["sensor-2"] == "started"
        assert "velocity" in results["motor-2"] and "ConfigurationError" in results["motor-2"]
        assert "NoSuchCamera" in results["cam-1"]
        assert "port" in results["np-1"]
        assert "no such hardware" in results["bad-1"]
        assert "colour" in results["sensor-1"]
        assert sorted(server.devices) == ["motor-1", "sensor-2"]
        assert server.devices["motor-1"].velocity == 2.0
    finally:
        await server.stop()


def test_broken_init_file_names_the_file(tmp_path: Path) -> None:
    from karabo_async.server import load_init_file

    for name, text in (("a.json", "{not json"), ("b.yaml", "devices: 3"), ("c.json", "[]")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigurationError, match=name):
            load_init_file(tmp_path / name)


async def test_plugin_errors_are_reported_not_fatal(tmp_path: Path) -> None:
    url = memory_url()
    folder = plugin_dir(tmp_path, {"broken.py": "raise ImportError('vendor SDK missing')\n", **PLUGINS})
    server = DeviceServer(
        "srv", plugin_dirs=[folder], broker=url, domain="d", entry_points=False, scan_interval=0.05
    )
    await server.start()
    try:
        async with SignalSlotable("client", broker=url, domain="d") as client:
            errors = client.topology["srv"]["plugin_errors"]
            assert "vendor SDK missing" in errors[str(folder / "broken.py")]
            assert "NeedsPort" in client.topology["srv"]["classes"]
            assert await client.request("srv", "get_plugin_errors", timeout=5) == errors
            (folder / "broken.py").write_text(
                "from karabo_async import Device\n\nclass Repaired(Device):\n    pass\n"
            )
            await until(
                lambda: "Repaired" in client.topology["srv"]["classes"], 10, "repaired plugin offered"
            )
            assert client.topology["srv"]["plugin_errors"] == {}
    finally:
        await server.stop()


# --- across processes, on RabbitMQ ------------------------------------------------------------------


async def test_a_plugin_added_while_running_is_offered_without_restart(
    broker_url: str, domain: str, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, {})
    with running(server_command("hot-server", broker_url, domain, plugin_dirs=[folder])):
        async with SignalSlotable("client", broker=broker_url, domain=domain) as client:
            await client.topology.wait_for("hot-server", timeout=30)
            # only installed (entry-point) classes so far, none from the empty folder
            assert "NeedsPort" not in client.topology["hot-server"]["classes"]
            (folder / "strict.py").write_text(textwrap.dedent(PLUGINS["strict.py"]))
            await until(
                lambda: "NeedsPort" in client.topology["hot-server"]["classes"], 10, "new class offered"
            )
            await client.request("hot-server", "instantiate", "NeedsPort", "np-1", {"port": 8080}, timeout=10)
            assert await client.request("np-1", "get", "port", timeout=5) == 8080


def gone_events(client: SignalSlotable) -> dict[str, float]:
    gone: dict[str, float] = {}

    def listener(event: TopologyEvent) -> None:
        if event.kind == "instance_gone":
            gone[event.instance_id] = time.monotonic()

    client.topology.add_listener(listener)
    return gone


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signals_stop_the_server_and_report_its_devices_gone_at_once(
    sig: signal.Signals, broker_url: str, domain: str, tmp_path: Path
) -> None:
    if sig is signal.SIGTERM:
        init = tmp_path / "init.yaml"
        init.write_text(
            "devices:\n"
            "  - {id: motor-1, class: SimulatedMotor, config: {velocity: 2.0}}\n"
            "  - {id: motor-2, class: SimulatedMotor, config: {velocity: 99.0}}\n"
            "  - {id: sensor-1, class: TemperatureSensor}\n"
        )
    else:
        init = tmp_path / "init.json"
        init.write_text(
            json.dumps(
                {
                    "devices": [
                        {"id": "motor-1", "class": "SimulatedMotor", "config": {"velocity": 2.0}},
                        {"id": "motor-2", "class": "SimulatedMotor", "config": {"bogus": 1}},
                        {"id": "sensor-1", "class": "TemperatureSensor", "config": {}},
                    ]
                }
            )
        )
    cmd = server_command("sig-server", broker_url, domain, init=init, heartbeat_interval=10.0)
    with running(cmd) as proc:
        async with SignalSlotable("client", broker=broker_url, domain=domain) as client:
            for device in ("motor-1", "sensor-1", "sig-server"):
                await client.topology.wait_for(device, timeout=30)
            assert await client.request("motor-1", "get", "velocity", timeout=5) == 2.0
            assert "motor-2" not in client.topology
            gone = gone_events(client)
            sent = time.monotonic()
            proc.send_signal(sig)
            async with asyncio.timeout(5):  # heartbeats (10 s) could not tell this quickly
                for device in ("motor-1", "sensor-1", "sig-server"):
                    await client.topology.wait_for(device, gone=True)
            assert all(gone[d] - sent < 3.0 for d in ("motor-1", "sensor-1", "sig-server"))
            await until(lambda: proc.poll() is not None, 10, "the server process to exit")
        assert proc.returncode == 0
        text = output_of(proc)
    assert "motor-1: started" in text
    assert (
        "motor-2:" in text and ("velocity" if sig is signal.SIGTERM else "bogus") in text.split("motor-2:")[1]
    )


async def test_one_heartbeat_for_the_server_and_all_its_devices(broker_url: str, domain: str) -> None:
    interval = 0.2
    connection = await aio_pika.connect(broker_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            f"{domain}.heartbeats", aio_pika.ExchangeType.TOPIC, durable=False
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "heartbeat.*")
        senders: list[str] = []

        async def count(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            senders.append(message.routing_key or "")

        await queue.consume(count, no_ack=True)
        server = DeviceServer(
            "hb-server", classes=[], plugin_dirs=[DEVICES_DIR], broker=broker_url, domain=domain,
            heartbeat_interval=interval, entry_points=False,
        )  # fmt: skip
        async with server:
            await asyncio.gather(
                *(
                    server.instantiate("TemperatureSensor", f"sensor-{i}", {"update_interval": 5.0})
                    for i in range(20)
                )
            )
            assert len(server.devices) == 20
            senders.clear()
            began = time.monotonic()
            await until(lambda: len(senders) >= 5, 10, "five heartbeats")
            elapsed = time.monotonic() - began
        assert set(senders) == {"heartbeat.hb-server"}
        assert len(senders) <= elapsed / interval + 2  # one per interval, not one per device
    finally:
        await connection.close()


def test_an_unreadable_init_file_stops_the_command_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "init.json"
    bad.write_text('{"devices": 3}')
    cmd = server_command("never", "amqp://guest:guest@127.0.0.1:1/", "d", init=bad)  # no broker needed
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and str(bad) in result.stderr
