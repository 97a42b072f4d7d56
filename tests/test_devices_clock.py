"""Clock from devices/: train ticks at its period; devices elsewhere stamp their values with the train id."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from devices_support import device_class, memory_url, running, server_command, until

from karabo_async import Hash, SignalSlotable, SlotRefused, State, Timestamp
from karabo_async.device import train_clock
from karabo_async.server import DeviceServer

Clock = device_class("clock.py", "Clock")
SimulatedMotor = device_class("motor.py", "SimulatedMotor")


@pytest.fixture(autouse=True)
def no_train_clock_left_behind() -> Iterator[None]:
    yield
    train_clock.tick(0, 0.0, 0.0)


async def test_ticks_arrive_at_the_period_with_consecutive_ids() -> None:
    url = memory_url()
    async with DeviceServer(
        "clock-server", classes=[Clock], broker=url, domain="d", entry_points=False
    ) as server:
        await server.instantiate("Clock", "clock", {"period": 0.02, "first_train_id": 1000})
        ticks: asyncio.Queue[tuple[int, float, float]] = asyncio.Queue()
        async with SignalSlotable("listener", broker=url, domain="d") as listener:
            listener.register_slot(lambda *args: ticks.put_nowait(args), "train_tick")
            got = [await asyncio.wait_for(ticks.get(), 5) for _ in range(10)]
        ids = [t[0] for t in got]
        assert ids == list(range(ids[0], ids[0] + 10)) and ids[0] >= 1000
        assert all(t[2] == 0.02 for t in got)
        gaps = [b[1] - a[1] for a, b in itertools.pairwise(got)]
        assert 0.01 < sum(gaps) / len(gaps) < 0.04
        assert server.devices["clock"].train_id >= ids[-1]


async def test_stop_and_start_resume_with_later_ids() -> None:
    url = memory_url()
    async with DeviceServer(
        "clock-server", classes=[Clock], broker=url, domain="d", entry_points=False
    ) as server:
        await server.instantiate("Clock", "clock", {"period": 0.01, "first_train_id": 5})
        clock = server.devices["clock"]
        async with SignalSlotable("op", broker=url, domain="d") as op:
            await op.request("clock", "stop", timeout=5)
            assert clock.state is State.STOPPED
            stopped_at = clock.train_id
            with pytest.raises(SlotRefused, match="STOPPED"):
                await op.request("clock", "stop", timeout=5)
            await op.request("clock", "start", timeout=5)
            assert clock.state is State.STARTED
            assert clock.train_id > stopped_at


async def test_devices_in_the_process_stamp_the_current_train() -> None:
    url = memory_url()
    async with DeviceServer(
        "srv", classes=[Clock, SimulatedMotor], broker=url, domain="d", entry_points=False
    ) as server:
        await server.instantiate("Clock", "clock", {"period": 0.05, "first_train_id": 77})
        await server.instantiate("SimulatedMotor", "motor-1", {})
        motor, clock = server.devices["motor-1"], server.devices["clock"]
        await until(lambda: train_clock.train_id > 0, 5, "the first tick back through the broker")
        motor.velocity = 2.0
        assert abs(motor._stamps["velocity"].train_id - clock.train_id) <= 1


def init_file(path: Path, devices: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps({"devices": devices}))
    return path


async def test_devices_on_another_server_stamp_the_clocks_train(
    broker_url: str, domain: str, tmp_path: Path
) -> None:
    clock_init = init_file(
        tmp_path / "clock.json", [{"id": "clock", "class": "Clock", "config": {"period": 0.1}}]
    )
    motor_init = init_file(
        tmp_path / "motor.json", [{"id": "motor-1", "class": "SimulatedMotor", "config": {}}]
    )
    with (
        running(server_command("clock-server", broker_url, domain, init=clock_init)),
        running(server_command("motor-server", broker_url, domain, init=motor_init)),
    ):
        async with SignalSlotable("client", broker=broker_url, domain=domain) as client:
            for device in ("clock", "motor-1"):
                await client.topology.wait_for(device, timeout=30)
            clock_train = await client.request("clock", "get", "train_id", timeout=5)
            assert clock_train > 0
            async with asyncio.timeout(10):
                while True:  # the motor's process hears ticks once it is online: stamp until it has
                    await client.request("motor-1", "set", {"velocity": 2.5}, timeout=5)
                    config = await client.request("motor-1", "get_configuration", timeout=5)
                    assert isinstance(config, Hash)
                    stamp = config.get_attribute("velocity", "timestamp")
                    assert isinstance(stamp, Timestamp)
                    if stamp.train_id:
                        break
            now_train = await client.request("clock", "get", "train_id", timeout=5)
            assert clock_train <= stamp.train_id <= now_train + 1
