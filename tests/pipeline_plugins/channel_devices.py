"""Devices with pipeline channels for tests/test_channels.py, loaded in-process and as server plugins.

Camera writes frames (an image array whose every element is the frame id, so content is checked
end to end) on ``send(n)``; Processor passes a summary of each frame on; Sink records what arrives.
"""

from __future__ import annotations

import asyncio

import numpy as np

from karabo_async import ChannelMeta, Hash, InputChannel, OutputChannel, Property, State, slot
from karabo_async.device import Device


class Camera(Device):
    output = OutputChannel()
    frame_elements: int = Property(16 * 1024, init_only=True, description="uint64 elements per image")
    frames_sent: int = Property(0, readonly=True)

    async def on_initialization(self) -> None:
        self.state = State.ON

    async def acquire_one(self, frame_id: int) -> None:
        image = np.full(self.frame_elements, frame_id, dtype=np.uint64)
        item = Hash(image=image, frame_id=frame_id)
        item.set_attribute("image", "unit", "counts")
        await self.output.write(item)

    @slot
    async def send(self, n: int) -> int:
        first = self.frames_sent
        for frame_id in range(first, first + n):
            await self.acquire_one(frame_id)
        self.frames_sent = first + n
        return n

    @slot
    async def end_run(self) -> None:
        await self.output.write_end_of_stream()


class _Recorder(Device):
    frame_ids: list[int] = Property([], readonly=True)
    bad_frames: int = Property(0, readonly=True)
    eos_count: int = Property(0, readonly=True)
    eos_sources: list[str] = Property([], readonly=True)
    units: list[str] = Property([], readonly=True)
    transports: list[str] = Property([], readonly=True)

    async def on_initialization(self) -> None:
        self.state = State.ON

    def record(self, data: Hash, meta: ChannelMeta) -> None:
        frame_id = int(data["frame_id"])
        ok = meta.source.endswith(":output") and meta.timestamp.train_id == meta.train_id
        if "image" in data:
            image = data["image"]
            ok = ok and bool((image == frame_id).all()) and image.size == image.shape[0]
            unit = data.get_attribute("image", "unit") if data.has_attribute("image", "unit") else ""
            if unit not in self.units:
                self.units = [*self.units, unit]
        elif int(data["total"]) % max(frame_id, 1) != 0:
            ok = False
        if not ok:
            self.bad_frames += 1
        self.frame_ids = [*self.frame_ids, frame_id]

    def record_eos(self, meta: ChannelMeta) -> None:
        self.eos_count += 1
        self.eos_sources = [*self.eos_sources, meta.source]


class Processor(_Recorder):
    input = InputChannel(data_distribution="copy", on_slowness="wait", max_queue_length=2)
    output = OutputChannel()
    handler_delay: float = Property(0.0, description="seconds each item takes")

    @input.on_data
    async def handle(self, data: Hash, meta: ChannelMeta) -> None:
        if self.handler_delay:
            await asyncio.sleep(self.handler_delay)  # a slow consumer, on purpose
        self.record(data, meta)
        frame_id = int(data["frame_id"])
        await self.output.write(Hash(frame_id=frame_id, total=int(data["image"].sum())))

    @input.on_end_of_stream
    async def eos(self, meta: ChannelMeta) -> None:
        self.record_eos(meta)
        await self.output.write_end_of_stream()


class Sink(_Recorder):
    input = InputChannel()

    @input.on_data
    async def handle(self, data: Hash, meta: ChannelMeta) -> None:
        self.record(data, meta)

    @input.on_end_of_stream
    async def eos(self, meta: ChannelMeta) -> None:
        self.record_eos(meta)


class SharedSink(Sink):
    input = InputChannel(data_distribution="shared")

    @input.on_data
    async def handle(self, data: Hash, meta: ChannelMeta) -> None:
        self.record(data, meta)

    @input.on_end_of_stream
    async def eos(self, meta: ChannelMeta) -> None:
        self.record_eos(meta)
