"""Devices on both backends: validated, stamped, batched property changes; atomic reconfiguration."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from karabo_async import (
    AlarmCondition,
    DeviceInitializationError,
    DeviceLocked,
    Hash,
    Property,
    ReconfigurationError,
    RemoteError,
    SignalSlotable,
    SlotRefused,
    State,
    Timestamp,
    slot,
)
from karabo_async.device import Device, train_clock


class SimulatedMotor(Device):
    """A motor that moves to a target position at a set velocity."""

    velocity: float = Property(1.0, ge=0.01, le=10.0, unit="mm/s", description="Speed of a move")
    target_position: float = Property(0.0, ge=-100.0, le=100.0, unit="mm", allowed_states=[State.ON])
    position: float = Property(0.0, readonly=True, unit="mm", warn_high=90.0, alarm_high=99.0)
    serial_number: str = Property("", init_only=True)

    async def on_initialization(self) -> None:
        self.state = State.ON

    @slot(allowed_states=[State.ON])
    async def move(self) -> None:
        self.position = self.target_position

    @slot
    async def stop(self) -> None:
        self.state = State.STOPPED

    def pre_reconfigure(self, changes: dict[str, Any]) -> bool:
        return changes.get("velocity") != 9.99  # a veto the tests use


class Broken(Device):
    async def on_initialization(self) -> None:
        raise RuntimeError("hardware missing")


@pytest.fixture(params=["memory", "amqp"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return str(request.getfixturevalue("broker_url"))


async def started(url: str, domain: str, config: dict[str, Any] | None = None) -> SimulatedMotor:
    motor = SimulatedMotor(config or {}, device_id="motor-1", broker=url, domain=domain)
    await motor.start_device()
    return motor


async def test_standard_properties_and_initialization(url: str, domain: str) -> None:
    motor = await started(url, domain, {"velocity": 2.0, "serial_number": "SN1"})
    try:
        assert motor.state is State.ON
        assert (motor.device_id, motor.class_id, motor.velocity, motor.serial_number) == (
            "motor-1",
            "SimulatedMotor",
            2.0,
            "SN1",
        )
        assert motor.pid > 0 and motor.host
        async with SignalSlotable("client", broker=url, domain=domain) as client:
            config = await client.request("motor-1", "get_configuration", timeout=5)
            assert isinstance(config, Hash)
            for key in (
                "device_id",
                "class_id",
                "server_id",
                "host",
                "pid",
                "state",
                "status",
                "alarm_condition",
                "locked_by",
                "last_command",
                "log_level",
            ):
                assert key in config
            assert isinstance(config.get_attribute("velocity", "timestamp"), Timestamp)
            schema = await client.request("motor-1", "get_schema", timeout=5)
            assert "velocity" in str(schema) and "move" in str(schema)
    finally:
        await motor.stop_device()


async def test_changes_in_one_iteration_travel_as_one_message_in_order(url: str, domain: str) -> None:
    motor = await started(url, domain)
    try:
        async with SignalSlotable("client", broker=url, domain=domain) as client:
            got: asyncio.Queue[Hash] = asyncio.Queue()
            client.register_slot(got.put_nowait, "on_changed")
            await client.connect("motor-1", "changed", "on_changed")
            motor.status = "one"
            motor.set_property("position", 1.0)
            motor.status = "two"
            changes = await asyncio.wait_for(got.get(), 5)
            assert list(changes.keys()) == ["position", "status"]  # in the order of their last change
            assert changes["status"] == "two" and changes["position"] == 1.0
            assert isinstance(changes.get_attribute("position", "timestamp"), Timestamp)
            assert got.empty()
    finally:
        await motor.stop_device()


async def test_reconfiguration_is_atomic_and_names_the_key(url: str, domain: str) -> None:
    motor = await started(url, domain)
    try:
        async with SignalSlotable("client", broker=url, domain=domain) as client:
            assert await client.request("motor-1", "set", {"velocity": 3.0}, timeout=5) == {"velocity": 3.0}
            bad_cases = {
                "nope": ({"velocity": 4.0, "nope": 1}, "nope"),
                "range": ({"velocity": 4.0, "target_position": 500.0}, "target_position"),
                "type": ({"velocity": "fast"}, "velocity"),
                "readonly": ({"velocity": 4.0, "position": 1.0}, "position"),
                "init_only": ({"serial_number": "x"}, "serial_number"),
                "veto": ({"velocity": 9.99}, "velocity"),
            }
            for case, (changes, key) in bad_cases.items():
                with pytest.raises(ReconfigurationError) as info:
                    await client.request("motor-1", "set", changes, timeout=5)
                assert key in str(info.value), case
                assert motor.velocity == 3.0, case  # nothing applied
            await motor.signalslot.request("motor-1", "stop", timeout=5)
            with pytest.raises(ReconfigurationError, match="target_position"):
                await client.request("motor-1", "set", {"target_position": 1.0}, timeout=5)
    finally:
        await motor.stop_device()


async def test_slot_refused_outside_allowed_states(url: str, domain: str) -> None:
    motor = await started(url, domain)
    try:
        async with SignalSlotable("client", broker=url, domain=domain) as client:
            await client.request("motor-1", "stop", timeout=5)
            assert motor.state is State.STOPPED
            with pytest.raises(SlotRefused, match="STOPPED"):
                await client.request("motor-1", "move", timeout=5)
            assert motor.last_command == "stop"  # the refused call did nothing
    finally:
        await motor.stop_device()


async def test_alarm_condition_follows_limits(url: str, domain: str) -> None:
    motor = await started(url, domain)
    try:
        motor.set_property("position", 95.0)
        assert motor.alarm_condition is AlarmCondition.WARN and motor.alarm_properties == ["position"]
        motor.set_property("position", 99.5)
        assert motor.alarm_condition is AlarmCondition.ALARM
        motor.set_property("position", 1.0)
        assert motor.alarm_condition is AlarmCondition.NONE and motor.alarm_properties == []
    finally:
        await motor.stop_device()


async def test_lock_refuses_others_and_ends_when_holder_dies(url: str, domain: str) -> None:
    motor = await started(url, domain)
    try:
        async with SignalSlotable("other", broker=url, domain=domain) as other:
            async with SignalSlotable("holder", broker=url, domain=domain) as holder:
                await holder.request("motor-1", "lock", timeout=5)
                assert motor.locked_by == "holder"
                with pytest.raises(DeviceLocked, match="holder"):
                    await other.request("motor-1", "set", {"velocity": 2.0}, timeout=5)
                await holder.request("motor-1", "set", {"velocity": 2.0}, timeout=5)
            await motor.signalslot.topology.wait_for("holder", timeout=10, gone=True)
            assert motor.locked_by == ""
            await other.request("motor-1", "set", {"velocity": 3.0}, timeout=5)
    finally:
        await motor.stop_device()


async def test_failing_initialization_takes_device_down(url: str, domain: str) -> None:
    device = Broken({}, device_id="broken-1", broker=url, domain=domain)
    with pytest.raises(DeviceInitializationError, match="hardware missing"):
        await device.start_device()
    assert not device.online


async def test_invalid_initial_configuration_names_every_key() -> None:
    from karabo_async import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        SimulatedMotor({"velocity": 50.0, "bogus": 1, "position": 3.0}, broker="memory://")
    text = str(info.value)
    assert "velocity" in text and "bogus" in text and "position" in text


async def test_train_id_from_clock_ticks() -> None:
    import time

    train_clock.tick(1000, time.time() - 0.25, 0.1)
    try:
        motor = SimulatedMotor({}, broker="memory://trains")
        motor.set_property("position", 2.0)
        assert motor._stamps["position"].train_id >= 1002
    finally:
        train_clock.tick(0, 0.0, 0.0)


async def test_remote_error_from_device_slot(url: str, domain: str) -> None:
    class Faulty(Device):
        seen: list[str] = []

        @slot
        def explode(self) -> None:
            raise ValueError("boom")

        def on_exception(self, slot: str, exc: Exception) -> None:
            type(self).seen.append(f"{slot}:{exc}")

    device = Faulty({}, device_id="faulty-1", broker=url, domain=domain)
    await device.start_device()
    try:
        async with SignalSlotable("client", broker=url, domain=domain) as client:
            with pytest.raises(RemoteError, match="boom"):
                await client.request("faulty-1", "explode", timeout=5)
        assert Faulty.seen == ["explode:boom"]
    finally:
        await device.stop_device()


async def test_changes_made_by_a_slot_arrive_before_its_reply(url: str, domain: str) -> None:
    motor = await started(url, domain)
    try:
        async with SignalSlotable("client", broker=url, domain=domain) as client:
            got: list[Hash] = []
            client.register_slot(got.append, "on_changed")
            await client.connect("motor-1", "changed", "on_changed")
            await client.request("motor-1", "set", {"target_position": 12.0}, timeout=5)
            assert got and got[-1]["target_position"] == 12.0
            await client.request("motor-1", "move", timeout=5)
            assert got[-1]["position"] == 12.0  # delivered before the reply resolved the request
    finally:
        await motor.stop_device()


async def test_reply_of_the_slot_that_stops_its_device_is_delivered(url: str, domain: str) -> None:
    motor = await started(url, domain)
    async with SignalSlotable("client", broker=url, domain=domain) as client:
        assert await client.request("motor-1", "shutdown", timeout=5) is None  # the reply still arrives
        await client.topology.wait_for("motor-1", timeout=10, gone=True)
    assert not motor.online
