"""SimulatedMotor from devices/: moves over time, stops, soft limits, alarms; on both brokers."""

from __future__ import annotations

import time

import pytest
from devices_support import device_class, memory_url, until, watching

from karabo_async import AlarmCondition, RemoteError, SignalSlotable, SlotRefused, State
from karabo_async.errors import ReconfigurationError
from karabo_async.server import DeviceServer

SimulatedMotor = device_class("motor.py", "SimulatedMotor")


async def started(url: str, domain: str, **config: object) -> tuple[DeviceServer, SignalSlotable]:
    server = DeviceServer(
        "motor-server", classes=[SimulatedMotor], broker=url, domain=domain, entry_points=False
    )
    await server.start()
    await server.instantiate("SimulatedMotor", "motor-1", config)
    client = SignalSlotable("client", broker=url, domain=domain)
    await client.start()
    return server, client


async def stopped(server: DeviceServer, client: SignalSlotable) -> None:
    await client.stop()
    await server.stop()


async def test_move_goes_in_small_steps_at_velocity() -> None:
    server, client = await started(memory_url(), "d", velocity=10.0, step_interval=0.01)
    try:
        async with watching(client, "motor-1") as watch:
            await client.request("motor-1", "set", {"target_position": 2.0}, timeout=5)
            began = time.monotonic()
            await client.request("motor-1", "move", timeout=5)
            await watch.until(lambda w: w.latest.get("state") == "ON" and w.latest.get("position") == 2.0)
            took = time.monotonic() - began
            positions = watch.values_of("position")
            assert "MOVING" in watch.values_of("state")
            assert len(positions) >= 5, positions  # many small steps, not a jump
            assert positions == sorted(positions) and positions[-1] == 2.0
            assert 0.15 <= took < 2.0  # 2 mm at 10 mm/s
            assert "at 2.0 mm" in watch.latest["status"]
    finally:
        await stopped(server, client)


async def test_stop_halts_a_move_where_it_is() -> None:
    server, client = await started(memory_url(), "d", velocity=5.0, step_interval=0.01)
    motor = server.devices["motor-1"]
    try:
        async with watching(client, "motor-1") as watch:
            await client.request("motor-1", "set", {"target_position": 50.0}, timeout=5)
            await client.request("motor-1", "move", timeout=5)
            with pytest.raises(ReconfigurationError, match=r"target_position.*MOVING"):
                await client.request("motor-1", "set", {"target_position": 1.0}, timeout=5)
            await watch.until(lambda w: (w.latest.get("position") or 0.0) > 0.2)
            await client.request("motor-1", "stop", timeout=5)
            assert motor.state is State.ON
            halted = motor.position
            assert 0.2 < halted < 50.0
            await client.request("motor-1", "get_configuration", timeout=5)  # a round trip later: still
            assert motor.position == halted and motor._move_task is None
    finally:
        await stopped(server, client)


async def test_hitting_a_soft_limit_is_an_error_with_an_alarm() -> None:
    server, client = await started(memory_url(), "d", velocity=10.0, step_interval=0.01)
    motor = server.devices["motor-1"]
    try:
        motor.set_property("position", 98.0)  # as an encoder would report it
        async with watching(client, "motor-1") as watch:
            await client.request("motor-1", "set", {"high_limit": 99.5, "target_position": 100.0}, timeout=5)
            await client.request("motor-1", "move", timeout=5)
            await watch.until(lambda w: w.latest.get("state") == "ERROR")
            assert motor.position == 99.5
            assert "high soft limit reached at 99.5" in motor.status
            assert motor.alarm_condition is AlarmCondition.ALARM and motor.alarm_properties == ["position"]
            await until(lambda: client.topology["motor-1"]["status"] == "error", what="status in topology")
            with pytest.raises(SlotRefused, match="ERROR"):
                await client.request("motor-1", "move", timeout=5)
            await client.request("motor-1", "reset", timeout=5)
            assert motor.state is State.ON
    finally:
        await stopped(server, client)


async def test_limits_must_stay_ordered() -> None:
    server, client = await started(memory_url(), "d")
    motor = server.devices["motor-1"]
    try:
        with pytest.raises(RemoteError, match=r"low_limit 10\.0 must be below high_limit 5\.0"):
            await client.request("motor-1", "set", {"low_limit": 10.0, "high_limit": 5.0}, timeout=5)
        assert (motor.low_limit, motor.high_limit) == (-95.0, 95.0)
    finally:
        await stopped(server, client)


async def test_move_over_rabbitmq(broker_url: str, domain: str) -> None:
    server, client = await started(broker_url, domain, velocity=10.0, serial_number="SN-7")
    try:
        async with watching(client, "motor-1") as watch:
            await client.request("motor-1", "set", {"target_position": -1.0}, timeout=5)
            await client.request("motor-1", "move", timeout=5)
            await watch.until(lambda w: w.latest.get("state") == "ON" and w.latest.get("position") == -1.0)
            assert "MOVING" in watch.values_of("state")
        assert await client.request("motor-1", "get", "serial_number", timeout=5) == "SN-7"
    finally:
        await stopped(server, client)
