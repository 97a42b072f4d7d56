"""SimulatedCamera: frames as numpy arrays at a set frame rate while ACQUIRING.

Each frame is a Gaussian spot on a dark background with shot-like noise, scaled by exposure and
gain and clipped to the 16-bit range. The spot and a small bank of noise frames are computed once
per geometry, so a frame costs one multiply-add over the array: a camera at 10 Hz stays far below
one percent of a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

import numpy as np
import numpy.typing as npt

from karabo_async import Device, Image, Property, State, UInt16, UInt64, slot

NOISE_BANK = 8
FULL_SCALE = 65535.0


class SimulatedCamera(Device):
    """A 16-bit monochrome camera with exposure, gain and frame rate."""

    exposure: float = Property(0.01, gt=0.0, le=10.0, unit="s", description="Exposure time per frame")
    gain: float = Property(1.0, ge=0.1, le=100.0, description="Amplification of the signal")
    frame_rate: float = Property(10.0, ge=0.1, le=100.0, unit="Hz", description="Frames per second")
    width: UInt16 = Property(
        256, ge=8, le=4096, unit="px", allowed_states=[State.ON], description="Frame width"
    )
    height: UInt16 = Property(
        256, ge=8, le=4096, unit="px", allowed_states=[State.ON], description="Frame height"
    )
    frame_count: UInt64 = Property(0, readonly=True, description="Frames published since acquire")
    image: Image = Property(
        Image(np.zeros((8, 8), dtype=np.uint16)), readonly=True, archive=False, description="Latest frame"
    )

    _acquisition: asyncio.Task[None] | None = None

    async def on_initialization(self) -> None:
        self._rng = np.random.default_rng()
        self._geometry: tuple[int, int] = (0, 0)
        self.set_properties({"state": State.ON, "status": "ready"})

    @slot(allowed_states=[State.ON])
    async def acquire(self) -> None:
        """Start publishing frames at frame_rate."""
        self.set_properties({"state": State.ACQUIRING, "status": "acquiring", "frame_count": 0})
        self._acquisition = asyncio.get_running_loop().create_task(self._acquire_frames())

    @slot(allowed_states=[State.ACQUIRING])
    async def stop(self) -> None:
        """Stop acquiring; the last frame stays published."""
        await self._cancel()
        self.set_properties({"state": State.ON, "status": f"stopped after {self.frame_count} frames"})

    async def on_destruction(self) -> None:
        await self._cancel()

    async def _cancel(self) -> None:
        task, self._acquisition = self._acquisition, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _prepare(self, height: int, width: int) -> None:
        """The spot and the noise bank for this geometry (once, not per frame)."""
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        sigma = max(height, width) / 10.0
        spot = np.exp(-((x - width / 2) ** 2 + (y - height / 2) ** 2) / (2 * sigma**2))
        self._spot: npt.NDArray[np.float32] = (spot * 20000.0).astype(np.float32)
        self._noise = self._rng.normal(100.0, 15.0, size=(NOISE_BANK, height, width)).astype(np.float32)
        self._geometry = (height, width)

    def make_frame(self, number: int) -> npt.NDArray[np.uint16]:
        """Frame ``number`` at the current exposure, gain and geometry."""
        shape = (int(self.height), int(self.width))
        if shape != self._geometry:
            self._prepare(*shape)
        scale = self.gain * self.exposure / 0.01  # the spot fills a quarter of the range at the defaults
        frame = self._spot * np.float32(scale) + self._noise[number % NOISE_BANK]
        np.clip(frame, 0.0, FULL_SCALE, out=frame)
        pixels: npt.NDArray[np.uint16] = frame.astype(np.uint16)
        return pixels

    async def _acquire_frames(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        number = 0
        try:
            while True:
                period = 1.0 / self.frame_rate
                number += 1
                data = self.make_frame(number)
                self.set_properties(
                    {
                        "image": Image(
                            data,
                            encoding="GRAY",
                            metadata={"frame": number, "exposure": self.exposure, "gain": self.gain},
                        ),
                        "frame_count": number,
                    }
                )
                # absolute schedule: frames keep their rate however long one took; late ones are skipped
                due = started + number * period
                now = loop.time()
                if due < now:
                    skipped = math.ceil((now - due) / period)
                    started += skipped * period
                    due += skipped * period
                await asyncio.sleep(due - now)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.error("acquisition failed", error=f"{type(exc).__name__}: {exc}")
            self.set_properties({"state": State.ERROR, "status": f"acquisition failed: {exc}"})
