"""SimulatedCamera from devices/: frames at the set rate while ACQUIRING, exposure and gain, low CPU."""

from __future__ import annotations

import time

import numpy as np
import pytest
from devices_support import device_class, memory_url, until, watching

from karabo_async import Hash, ReconfigurationError, SignalSlotable, State
from karabo_async.server import DeviceServer

SimulatedCamera = device_class("camera.py", "SimulatedCamera")


async def started(url: str, domain: str, **config: object) -> tuple[DeviceServer, SignalSlotable]:
    server = DeviceServer(
        "camera-server", classes=[SimulatedCamera], broker=url, domain=domain, entry_points=False
    )
    await server.start()
    await server.instantiate("SimulatedCamera", "camera-1", config)
    client = SignalSlotable("viewer", broker=url, domain=domain)
    await client.start()
    return server, client


@pytest.mark.parametrize("backend", ["memory", "amqp"])
async def test_acquire_publishes_frames_at_the_frame_rate(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = memory_url() if backend == "memory" else str(request.getfixturevalue("broker_url"))
    domain = request.getfixturevalue("domain")
    server, client = await started(url, domain, width=32, height=16, frame_rate=50.0)
    try:
        async with watching(client, "camera-1") as watch:
            began = time.monotonic()
            await client.request("camera-1", "acquire", timeout=5)
            await watch.until(lambda w: len(w.values_of("image")) >= 10)
            took = time.monotonic() - began
            await client.request("camera-1", "stop", timeout=5)
        frames = watch.values_of("image")
        assert 0.15 <= took < 2.0, took  # 10 frames at 50 Hz
        first = frames[0]
        assert isinstance(first, Hash) and first["encoding"] == "GRAY"
        assert first["data"].shape == (16, 32) and first["data"].dtype == np.uint16
        numbers = [f["metadata"]["frame"] for f in frames]
        assert numbers == list(range(1, len(frames) + 1))
        counts = watch.values_of("frame_count")
        assert counts[-1] == len(frames) and counts == sorted(counts)
        camera = server.devices["camera-1"]
        assert camera.state is State.ON and camera._acquisition is None
    finally:
        await client.stop()
        await server.stop()


async def test_gain_and_exposure_scale_the_signal() -> None:
    server, client = await started(memory_url(), "d", width=64, height=64)
    camera = server.devices["camera-1"]
    try:
        dim = camera.make_frame(1).astype(float)
        camera.gain = 2.0
        bright = camera.make_frame(1).astype(float)
        camera.exposure = 0.015
        brighter = camera.make_frame(1).astype(float)
        peak = (32, 32)
        background = 100.0  # the mean dark level
        assert (bright[peak] - background) / (dim[peak] - background) == pytest.approx(2.0, rel=0.05)
        assert (brighter[peak] - background) / (dim[peak] - background) == pytest.approx(3.0, rel=0.05)
        assert abs(float(dim[0:4, 0:4].mean()) - background) < 30  # corners stay dark
        camera.set_properties({"gain": 100.0, "exposure": 1.0})
        assert camera.make_frame(2).max() == 65535  # saturates, never wraps around
    finally:
        await client.stop()
        await server.stop()


async def test_geometry_is_fixed_while_acquiring() -> None:
    server, client = await started(memory_url(), "d", width=16, height=16, frame_rate=20.0)
    try:
        await client.request("camera-1", "acquire", timeout=5)
        with pytest.raises(ReconfigurationError, match=r"width.*ACQUIRING"):
            await client.request("camera-1", "set", {"width": 32}, timeout=5)
        await client.request("camera-1", "set", {"gain": 3.0}, timeout=5)  # allowed while acquiring
        await client.request("camera-1", "stop", timeout=5)
        await client.request("camera-1", "set", {"width": 32}, timeout=5)
        with pytest.raises(ReconfigurationError, match="width"):
            await client.request("camera-1", "set", {"width": 5000}, timeout=5)
    finally:
        await client.stop()
        await server.stop()


async def test_acquisition_at_10_hz_costs_little_cpu() -> None:
    server, client = await started(memory_url(), "d", width=256, height=256, frame_rate=10.0)
    camera = server.devices["camera-1"]
    try:
        cpu = time.process_time()
        await client.request("camera-1", "acquire", timeout=5)
        await until(
            lambda: camera.frame_count >= 10, 5, "10 frames"
        )  # a poll, not a subscriber: its cost is not measured
        used = time.process_time() - cpu
        await client.request("camera-1", "stop", timeout=5)
        assert used < 0.3, f"10 frames of 256x256 took {used:.3f} s of CPU over about 1 s"
    finally:
        await client.stop()
        await server.stop()
