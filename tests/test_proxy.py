"""Device proxies: typed values with timestamps, validation before sending, batching, following the
device's life and the broker link."""

from __future__ import annotations

import asyncio
import enum
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import karabo_async as ka
from karabo_async import (
    AlarmCondition,
    DeviceGone,
    DeviceLocked,
    Node,
    NoSuchInstance,
    Property,
    Proxy,
    ReconfigurationError,
    SlotRefused,
    State,
    Timestamp,
    connect_device,
    set_wait,
    slot,
    wait_until,
    wait_until_new,
)
from karabo_async.device import Device
from karabo_async.values import FloatValue, KaraboValue


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


class Settings(Node):
    gain: float = Property(1.0, ge=0.0, le=10.0)
    label: str = Property("a", options=("a", "b"))


class Motor(Device):
    """A motor for the proxy tests."""

    velocity: float = Property(1.0, ge=0.01, le=10.0)
    target_position: float = Property(0.0, ge=-100.0, le=100.0, allowed_states=[State.ON])
    position: float = Property(0.0, readonly=True, warn_high=90.0, alarm_high=99.0)
    counter: int = Property(0, readonly=True)
    enabled: bool = Property(True)
    mode: Mode = Property(Mode.FAST)
    tags: list[str] = Property([])
    trace: np.ndarray = Property(np.zeros(3), dtype="float64", readonly=True)
    settings: Settings = Property()
    sets: int = Property(0, readonly=True, description="how many set calls were applied")

    async def on_initialization(self) -> None:
        self.state = State.ON

    def on_reconfigure(self, changes: dict[str, Any]) -> None:
        self.sets = self.sets + 1

    @slot(allowed_states=[State.ON])
    async def move(self) -> None:
        self.position = self.target_position

    @slot
    async def send(self, count: int) -> int:
        return count * 2

    @slot
    async def stop(self) -> None:
        self.state = State.STOPPED

    @slot
    async def burst(self, n: int) -> None:
        """Change ``counter`` n times, each in its own loop iteration (its own message)."""
        for _ in range(n):
            self.counter = self.counter + 1
            await asyncio.sleep(0)


class MotorV2(Device):
    """The same id restarted with another schema."""

    velocity: float = Property(1.0)
    brake: bool = Property(False)

    async def on_initialization(self) -> None:
        self.state = State.ON


class RacyMotor(Motor):
    """Changes a property right after taking the configuration snapshot: the change must not be lost."""

    def get_configuration(self) -> ka.Hash:
        config = super().get_configuration()
        self.set_property("counter", 41)
        return config


def memory_url() -> str:
    return f"memory://{uuid.uuid4().hex}"


@pytest.fixture
async def motor_and_proxy(domain: str) -> AsyncIterator[tuple[Motor, Proxy]]:
    url = memory_url()
    motor = Motor({}, device_id="motor-1", broker=url, domain=domain)
    await motor.start_device()
    try:
        async with ka.connect(url, domain), connect_device("motor-1") as proxy:
            yield motor, proxy
    finally:
        await motor.stop_device()


async def test_values_carry_timestamp_alarm_and_compare_as_plain(
    motor_and_proxy: tuple[Motor, Proxy],
) -> None:
    motor, proxy = motor_and_proxy
    motor.set_property("position", 95.0)
    await wait_until(lambda: proxy.position == 95.0, timeout=5)
    position = proxy.position
    assert isinstance(position, float) and isinstance(position, KaraboValue)
    assert position + 1 == 96.0 and position.value == 95.0 and type(position.value) is float
    assert isinstance(position.timestamp, Timestamp)
    assert position.timestamp == motor._stamps["position"]
    assert position.alarm is AlarmCondition.WARN and not position.stale
    assert proxy.alarm_condition == AlarmCondition.WARN
    assert proxy.state == State.ON and proxy.state.is_derived_from(State.NORMAL)
    assert proxy.enabled and proxy.enabled == True  # noqa: E712  (wrapped bool compares as bool)
    assert proxy.mode == Mode.FAST and proxy.mode == "fast" and proxy.mode != Mode.SLOW
    assert proxy.tags == [] and proxy.counter == 0 and isinstance(proxy.counter, int)
    assert np.array_equal(proxy.trace, np.zeros(3)) and proxy.trace.timestamp is not None
    assert proxy.device_id == "motor-1"
    assert proxy.settings.gain == 1.0 and proxy.settings.label == "a"
    assert f"{proxy.velocity:.2f}" == "1.00" and math.isclose(proxy.velocity, 1.0)


async def test_dir_lists_properties_and_slots(motor_and_proxy: tuple[Motor, Proxy]) -> None:
    _, proxy = motor_and_proxy
    names = dir(proxy)
    for name in ("velocity", "position", "settings", "move", "send", "state", "alive", "stale"):
        assert name in names
    assert dir(proxy.settings) == ["gain", "label"]
    assert "alive" in repr(proxy) and "Motor" in repr(proxy)


async def test_client_side_validation_refuses_before_sending(motor_and_proxy: tuple[Motor, Proxy]) -> None:
    motor, proxy = motor_and_proxy
    cases: dict[str, tuple[str, Any]] = {
        "range": ("velocity", 100.0),
        "type": ("velocity", "fast"),
        "options": ("settings.label", "zzz"),
        "readonly": ("position", 1.0),
        "unknown": ("nope", 1),
    }
    for case, (path, value) in cases.items():
        with pytest.raises(ReconfigurationError, match=path.rsplit(".", 1)[-1]):
            await set_wait(proxy, {path: value})
        assert motor.sets == 0, case
    with pytest.raises(ReconfigurationError, match="velocity"):
        proxy.velocity = -1.0
    with pytest.raises(ReconfigurationError, match="label"):
        proxy.settings.label = "zzz"
    await proxy.stop()
    await wait_until(lambda: proxy.state == State.STOPPED, timeout=5)
    with pytest.raises(ReconfigurationError, match="not allowed in state STOPPED"):
        await set_wait(proxy, target_position=1.0)
    with pytest.raises(SlotRefused, match="move refused"):
        await proxy.move()
    assert motor.sets == 0


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.floats(allow_nan=False), st.text(max_size=5), st.booleans()))
def check_velocity_validation(proxy: Proxy, value: Any) -> None:
    link = ka.proxy.link_of(proxy)
    valid = isinstance(value, float) and 0.01 <= value <= 10.0
    if valid:
        assert link.validate({"velocity": value}) == {"velocity": value}
    else:
        with pytest.raises(ReconfigurationError, match="velocity"):
            link.validate({"velocity": value})


async def test_validation_matches_the_declared_range(motor_and_proxy: tuple[Motor, Proxy]) -> None:
    check_velocity_validation(motor_and_proxy[1])


async def test_set_wait_returns_with_the_value_shown(motor_and_proxy: tuple[Motor, Proxy]) -> None:
    motor, proxy = motor_and_proxy
    for i in range(20):
        await set_wait(proxy, target_position=float(i), velocity=1.0 + i / 10)
        assert proxy.target_position == float(i) and motor.target_position == float(i)
        assert proxy.velocity == 1.0 + i / 10
    await set_wait(proxy, {"settings": {"gain": 2.5}})
    assert proxy.settings.gain == 2.5
    assert motor.sets == 21


async def test_assignments_in_one_iteration_travel_as_one_set(motor_and_proxy: tuple[Motor, Proxy]) -> None:
    motor, proxy = motor_and_proxy
    proxy.velocity = 2.0
    proxy.target_position = 3.0
    proxy.settings.gain = 4.0
    await wait_until(lambda: proxy.settings.gain == 4.0 and proxy.sets == 1, timeout=5)
    assert (motor.velocity, motor.target_position, motor.settings.gain, motor.sets) == (2.0, 3.0, 4.0, 1)
    # pending assignments go out with the next set_wait, still as one message
    proxy.velocity = 5.0
    await set_wait(proxy, target_position=6.0)
    assert (proxy.velocity, proxy.target_position, motor.sets) == (5.0, 6.0, 2)


async def test_slots_take_arguments_and_unknown_names_are_named(motor_and_proxy: tuple[Motor, Proxy]) -> None:
    _, proxy = motor_and_proxy
    assert await proxy.send(50) == 100
    assert await ka.execute(proxy, "send", 4) == 8
    await set_wait(proxy, target_position=7.0)
    await proxy.move()
    await wait_until(lambda: proxy.position == 7.0, timeout=5)
    with pytest.raises(AttributeError, match="no property or slot 'mvoe'"):
        await proxy.mvoe()
    with pytest.raises(AttributeError, match="is a slot"):
        proxy.move = 1
    with pytest.raises(ka.NoSuchSlot, match="nope"):
        await ka.execute(proxy, "nope")


async def test_wait_until_new_gets_the_first_update_after_the_call(
    motor_and_proxy: tuple[Motor, Proxy],
) -> None:
    _, proxy = motor_and_proxy
    start = int(proxy.counter)
    burst = asyncio.ensure_future(ka.execute(proxy, "burst", 3))  # three messages, back to back
    first = await wait_until_new(proxy.counter, timeout=5)
    assert first == start + 1  # not a later one, even if they arrived together
    await burst
    await wait_until(lambda: proxy.counter == start + 3, timeout=5)
    for i in range(5):
        bump = asyncio.ensure_future(ka.execute(proxy, "burst", 1))
        value = await wait_until_new(proxy, "counter", timeout=5)
        assert value == start + 4 + i
        await bump
    with pytest.raises(TimeoutError, match="counter"):
        await wait_until_new(proxy.counter, timeout=0.05)
    with pytest.raises(TypeError, match="wait_until_new"):
        await wait_until_new(5.0)


async def test_no_change_after_the_snapshot_is_lost(domain: str) -> None:
    url = memory_url()
    motor = RacyMotor({}, device_id="racy", broker=url, domain=domain)
    await motor.start_device()
    try:
        async with ka.connect(url, domain), connect_device("racy") as proxy:
            await wait_until(lambda: proxy.counter == 41, timeout=5)
            assert motor.counter == 41
    finally:
        await motor.stop_device()


async def test_death_and_return_with_a_new_schema(domain: str) -> None:
    url = memory_url()
    motor = Motor({}, device_id="motor-1", broker=url, domain=domain)
    await motor.start_device()
    async with ka.connect(url, domain), connect_device("motor-1") as proxy:
        assert proxy.alive
        waiter = asyncio.ensure_future(wait_until_new(proxy.velocity, timeout=5))
        await motor.stop_device()
        await wait_until(lambda: not proxy.alive, timeout=5)
        assert proxy.state == State.UNKNOWN and "gone" in repr(proxy)
        with pytest.raises(DeviceGone):
            await waiter
        with pytest.raises(DeviceGone, match="motor-1"):
            await proxy.move()
        with pytest.raises(DeviceGone, match="motor-1"):
            await set_wait(proxy, velocity=2.0)
        with pytest.raises(DeviceGone):
            proxy.velocity = 2.0
        again = MotorV2({"velocity": 3.0}, device_id="motor-1", broker=url, domain=domain)
        await again.start_device()
        try:
            await wait_until(lambda: proxy.alive, timeout=5)
            assert proxy.velocity == 3.0 and proxy.brake == False  # noqa: E712
            assert "brake" in dir(proxy) and "move" not in dir(proxy)
            await set_wait(proxy, brake=True)
            assert again.brake is True
        finally:
            await again.stop_device()


async def test_connect_device_errors_name_the_device(domain: str) -> None:
    async with ka.connect(memory_url(), domain):
        with pytest.raises(NoSuchInstance, match="ghost"):
            await connect_device("ghost")
        with pytest.raises(TypeError, match="device id"):
            connect_device(42)  # type: ignore[arg-type]


async def test_proxies_are_shared_and_released(motor_and_proxy: tuple[Motor, Proxy]) -> None:
    motor, proxy = motor_and_proxy
    async with connect_device("motor-1") as again:
        assert again is proxy
    assert proxy.alive  # the outer block still uses it
    motor.set_property("counter", 5)
    await wait_until(lambda: proxy.counter == 5, timeout=5)


async def test_lock_refuses_others(domain: str) -> None:
    url = memory_url()
    motor = Motor({}, device_id="motor-1", broker=url, domain=domain)
    await motor.start_device()
    other = ka.SignalSlotable("other", broker=url, domain=domain)
    await other.start()
    try:
        async with ka.connect(url, domain) as client, connect_device("motor-1") as proxy:
            async with ka.lock(proxy):
                await wait_until(lambda: proxy.locked_by == client.instance_id, timeout=5)
                await set_wait(proxy, velocity=2.0)  # the holder may
                with pytest.raises(DeviceLocked, match=f"locked by '{client.instance_id}'"):
                    await other.request("motor-1", "set", {"velocity": 3.0})
            await wait_until(lambda: proxy.locked_by == "", timeout=5)
            await other.request("motor-1", "lock")
            await wait_until(lambda: proxy.locked_by == "other", timeout=5)
            with pytest.raises(DeviceLocked, match="locked by 'other'"):
                await set_wait(proxy, velocity=4.0)
            await other.stop()  # the lock ends with its holder
            await wait_until(lambda: proxy.locked_by == "", timeout=10)
            await set_wait(proxy, velocity=4.0)
    finally:
        await other.stop()
        await motor.stop_device()


@pytest.mark.rabbitmq
async def test_proxy_over_rabbitmq(broker_url: str, domain: str) -> None:
    motor = Motor({}, device_id="motor-1", broker=broker_url, domain=domain)
    await motor.start_device()
    try:
        async with ka.connect(broker_url, domain), connect_device("motor-1") as proxy:
            proxy.velocity = 2.0
            proxy.target_position = 3.0
            await wait_until(lambda: proxy.sets == 1 and proxy.target_position == 3.0, timeout=5)
            assert motor.velocity == 2.0
            await set_wait(proxy, target_position=5.0)
            await proxy.move()
            await wait_until(lambda: proxy.position == 5.0, timeout=5)
            assert isinstance(proxy.position, FloatValue)
    finally:
        await motor.stop_device()


@pytest.mark.rabbitmq
@pytest.mark.slow
async def test_broker_restart_marks_stale_then_recovers(private_broker: Any, domain: str) -> None:
    url = private_broker.url
    motor = Motor({}, device_id="motor-1", broker=url, domain=domain, heartbeat_interval=1.0)
    await motor.start_device()
    try:
        async with ka.connect(url, domain, heartbeat_interval=1.0), connect_device("motor-1") as proxy:
            await asyncio.to_thread(private_broker.stop_app)
            try:
                await wait_until(lambda: proxy.stale, timeout=20)
                assert proxy.velocity.stale and "stale" in repr(proxy)
            finally:
                await asyncio.to_thread(private_broker.start_app)
            await wait_until(lambda: not proxy.stale, timeout=30)
            assert proxy.alive and not proxy.velocity.stale
            motor.set_property("counter", 7)  # changes flow again
            await wait_until(lambda: proxy.counter == 7, timeout=10)
            await set_wait(proxy, velocity=3.0)
            assert motor.velocity == 3.0
    finally:
        await motor.stop_device()
