"""TemperatureSensor from devices/: noise around the setpoint, thermal lag, warn and alarm limits."""

from __future__ import annotations

import statistics

import pytest
from devices_support import device_class, memory_url, watching

from karabo_async import AlarmCondition, SignalSlotable, State
from karabo_async.server import DeviceServer

TemperatureSensor = device_class("temperature.py", "TemperatureSensor")


async def started(url: str, domain: str, **config: object) -> tuple[DeviceServer, SignalSlotable]:
    server = DeviceServer(
        "sensor-server", classes=[TemperatureSensor], broker=url, domain=domain, entry_points=False
    )
    await server.start()
    await server.instantiate("TemperatureSensor", "sensor-1", config)
    client = SignalSlotable("client", broker=url, domain=domain)
    await client.start()
    return server, client


async def test_readings_scatter_around_the_setpoint() -> None:
    server, client = await started(
        memory_url(), "d", setpoint=21.0, noise=0.2, time_constant=0.0, update_interval=0.01
    )
    try:
        assert server.devices["sensor-1"].state is State.MONITORING
        async with watching(client, "sensor-1") as watch:
            await watch.until(lambda w: len(w.values_of("temperature")) >= 40)
        readings = watch.values_of("temperature")
        assert statistics.mean(readings) == pytest.approx(21.0, abs=0.15)
        assert 0.05 < statistics.stdev(readings) < 0.5
    finally:
        await client.stop()
        await server.stop()


async def test_reading_lags_behind_a_new_setpoint() -> None:
    server, client = await started(memory_url(), "d", setpoint=20.0, noise=0.0, time_constant=10.0)
    sensor = server.devices["sensor-1"]
    try:
        sensor.setpoint = 30.0
        after_one_tau = sensor.next_reading(10.0)
        assert after_one_tau == pytest.approx(20.0 + 10.0 * (1 - 0.36788), abs=0.01)
        assert sensor.next_reading(1000.0) == pytest.approx(30.0)
    finally:
        await client.stop()
        await server.stop()


@pytest.mark.parametrize("backend", ["memory", "amqp"])
async def test_limits_raise_warn_and_alarm(backend: str, request: pytest.FixtureRequest) -> None:
    url = memory_url() if backend == "memory" else str(request.getfixturevalue("broker_url"))
    domain = request.getfixturevalue("domain")
    server, client = await started(url, domain, noise=0.0, time_constant=0.0, update_interval=0.01)
    try:
        async with watching(client, "sensor-1") as watch:
            for setpoint, alarm in (
                (32.0, "warn"),
                (45.0, "alarm"),
                (10.0, "warn"),
                (0.0, "alarm"),
                (22.0, "none"),
            ):
                await client.request("sensor-1", "set", {"setpoint": setpoint}, timeout=5)
                await watch.until(lambda w, a=alarm: w.latest.get("alarm_condition", "none") == a)  # type: ignore[misc]
                raised = [] if alarm == "none" else ["temperature"]
                await watch.until(lambda w, r=raised: w.latest.get("alarm_properties") == r)  # type: ignore[misc]
        sensor = server.devices["sensor-1"]
        assert sensor.alarm_condition is AlarmCondition.NONE
    finally:
        await client.stop()
        await server.stop()
