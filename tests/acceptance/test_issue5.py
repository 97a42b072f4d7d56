"""Acceptance scenarios for issue 5: point-to-point data pipelines, read from the issue's own words.

The issue's example devices are used as written (Camera with ``output = OutputChannel()`` writing
``Hash(image=frame, frame_id=7)``; Processor with ``InputChannel(data_distribution="copy",
on_slowness="drop", max_queue_length=2)``), driven the way a user would: ``ka.instantiate`` with
``{"input.connected_output_channels": ["camera-1:output"]}``, ``await proxy.send(50)`` through
``connect_device``, counters read as properties of the proxy.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import struct
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import karabo_async as ka
from karabo_async import Device, Hash, InputChannel, OutputChannel, Property, State, slot

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "tests" / "pipeline_plugins"


async def until(check: Callable[[], Any], what: str, seconds: float = 10.0) -> None:
    """Poll a condition (sync or async) until it holds: for values published by other tasks/processes."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.02)


# --- the issue's example, verbatim ------------------------------------------------------------------


class Camera(Device):
    output = OutputChannel()  # schema of what it sends may be declared

    async def acquire_one(self, frame):  # type: ignore[no-untyped-def]
        await self.output.write(Hash(image=frame, frame_id=7), timestamp=None)  # timestamp with train id
        # self.output.write_end_of_stream() at the end of a run


class Processor(Device):
    input = InputChannel(data_distribution="copy", on_slowness="drop", max_queue_length=2)

    @input.on_data
    async def handle(self, data: Hash, meta) -> None:  # type: ignore[no-untyped-def]  # meta: source, timestamp, train id
        ...

    @input.on_end_of_stream
    async def eos(self, meta) -> None: ...  # type: ignore[no-untyped-def]


# --- the same, with slots to drive them and handlers that record --------------------------------------


class RunCamera(Camera):
    """The example camera plus slots: ``send(n)`` acquires n frames (frame i is an image full of i)."""

    elements: int = Property(256, init_only=True, description="uint32 elements per image")
    sent: int = Property(0, readonly=True)

    async def on_initialization(self) -> None:
        self.state = State.ON

    @slot
    async def send(self, n: int) -> int:
        for _ in range(n):
            await self.acquire_one(np.full(self.elements, self.sent, np.uint32))
            self.sent += 1
        return n

    @slot
    def end_run(self) -> None:
        # As the issue's comment writes it: no await.
        self.output.write_end_of_stream()

    @slot
    async def end_run_awaited(self) -> None:
        await self.output.write_end_of_stream()

    @slot
    async def send_then_end(self, n: int) -> None:
        await self.send(n)
        self.output.write_end_of_stream()  # not awaited, then the next run starts at once
        await self.send(1)


class Recorder(Device):
    """Records what arrives; ``gate`` closed makes the handler slow (it waits inside)."""

    input = InputChannel(data_distribution="copy", on_slowness="drop", max_queue_length=2)
    eos_count: int = Property(0, readonly=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: list[int] = []
        self.events: list[int | str] = []  # frame numbers and "EOS", in the order the handlers ran
        self.metas: list[Any] = []
        self.eos_metas: list[Any] = []
        self.writable: list[bool] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.inside = asyncio.Event()

    async def on_initialization(self) -> None:
        self.state = State.ON

    @input.on_data
    async def handle(self, data: Hash, meta) -> None:  # type: ignore[no-untyped-def]
        self.inside.set()
        await self.gate.wait()
        self.keep(data)
        image = data["image"]
        assert image.size > 0 and int(data["frame_id"]) in (
            7,
            int(image[0]),
        )  # the example's constant, or the frame number
        assert bool((image == image[0]).all())
        self.frames.append(int(image[0]))
        self.events.append(int(image[0]))
        self.writable.append(bool(image.flags.writeable))
        self.metas.append(meta)

    def keep(self, data: Hash) -> None:
        """Subclasses may keep what they were handed."""

    @input.on_end_of_stream
    async def eos(self, meta) -> None:  # type: ignore[no-untyped-def]
        self.eos_metas.append(meta)
        self.events.append("EOS")
        self.eos_count += 1


def recorder(name: str, policy: str = "drop", distribution: str = "copy", queue: int = 2) -> type[Recorder]:
    """A Recorder class whose input has other defaults (each class declares its own channel)."""

    class R(Recorder):
        input = InputChannel(data_distribution=distribution, on_slowness=policy, max_queue_length=queue)  # type: ignore[arg-type]

        @input.on_data
        async def handle(self, data: Hash, meta) -> None:  # type: ignore[no-untyped-def]
            await Recorder.handle(self, data, meta)

        @input.on_end_of_stream
        async def eos(self, meta) -> None:  # type: ignore[no-untyped-def]
            await Recorder.eos(self, meta)

    R.__name__ = R.__qualname__ = name
    return R


QueueRecorder = recorder("QueueRecorder", "queue_drop", queue=2)
WaitRecorder = recorder("WaitRecorder", "wait")
SharedRecorder = recorder("SharedRecorder", "wait", "shared")


class FrameData(ka.Node):
    gain: float = Property(1.0, description="detector gain")
    frame_id: int = Property(0)


class DeclaredCamera(Device):
    output = OutputChannel(schema=FrameData)  # "schema of what it sends may be declared"


CLASSES: list[type[Device]] = [
    DeclaredCamera,
    Camera,
    Processor,
    RunCamera,
    Recorder,
    QueueRecorder,
    WaitRecorder,
    SharedRecorder,
]


@pytest.fixture
async def world() -> AsyncIterator[ka.DeviceServer]:
    """A server with the example classes and a client, on the in-process broker."""
    url = f"memory://{uuid.uuid4().hex}"
    async with (
        ka.DeviceServer("srv-5", classes=CLASSES, broker=url, domain="issue5", entry_points=False) as srv,
        ka.connect(broker=url, domain="issue5"),
    ):
        yield srv


def dev(srv: ka.DeviceServer, device_id: str) -> Any:
    return srv.devices[device_id]


async def test_the_issue_example_runs_as_written(world: ka.DeviceServer) -> None:
    await ka.instantiate("srv-5", "Camera", "camera-1")
    await ka.instantiate(
        "srv-5", "Processor", "proc-1", {"input.connected_output_channels": ["camera-1:output"]}
    )
    proc, cam = dev(world, "proc-1"), dev(world, "camera-1")
    assert await proc.input.wait_connected("camera-1:output")
    await cam.acquire_one(np.zeros((4, 4), np.uint16))
    await until(lambda: proc.input.stats["processed"] == 1, "the example handler ran")
    cam.output.write_end_of_stream()  # the comment of the example, as written: without await
    await until(lambda: proc.input.stats["end_of_stream_calls"] == 1, "the example's end of stream")


async def test_proxy_send_streams_frames_with_meta_and_counters_as_properties(world: ka.DeviceServer) -> None:
    await ka.instantiate("srv-5", "RunCamera", "camera-1")
    await ka.instantiate(
        "srv-5", "Recorder", "proc-1", {"input.connected_output_channels": ["camera-1:output"]}
    )
    rec = dev(world, "proc-1")
    async with ka.connect_device("camera-1") as camera, ka.connect_device("proc-1") as proc:
        await ka.wait_until(lambda: proc.input.missing_connections == [], timeout=10)
        assert proc.input.connections == ["camera-1:output=local"]
        assert await camera.send(50) == 50
        # "drop": whatever the handler could not take was dropped, counted, never silent; the newest survives.
        await ka.wait_until(lambda: proc.input.received + camera.output.dropped == 50, timeout=10)
        await until(lambda: rec.frames and rec.frames[-1] == 49, "the newest frame")
        await ka.wait_until(lambda: proc.input.processed == len(rec.frames), timeout=10)
        assert camera.output.items_written == 50
        assert proc.input.queue_depth == 0 and camera.output.queue_depth == 0
        assert rec.frames == sorted(rec.frames)
        meta = rec.metas[-1]
        assert meta.source == "camera-1:output"
        assert isinstance(meta.timestamp, ka.Timestamp) and meta.timestamp.train_id == meta.train_id
        await camera.end_run()  # the slot calls write_end_of_stream() without await
        await ka.wait_until(lambda: proc.eos_count == 1, timeout=10)
        await ka.wait_until(lambda: proc.input.end_of_streams == 1, timeout=10)  # published within 0.25 s
        assert rec.eos_metas[0].source == "camera-1:output"


async def test_end_of_stream_without_await_is_scheduled_at_once_and_awaitable(world: ka.DeviceServer) -> None:
    await ka.instantiate("srv-5", "RunCamera", "camera-1")
    await ka.instantiate(
        "srv-5", "WaitRecorder", "rec-1", {"input.connected_output_channels": ["camera-1:output"]}
    )
    cam, rec = dev(world, "camera-1"), dev(world, "rec-1")
    assert await rec.input.wait_connected("camera-1:output")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pending = cam.output.write_end_of_stream()  # not awaited: still happens
        await until(lambda: len(rec.eos_metas) == 1, "end of stream without await")
        assert isinstance(pending, Awaitable)
        await pending  # awaiting it afterwards is fine too
        await cam.output.write_end_of_stream()  # and awaiting at once
        await until(lambda: len(rec.eos_metas) == 2, "awaited end of stream")
        # Not awaited, then the next run written at once: the end of stream stays between them.
        await ka.execute("camera-1", "send_then_end", 3)
        await until(lambda: len(rec.eos_metas) == 3 and len(rec.frames) == 4, "second run")
        del pending
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
    # Everything written before an end of stream arrives before it, everything after, after it.
    assert rec.events == ["EOS", "EOS", 0, 1, 2, "EOS", 3]


async def test_missing_connections_then_connected_by_itself_and_after_a_restart(
    world: ka.DeviceServer,
) -> None:
    await ka.instantiate(
        "srv-5", "Recorder", "proc-1", {"input.connected_output_channels": ["camera-1:output"]}
    )
    rec = dev(world, "proc-1")
    async with ka.connect_device("proc-1") as proc:
        assert proc.input.connected_output_channels == ["camera-1:output"]
        await ka.wait_until(lambda: proc.input.missing_connections == ["camera-1:output"], timeout=10)
        await ka.instantiate("srv-5", "RunCamera", "camera-1")
        await ka.wait_until(lambda: proc.input.missing_connections == [], timeout=10)
        await ka.execute("camera-1", "send", 2)
        await until(lambda: rec.frames == [0, 1], "first run")
        # Closing an output (its device stops) tells its inputs: shown missing, no end of stream.
        await ka.shutdown("camera-1")
        await ka.wait_until(lambda: proc.input.missing_connections == ["camera-1:output"], timeout=10)
        assert rec.eos_metas == []
        await ka.instantiate("srv-5", "RunCamera", "camera-1")
        await ka.wait_until(lambda: proc.input.missing_connections == [], timeout=10)
        await ka.execute("camera-1", "send", 1)
        await until(lambda: rec.frames == [0, 1, 0], "after the restart")
        # Reconfigurable like any nested property, through the proxy.
        await ka.set_wait(proc, {"input.connected_output_channels": []})
        await ka.wait_until(lambda: proc.input.missing_connections == [], timeout=10)
        assert rec.input.connected == []
        with pytest.raises(ka.ReconfigurationError, match="instanceId:channelName"):
            await ka.set_wait(proc, {"input.connected_output_channels": ["no-colon"]})


async def test_declared_item_schema_and_explicit_train_stamped_timestamps(world: ka.DeviceServer) -> None:
    await ka.instantiate("srv-5", "DeclaredCamera", "camera-2")
    info = await ka.execute("camera-2", "get_output_channel_info", "output")
    assert info["channel_id"] == "camera-2:output" and "frame_id" in str(info["schema"])
    await ka.instantiate("srv-5", "RunCamera", "camera-1")
    await ka.instantiate(
        "srv-5", "WaitRecorder", "rec-1", {"input.connected_output_channels": ["camera-1:output"]}
    )
    cam, rec = dev(world, "camera-1"), dev(world, "rec-1")
    assert await rec.input.wait_connected("camera-1:output")
    stamp = ka.Timestamp.now().with_train_id(4711)
    await cam.output.write(Hash(image=np.full(4, 0, np.uint32), frame_id=7), timestamp=stamp)
    await until(lambda: len(rec.metas) == 1, "the stamped item")
    meta = rec.metas[0]
    assert (meta.source, meta.timestamp, meta.train_id) == ("camera-1:output", stamp, 4711)


def test_a_bad_item_schema_is_refused_at_declaration() -> None:
    class Bad(ka.Node):
        image: Any = Property()

    with pytest.raises(ka.SchemaError, match="image"):
        OutputChannel(schema=Bad)


# --- distribution and slowness, through device configuration and proxies ------------------------------


async def camera_and(srv: ka.DeviceServer, *inputs: tuple[str, str, dict[str, Any]], **camera: Any) -> Any:
    """Start camera-1 (config ``camera``) and the inputs ``(class, id, config)`` connected to it."""
    await ka.instantiate("srv-5", "RunCamera", "camera-1", camera)
    for class_id, device_id, config in inputs:
        await ka.instantiate(
            "srv-5", class_id, device_id, {"input.connected_output_channels": ["camera-1:output"], **config}
        )
        assert await dev(srv, device_id).input.wait_connected("camera-1:output")
    return dev(srv, "camera-1")


async def test_copy_drop_keeps_only_the_newest_waiting_and_counts_drops(world: ka.DeviceServer) -> None:
    cam = await camera_and(world, ("Recorder", "rec-1", {"input.credit_window": 1}))
    rec = dev(world, "rec-1")
    rec.gate.clear()
    async with ka.connect_device("camera-1") as camera, ka.connect_device("rec-1") as proxy:
        assert await camera.send(10) == 10  # never waits for the slow input
        await ka.wait_until(lambda: camera.output.dropped == 8 and camera.output.queue_depth == 1, timeout=10)
        rec.gate.set()
        await until(lambda: rec.frames == [0, 9], "the item in the handler and the newest")
        await ka.wait_until(lambda: camera.output.queue_depth == 0 and proxy.input.processed == 2, timeout=10)
        assert camera.output.dropped == 8 and cam.output.stats["inputs"]["rec-1:input"]["dropped"] == 8


async def test_copy_queue_drop_is_bounded_and_drops_the_oldest(world: ka.DeviceServer) -> None:
    await camera_and(world, ("QueueRecorder", "rec-1", {"input.credit_window": 1}))
    rec = dev(world, "rec-1")
    rec.gate.clear()
    async with ka.connect_device("camera-1") as camera:
        await camera.send(10)
        await ka.wait_until(lambda: camera.output.dropped == 7 and camera.output.queue_depth == 2, timeout=10)
        rec.gate.set()
        await until(lambda: rec.frames == [0, 8, 9], "the item in the handler and the newest two")
    # The queue length is a setting of the input, given at instantiation.
    await ka.instantiate(
        "srv-5", "QueueRecorder", "rec-3",
        {"input.connected_output_channels": ["camera-1:output"], "input.max_queue_length": 4,
         "input.credit_window": 1},
    )  # fmt: skip
    rec3 = dev(world, "rec-3")
    assert await rec3.input.wait_connected("camera-1:output")
    await ka.shutdown("rec-1")
    rec3.gate.clear()
    await ka.execute("camera-1", "send", 10)
    rec3.gate.set()
    await until(lambda: rec3.frames == [10, 16, 17, 18, 19], "queue of four")


async def test_copy_wait_is_back_pressure_on_the_writer(world: ka.DeviceServer) -> None:
    await camera_and(world, ("WaitRecorder", "rec-1", {"input.credit_window": 4}))
    rec = dev(world, "rec-1")
    rec.gate.clear()
    sending = asyncio.create_task(ka.execute("camera-1", "send", 10))
    # A credit window, not one item at a time: four items travel before the first is processed.
    await until(lambda: rec.input.stats["received"] == 4, "a window of items in flight")
    done, _ = await asyncio.wait([sending], timeout=0.3)  # bounded look: the writer must be waiting
    assert not done and rec.frames == []
    rec.gate.set()
    assert await asyncio.wait_for(sending, 10) == 10
    await until(lambda: rec.frames == list(range(10)), "every item, in order")
    async with ka.connect_device("camera-1") as camera:
        await ka.wait_until(lambda: camera.output.items_written == 10, timeout=10)
        assert camera.output.dropped == 0


async def shared_pair(srv: ka.DeviceServer, **camera: Any) -> tuple[Any, Any, Any]:
    one = {"input.credit_window": 1}
    cam = await camera_and(srv, ("SharedRecorder", "s-1", one), ("SharedRecorder", "s-2", one), **camera)
    return cam, dev(srv, "s-1"), dev(srv, "s-2")


async def test_shared_each_item_to_exactly_one_balanced_by_readiness(world: ka.DeviceServer) -> None:
    _, s1, s2 = await shared_pair(world, **{"output.no_shared_ready": "wait"})
    await ka.instantiate("srv-5", "Recorder", "copy-1",
                         {"input.connected_output_channels": ["camera-1:output"], "input.on_slowness": "wait"})  # fmt: skip
    copy = dev(world, "copy-1")
    assert await copy.input.wait_connected("camera-1:output")
    await ka.execute("camera-1", "send", 20)
    await until(lambda: len(s1.frames) + len(s2.frames) == 20, "the shared items")
    assert sorted(s1.frames + s2.frames) == list(range(20)) and s1.frames and s2.frames
    await until(lambda: copy.frames == list(range(20)), "the copy input gets every item")
    # Balanced by who is ready: a blocked shared input gets no more than what it can take.
    s1.gate.clear()
    before = len(s1.frames)
    await ka.execute("camera-1", "send", 20)
    s1.gate.set()
    await until(lambda: len(s1.frames) + len(s2.frames) == 40, "every item once")
    assert sorted(s1.frames + s2.frames) == list(range(40))
    assert len(s1.frames) - before <= 2  # the blocked one: its window, not a fair half
    # When one dies the others get everything.
    await ka.shutdown("s-2")
    await ka.execute("camera-1", "send", 5)
    await until(lambda: s1.frames[-5:] == list(range(40, 45)), "the survivor gets all")
    async with ka.connect_device("camera-1") as camera:
        await ka.wait_until(
            lambda: camera.output.connected_inputs == ["copy-1:input", "s-1:input"], timeout=10
        )
        assert camera.output.dropped == 0


async def test_no_shared_input_ready_drop(world: ka.DeviceServer) -> None:
    _, s1, s2 = await shared_pair(world)  # drop is the default
    s1.gate.clear()
    s2.gate.clear()
    async with ka.connect_device("camera-1") as camera:
        assert camera.output.no_shared_ready == "drop"
        await camera.send(10)
        await ka.wait_until(lambda: camera.output.dropped == 8, timeout=10)
        s1.gate.set()
        s2.gate.set()
        await until(lambda: sorted(s1.frames + s2.frames) == [0, 1], "the two sent before none was ready")


async def test_no_shared_input_ready_queue_is_bounded(world: ka.DeviceServer) -> None:
    _, s1, s2 = await shared_pair(
        world, **{"output.no_shared_ready": "queue", "output.shared_queue_length": 3}
    )
    s1.gate.clear()
    s2.gate.clear()
    async with ka.connect_device("camera-1") as camera:
        await camera.send(10)
        await ka.wait_until(lambda: camera.output.dropped == 5 and camera.output.queue_depth == 3, timeout=10)
        s1.gate.set()
        s2.gate.set()
        await until(lambda: sorted(s1.frames + s2.frames) == [0, 1, 7, 8, 9], "the queued newest three")
        await ka.wait_until(lambda: camera.output.queue_depth == 0, timeout=10)


async def test_no_shared_input_ready_wait(world: ka.DeviceServer) -> None:
    _, s1, s2 = await shared_pair(world, **{"output.no_shared_ready": "wait"})
    s1.gate.clear()
    s2.gate.clear()
    sending = asyncio.create_task(ka.execute("camera-1", "send", 10))
    await until(lambda: s1.inside.is_set() and s2.inside.is_set(), "both shared inputs busy")
    done, _ = await asyncio.wait([sending], timeout=0.3)  # bounded look: the writer must be waiting
    assert not done
    s1.gate.set()
    s2.gate.set()
    assert await asyncio.wait_for(sending, 10) == 10
    await until(lambda: sorted(s1.frames + s2.frames) == list(range(10)), "every item exactly once")


async def test_end_of_stream_reaches_every_input_once(world: ka.DeviceServer) -> None:
    await camera_and(
        world,
        ("WaitRecorder", "c-1", {}),
        ("WaitRecorder", "c-2", {}),
        ("SharedRecorder", "s-1", {}),
        ("SharedRecorder", "s-2", {}),
        **{"output.no_shared_ready": "wait"},
    )
    await ka.instantiate("srv-5", "RunCamera", "camera-2")
    await ka.instantiate(
        "srv-5",
        "WaitRecorder",
        "both",
        {"input.connected_output_channels": ["camera-1:output", "camera-2:output"]},
    )
    both = dev(world, "both")
    assert await both.input.wait_connected("camera-1:output") and await both.input.wait_connected(
        "camera-2:output"
    )
    await ka.execute("camera-1", "send", 6)
    await ka.execute("camera-1", "end_run")
    for name in ("c-1", "c-2", "s-1", "s-2"):
        device = dev(world, name)
        await until(lambda: device.eos_count == 1, f"end of stream at {name}")  # noqa: B023
    assert dev(world, "c-1").events == [0, 1, 2, 3, 4, 5, "EOS"]
    # An input on two outputs: its handler runs once, when both have ended.
    await until(lambda: both.frames == list(range(6)), "items at the input on two outputs")
    assert both.eos_count == 0
    await ka.execute("camera-2", "end_run_awaited")
    await until(lambda: both.eos_count == 1, "end of stream once both ended")
    for name in ("c-1", "c-2", "s-1", "s-2", "both"):
        assert dev(world, name).eos_count == 1


# --- the three paths, chosen automatically or forced --------------------------------------------------

BIG = 32 * 1024  # uint32 elements: 128 KiB images, over the 64 KiB shared-memory threshold


class KeepingCamera(RunCamera):
    """Keeps the arrays it sent, to check that the same-process path hands over the very object."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kept: list[Any] = []

    async def acquire_one(self, frame):  # type: ignore[no-untyped-def]
        self.kept.append(frame)
        await super().acquire_one(frame)


class KeepingRecorder(Recorder):
    """Keeps the images it is handed (in-process only: shared-memory views must not be kept)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.images: list[Any] = []

    def keep(self, data: Hash) -> None:
        self.images.append(data["image"])


@pytest.fixture
async def shm_world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[ka.DeviceServer]:
    """Like ``world`` with a shared-memory directory and session of this test's own."""
    directory = Path("/dev/shm") / f"karabo-acc5-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    monkeypatch.setenv("KARABO_SHM_DIR", str(directory))
    monkeypatch.setenv("KARABO_SESSION", f"acc5-{uuid.uuid4().hex[:8]}")
    url = f"memory://{uuid.uuid4().hex}"
    classes = [*CLASSES, KeepingCamera, KeepingRecorder]
    try:
        async with (
            ka.DeviceServer("srv-5", classes=classes, broker=url, domain="issue5", entry_points=False) as srv,
            ka.connect(broker=url, domain="issue5"),
        ):
            yield srv
        # Normal shutdown leaves nothing in the shared-memory directory.
        assert sorted(os.listdir(directory)) == []
    finally:
        for name in os.listdir(directory):
            os.unlink(directory / name)
        directory.rmdir()


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({}, "local"),
        ({"input.transport": "shm"}, "shm"),
        ({"input.transport": "tcp"}, "tcp"),
        ({"input.transport": "local"}, "local"),
    ],
)
async def test_paths_in_one_process_automatic_and_forced(
    shm_world: ka.DeviceServer, config: dict[str, Any], path: str
) -> None:
    await ka.instantiate("srv-5", "KeepingCamera", "camera-1", {"elements": BIG})
    await ka.instantiate(
        "srv-5", "Recorder", "rec-1",
        {"input.connected_output_channels": ["camera-1:output"], "input.on_slowness": "wait", **config},
    )  # fmt: skip
    rec = dev(shm_world, "rec-1")
    async with ka.connect_device("rec-1") as proxy:
        await ka.wait_until(lambda: proxy.input.connections == [f"camera-1:output={path}"], timeout=10)
        await ka.execute("camera-1", "send", 5)
        await until(lambda: rec.frames == list(range(5)), f"items over {path}")
    if path == "local":
        assert rec.writable == [True] * 5  # the writer's own arrays
    elif path == "shm":
        assert rec.writable == [False] * 5  # read-only views of the shared-memory slot
    else:
        assert rec.writable == [True] * 5  # received into a fresh buffer of its own


async def test_same_process_hands_over_the_very_object(shm_world: ka.DeviceServer) -> None:
    await ka.instantiate("srv-5", "KeepingCamera", "camera-1", {"elements": BIG})
    await ka.instantiate(
        "srv-5", "KeepingRecorder", "rec-1", {"input.connected_output_channels": ["camera-1:output"]}
    )
    cam, rec = dev(shm_world, "camera-1"), dev(shm_world, "rec-1")
    assert await rec.input.wait_connected("camera-1:output")
    await ka.execute("camera-1", "send", 3)
    await until(lambda: len(rec.images) == 3, "three items")
    assert all(a is b for a, b in zip(rec.images, cam.kept, strict=True))


async def test_output_side_forcing_and_impossible_paths(shm_world: ka.DeviceServer) -> None:
    await ka.instantiate("srv-5", "RunCamera", "camera-1", {"elements": BIG, "output.transport": "tcp"})
    await ka.instantiate(
        "srv-5", "WaitRecorder", "rec-1", {"input.connected_output_channels": ["camera-1:output"]}
    )
    async with ka.connect_device("rec-1") as proxy:
        await ka.wait_until(lambda: proxy.input.connections == ["camera-1:output=tcp"], timeout=10)
    # An input that insists on a path the output does not offer stays missing, never silently elsewhere.
    await ka.instantiate(
        "srv-5", "WaitRecorder", "rec-2",
        {"input.connected_output_channels": ["camera-1:output"], "input.transport": "shm"},
    )  # fmt: skip
    async with ka.connect_device("rec-2") as proxy:
        await ka.wait_until(lambda: proxy.input.missing_connections == ["camera-1:output"], timeout=10)
        await ka.execute("camera-1", "send", 2)
        await until(lambda: dev(shm_world, "rec-1").frames == [0, 1], "the tcp input")
        assert proxy.input.connections == [] and dev(shm_world, "rec-2").frames == []


# --- across processes over RabbitMQ: shared memory, TCP, and the faults --------------------------------

KARABO_ASYNC = str(Path(sys.executable).parent / "karabo-async")


class ServerProcess:
    """``karabo-async server`` with the suite's pipeline test devices, in a process of its own."""

    def __init__(self, server_id: str, broker: str, domain: str, env: dict[str, str], log: Path) -> None:
        self.args = [
            KARABO_ASYNC, "--broker", broker, "--domain", domain, "server", "--id", server_id,
            "--plugin-dir", str(PLUGINS), "--heartbeat-interval", "1",
        ]  # fmt: skip
        self.env, self.log = env, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=log, cwd=REPO
            )
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            while b"online with classes" not in await self.proc.stdout.readline():
                assert self.proc.returncode is None, f"server exited; see {self.log}"

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(15):
                assert await self.proc.wait() == 0
        except TimeoutError:
            await self.kill()
            raise AssertionError("server did not stop on SIGTERM") from None


@pytest.fixture
async def cluster(
    broker_url: str, domain: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[ka.DeviceServer, ServerProcess, Path]]:
    """This process's server srv-5 and a server process srv-p, sharing a shm directory and session."""
    shm = Path("/dev/shm") / f"karabo-acc5-{uuid.uuid4().hex[:8]}"
    shm.mkdir()
    monkeypatch.setenv("KARABO_SHM_DIR", str(shm))
    monkeypatch.setenv("KARABO_SESSION", f"acc5-{uuid.uuid4().hex[:8]}")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    other = ServerProcess("srv-p", broker_url, domain, env, tmp_path / "srv-p.log")
    try:
        await other.start()
        async with (
            ka.DeviceServer(
                "srv-5", classes=CLASSES, broker=broker_url, domain=domain, entry_points=False
            ) as srv,
            ka.connect(broker=broker_url, domain=domain),
        ):
            yield srv, other, shm
        await other.stop()
        # Normal shutdown leaves nothing in the shared-memory directory.
        assert sorted(os.listdir(shm)) == []
    finally:
        if other.proc is not None and other.proc.returncode is None:
            await other.kill()
        for name in os.listdir(shm):
            os.unlink(shm / name)
        shm.rmdir()


def shm_monitor(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        [KARABO_ASYNC, "shm", "monitor", *args], capture_output=True, text=True, timeout=60, env=os.environ
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.rabbitmq
async def test_other_process_shm_and_tcp_and_a_sender_killed_while_data_is_held(
    cluster: tuple[ka.DeviceServer, ServerProcess, Path],
) -> None:
    srv, other, shm = cluster
    await ka.instantiate("srv-p", "Camera", "camera-1")  # 128 KiB images: shared memory
    out = {"input.connected_output_channels": ["camera-1:output"]}
    await ka.instantiate("srv-5", "WaitRecorder", "rec-shm", out)
    await ka.instantiate("srv-5", "WaitRecorder", "rec-tcp", {**out, "input.transport": "tcp"})
    rec_shm, rec_tcp = dev(srv, "rec-shm"), dev(srv, "rec-tcp")
    async with (
        ka.connect_device("camera-1") as camera,
        ka.connect_device("rec-shm") as p_shm,
        ka.connect_device("rec-tcp") as p_tcp,
    ):
        await ka.wait_until(lambda: p_shm.input.connections == ["camera-1:output=shm"], timeout=15)
        await ka.wait_until(lambda: p_tcp.input.connections == ["camera-1:output=tcp"], timeout=15)
        assert await camera.send(50) == 50
        await until(lambda: rec_shm.frames == list(range(50)) == rec_tcp.frames, "50 frames on both paths")
        assert set(rec_shm.writable) == {False}  # read-only views of the sender's pool, zero copy
        assert set(rec_tcp.writable) == {True}
        assert rec_shm.input.stats["on_data_errors"] == 0 and rec_tcp.input.stats["on_data_errors"] == 0
        # The sender dies (SIGKILL) while the receiver still holds an item: the data stays valid.
        rec_shm.gate.clear()
        rec_shm.inside.clear()
        await camera.send(1)
        await asyncio.wait_for(rec_shm.inside.wait(), 10)
        sender_pid = other.proc.pid if other.proc else 0
        assert any(f"_{sender_pid}_" in name for name in os.listdir(shm))
        await other.kill()
        code, text = shm_monitor("--cleanup", "--self-destruct")
        assert code == 0 and "removed 1 dead owner" in text, text
        assert not any(f"_{sender_pid}_" in name for name in os.listdir(shm))
        rec_shm.gate.set()
        await until(lambda: rec_shm.frames[-1:] == [50], "the held item, still intact")
        assert rec_shm.input.stats["on_data_errors"] == 0
        await ka.wait_until(lambda: p_shm.input.missing_connections == ["camera-1:output"], timeout=15)
    # The output's device comes back (in a new process): the inputs reconnect by themselves.
    await other.start()
    await ka.instantiate("srv-p", "Camera", "camera-1")
    async with ka.connect_device("rec-shm") as p_shm, ka.connect_device("rec-tcp") as p_tcp:
        await ka.wait_until(lambda: p_shm.input.missing_connections == [] == p_tcp.input.missing_connections,
                            timeout=15)  # fmt: skip
        await ka.execute("camera-1", "send", 2)
        await until(lambda: rec_tcp.frames[-2:] == [0, 1] and rec_shm.frames[-2:] == [0, 1], "after restart")


@pytest.mark.rabbitmq
async def test_a_receiver_killed_before_releasing_gives_its_slots_back(
    cluster: tuple[ka.DeviceServer, ServerProcess, Path], owners: Callable[[str], Owner]
) -> None:
    srv, other, shm = cluster
    await ka.instantiate("srv-5", "RunCamera", "camera-1", {"elements": BIG})
    cam = dev(srv, "camera-1")
    # The suite's Processor sleeps handler_delay seconds in its handler, holding the item's slot.
    await ka.instantiate(
        "srv-p", "Processor", "slow-1",
        {"input.connected_output_channels": ["camera-1:output"], "handler_delay": 30.0},
    )  # fmt: skip
    async with ka.connect_device("slow-1") as slow:
        await ka.wait_until(lambda: slow.input.connections == ["camera-1:output=shm"], timeout=15)
        await ka.execute("camera-1", "send", 2)
        await until(lambda: cam.output.stats["pool"]["used"] == 2, "slots held by the receiver")
        await other.kill()
    await until(lambda: cam.output.stats["pool"]["used"] == 0, "slots back after the receiver died")
    assert cam.output.inputs == []
    await ka.execute("camera-1", "send", 1)  # the output goes on
    # A device server runs the monitor's cleanup for its session when it starts.
    crashed = owners(os.environ["KARABO_SESSION"])
    crashed.kill()
    assert files_of(shm, crashed.pid)
    await other.start()
    assert files_of(shm, crashed.pid) == []
    assert files_of(shm, os.getpid())  # a live owner (this process's camera pool) is left alone


# --- the shared-memory monitor: karabo-async shm monitor [--cleanup] [--timeout MS] [--self-destruct] [--list]

OWNER_SCRIPT = """
import asyncio, sys
from karabo_async.pipeline import OutputEndpoint

async def main() -> None:
    out = OutputEndpoint(sys.argv[1], "output", transport="shm", pool_slots=2, slot_size=1 << 20)
    await out.start()  # the pool is allocated now
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture
def shm_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A shared-memory directory and session of this test's own, in this process's environment."""
    directory = Path("/dev/shm") / f"karabo-acc5-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    session = f"acc5-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("KARABO_SHM_DIR", str(directory))
    monkeypatch.setenv("KARABO_SESSION", session)
    try:
        yield directory, session
    finally:
        for name in os.listdir(directory):
            os.unlink(directory / name)
        directory.rmdir()


class Owner:
    """A process that allocated a shared-memory pool (of ``session``) and keeps it."""

    def __init__(self, session: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", OWNER_SCRIPT, f"owner-{uuid.uuid4().hex[:6]}"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "KARABO_SESSION": session},
        )  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def owners() -> Iterator[Callable[[str], Owner]]:
    started: list[Owner] = []

    def start(session: str) -> Owner:
        started.append(Owner(session))
        return started[-1]

    yield start
    for owner in started:
        if owner.proc.returncode is None:
            owner.proc.send_signal(signal.SIGCONT)
            owner.kill()


def files_of(directory: Path, pid: int) -> list[str]:
    return sorted(n for n in os.listdir(directory) if f"_{pid}_" in n)


def test_monitor_list_shows_owners_pools_and_use_of_every_session(
    shm_env: tuple[Path, str], owners: Callable[[str], Owner]
) -> None:
    directory, session = shm_env
    live = owners(session)
    dead = owners(session)
    elsewhere = owners("acc5-other")
    dead.kill()
    code, text = shm_monitor("--list", "--timeout", "60000")
    assert code == 0, text
    # At start it removes the stale segments of its own session, then lists what is left.
    assert "removed 1 dead owner" in text
    lines = {int(line.split()[1]): line for line in text.splitlines()[2:] if line.strip()}
    assert set(lines) == {live.pid, elsewhere.pid}, text
    assert "alive" in lines[live.pid] and session in lines[live.pid]
    assert f"{live.pid}" in lines[live.pid] and "0/2" in lines[live.pid]  # pool use: slots used / slots
    assert "acc5-other" in lines[elsewhere.pid]
    assert files_of(directory, dead.pid) == [] and len(files_of(directory, live.pid)) == 2


def test_monitor_self_destruct_cleans_dead_owners_of_its_session_only(
    shm_env: tuple[Path, str], owners: Callable[[str], Owner]
) -> None:
    directory, session = shm_env
    killed = owners(session)  # sender killed with SIGKILL after allocating
    other_session = owners("acc5-other")
    live = owners(session)
    killed.kill()
    other_session.kill()
    assert len(files_of(directory, killed.pid)) == 2
    code, text = shm_monitor("--self-destruct")
    assert code == 0 and "removed 1 dead owner" in text, text
    assert files_of(directory, killed.pid) == []
    assert len(files_of(directory, other_session.pid)) == 2  # another session: never touched
    assert len(files_of(directory, live.pid)) == 2  # alive: left alone


def test_monitor_takes_a_reused_pid_for_dead(
    shm_env: tuple[Path, str], owners: Callable[[str], Owner]
) -> None:
    directory, session = shm_env
    crashed = owners(session)
    crashed.kill()
    # Its files as if its pid had been given to a process that runs now (our parent, started earlier).
    reused = os.getppid()
    for name in files_of(directory, crashed.pid):
        os.rename(directory / name, directory / name.replace(f"_{crashed.pid}_", f"_{reused}_"))
    code, text = shm_monitor("--self-destruct")
    assert code == 0 and "removed 1 dead owner" in text, text
    assert files_of(directory, reused) == []


def test_monitor_timeout_judges_a_silent_heartbeat(
    shm_env: tuple[Path, str], owners: Callable[[str], Owner]
) -> None:
    directory, session = shm_env
    frozen = owners(session)
    frozen.proc.send_signal(signal.SIGSTOP)  # alive, but its heartbeat stops
    code, text = shm_monitor("--self-destruct", "--timeout", "60000")
    assert code == 0 and "removed 0 dead owner" in text, text
    deadline = time.monotonic() + 10
    while files_of(directory, frozen.pid):
        assert time.monotonic() < deadline, "frozen owner never judged dead"
        code, text = shm_monitor("--self-destruct", "--timeout", "700")
        assert code == 0, text


async def test_running_monitor_cleans_up_and_a_killed_one_at_its_next_start(
    shm_env: tuple[Path, str], owners: Callable[[str], Owner]
) -> None:
    directory, session = shm_env
    monitor = await asyncio.create_subprocess_exec(
        KARABO_ASYNC, "shm", "monitor", "--cleanup", "--timeout", "5000", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert monitor.stdout is not None
        first = await asyncio.wait_for(monitor.stdout.readline(), 30)
        assert b"startup cleanup" in first
        victim = owners(session)
        victim.kill()
        line = await asyncio.wait_for(monitor.stdout.readline(), 10)  # frees what the dead process left
        assert f"removed pid {victim.pid}".encode() in line
        assert files_of(directory, victim.pid) == []
        # The monitor is killed; what dies meanwhile is cleaned at its next start.
        monitor.kill()
        await monitor.wait()
        victim = owners(session)
        victim.kill()
        code, text = shm_monitor("--cleanup", "--self-destruct")
        assert code == 0 and "removed 1 dead owner" in text, text
        assert files_of(directory, victim.pid) == []
    finally:
        if monitor.returncode is None:
            monitor.kill()
            await monitor.wait()


async def test_monitor_runs_until_sigterm(shm_env: tuple[Path, str]) -> None:
    monitor = await asyncio.create_subprocess_exec(
        KARABO_ASYNC, "shm", "monitor", stdout=asyncio.subprocess.PIPE
    )
    assert monitor.stdout is not None
    assert b"startup cleanup" in await asyncio.wait_for(monitor.stdout.readline(), 30)
    monitor.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(monitor.wait(), 10) == 0


def test_monitor_bad_options_are_refused() -> None:
    code, text = shm_monitor("--timeout", "soon")
    assert code != 0 and "--timeout" in text


# --- faults: full /dev/shm, exhausted pool, malformed frames -------------------------------------------


class SmallPoolCamera(RunCamera):
    output = OutputChannel(pool_slots=1, slot_size=1 << 20, alloc_attempts=3, alloc_interval=0.01)


@pytest.fixture
def tiny_shm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs as the shared-memory directory: no room for a default pool (8 x 8 MiB)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mnt)], check=True)
    monkeypatch.setenv("KARABO_SHM_DIR", str(mnt))
    monkeypatch.setenv("KARABO_SESSION", f"acc5-{uuid.uuid4().hex[:8]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


async def test_full_shm_is_a_typed_error_never_a_crash(tiny_shm: Path) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    async with (
        ka.DeviceServer("srv-5", classes=CLASSES, broker=url, domain="issue5", entry_points=False) as srv,
        ka.connect(broker=url, domain="issue5"),
    ):
        # A pool forced at start: the device does not start, and the error says why.
        with pytest.raises(ka.KaraboError, match=r"ShmFull|cannot reserve"):
            await ka.instantiate("srv-5", "RunCamera", "camera-0", {"output.transport": "shm"})
        assert "camera-0" not in srv.devices
        # Automatic path: the same-host input gets its items over the socket instead.
        await ka.instantiate("srv-5", "RunCamera", "camera-1", {"elements": BIG})
        await ka.instantiate(
            "srv-5", "WaitRecorder", "rec-1",
            {"input.connected_output_channels": ["camera-1:output"], "input.transport": "shm"},
        )  # fmt: skip
        rec = dev(srv, "rec-1")
        assert await rec.input.wait_connected("camera-1:output")
        await ka.execute("camera-1", "send", 3)
        await until(lambda: rec.frames == [0, 1, 2], "items without shared memory")
        assert os.listdir(tiny_shm) == []


async def test_pool_exhausted_is_a_typed_error_after_bounded_retries_and_the_device_goes_on(
    shm_env: tuple[Path, str],
) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    classes = [*CLASSES, SmallPoolCamera]
    async with (
        ka.DeviceServer("srv-5", classes=classes, broker=url, domain="issue5", entry_points=False) as srv,
        ka.connect(broker=url, domain="issue5"),
    ):
        await ka.instantiate("srv-5", "SmallPoolCamera", "camera-1", {"elements": BIG})
        await ka.instantiate(
            "srv-5", "WaitRecorder", "rec-1",
            {"input.connected_output_channels": ["camera-1:output"], "input.transport": "shm"},
        )  # fmt: skip
        rec = dev(srv, "rec-1")
        assert await rec.input.wait_connected("camera-1:output")
        rec.gate.clear()  # the receiver holds the only slot
        async with ka.connect_device("camera-1") as camera:
            await camera.send(1)
            await asyncio.wait_for(rec.inside.wait(), 10)
            started = time.monotonic()
            with pytest.raises(ka.PoolExhausted):
                await camera.send(1)
            assert time.monotonic() - started < 5  # bounded retries
            await ka.wait_until(lambda: camera.output.dropped == 1, timeout=10)  # counted, not silent
            assert camera.state == State.ON  # the device keeps running
            rec.gate.set()
            await until(lambda: rec.frames == [0], "the held item")
            await camera.send(1)
            await until(lambda: rec.frames == [0, 1], "the next item after the slot came back")


async def test_malformed_frames_close_that_connection_only_with_a_log_line(world: ka.DeviceServer) -> None:
    from structlog.testing import capture_logs

    cam = await camera_and(world, ("WaitRecorder", "rec-1", {"input.transport": "tcp"}))
    rec = dev(world, "rec-1")
    info = cam.output.address_info()
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", info["tcp_port"])
        writer.write(b"KAp1" + struct.pack("<II", 2**31, 0) + b"garbage" * 10)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # that connection is closed
        writer.close()
        await writer.wait_closed()
    assert any("malformed" in str(entry.get("event", "")) for entry in logs), logs
    await ka.execute("camera-1", "send", 3)
    await until(lambda: rec.frames == [0, 1, 2], "the good connection carries on")
    assert rec.input.connected == ["camera-1:output"]


async def test_malformed_frames_from_an_output_close_that_connection_only() -> None:
    """The input side: a peer posing as an output sends garbage; the input's other connection goes on."""
    from structlog.testing import capture_logs

    from karabo_async.pipeline import InputEndpoint, OutputEndpoint

    got: list[int] = []

    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)  # the input's hello
        writer.write(b"not a pipeline frame at all, not even close")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(liar, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fake = {"channel_id": "liar:output", "host_id": "elsewhere", "pid": 1, "tcp_host": "127.0.0.1",
            "tcp_port": port, "unix_path": None, "shm": False, "local": False}  # fmt: skip
    async with OutputEndpoint("good", "output", tcp_host="127.0.0.1") as good:
        inp = InputEndpoint("sink", "input", on_data=lambda d, m: got.append(int(d["n"])), transport="tcp",
                            reconnect_delay=(5.0, 5.0))  # fmt: skip
        try:
            assert await inp.connect("good:output", good.address_info())
            with capture_logs() as logs:
                await inp.connect("liar:output", fake, timeout=0)
                await until(lambda: any("malformed" in str(e.get("event", "")) for e in logs), "a log line")
            assert inp.missing_connections == ["liar:output"] and inp.connected == ["good:output"]
            await good.write({"n": 1})
            await until(lambda: got == [1], "the good connection carries on")
        finally:
            await inp.close()
            server.close()
            await server.wait_closed()


# --- bad input and the end of a device's life ----------------------------------------------------------


def test_bad_declarations_name_the_setting() -> None:
    with pytest.raises(ka.PipelineError, match="data_distribution"):
        InputChannel(data_distribution="broadcast")  # type: ignore[arg-type]
    with pytest.raises(ka.PipelineError, match="on_slowness"):
        InputChannel(on_slowness="queue")  # type: ignore[arg-type]
    with pytest.raises(ka.PipelineError, match="max_queue_length"):
        InputChannel(max_queue_length=0)
    with pytest.raises(ka.PipelineError, match="no_shared_ready"):
        OutputChannel(no_shared_ready="queue_drop")  # type: ignore[arg-type]
    with pytest.raises(ka.PipelineError, match="transport"):
        OutputChannel(transport="udp")  # type: ignore[arg-type]


async def test_bad_configuration_at_instantiate_names_what_was_wrong(world: ka.DeviceServer) -> None:
    with pytest.raises(ka.KaraboError, match="instanceId:channelName"):
        await ka.instantiate("srv-5", "Recorder", "rec-1", {"input.connected_output_channels": ["camera-1"]})
    with pytest.raises(ka.KaraboError, match="on_slowness"):
        await ka.instantiate("srv-5", "Recorder", "rec-2", {"input.on_slowness": "sometimes"})
    with pytest.raises(ka.KaraboError, match="no_shared_ready"):
        await ka.instantiate("srv-5", "RunCamera", "camera-1", {"output.no_shared_ready": "never"})
    assert set(world.devices) == set()


async def test_end_of_stream_without_await_then_shutdown_still_reaches_the_input(
    world: ka.DeviceServer,
) -> None:
    cam = await camera_and(world, ("WaitRecorder", "rec-1", {}))
    rec = dev(world, "rec-1")
    await ka.execute("camera-1", "send", 2)
    cam.output.write_end_of_stream()
    await ka.shutdown("camera-1")
    await until(lambda: rec.events == [0, 1, "EOS"], "the items and the end of stream before the close")
    async with ka.connect_device("rec-1") as proxy:
        await ka.wait_until(lambda: proxy.input.missing_connections == ["camera-1:output"], timeout=10)


async def test_shared_memory_threshold_is_64_kib(shm_world: ka.DeviceServer) -> None:
    await ka.instantiate("srv-5", "RunCamera", "small", {"elements": 16 * 1024 - 1})  # 64 KiB - 4 bytes
    await ka.instantiate("srv-5", "RunCamera", "exact", {"elements": 16 * 1024})  # 64 KiB
    for name in ("small", "exact"):
        await ka.instantiate(
            "srv-5", "WaitRecorder", f"rec-{name}",
            {"input.connected_output_channels": [f"{name}:output"], "input.transport": "shm"},
        )  # fmt: skip
        assert await dev(shm_world, f"rec-{name}").input.wait_connected(f"{name}:output")
        await ka.execute(name, "send", 1)
    await until(
        lambda: dev(shm_world, "rec-small").frames == [0] == dev(shm_world, "rec-exact").frames, "items"
    )
    assert dev(shm_world, "rec-small").writable == [True]  # below the threshold: over the socket
    assert dev(shm_world, "rec-exact").writable == [False]  # at least 64 KiB: a view of shared memory
