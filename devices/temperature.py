"""TemperatureSensor: a reading with noise that follows its setpoint with a thermal lag.

The reading carries warn and alarm limits, so the device's ``alarm_condition`` goes to ``warn``
or ``alarm`` (naming ``temperature``) whenever the reading leaves the comfortable range.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random

from karabo_async import Device, Property, State

WARN_LOW, WARN_HIGH = 15.0, 30.0
ALARM_LOW, ALARM_HIGH = 5.0, 40.0


class TemperatureSensor(Device):
    """A temperature probe in a hutch: noise around a setpoint, warn/alarm limits on the reading."""

    setpoint: float = Property(
        22.0, ge=-50.0, le=150.0, unit="degC", description="What the room is driven to"
    )
    noise: float = Property(0.05, ge=0.0, le=10.0, unit="degC", description="Standard deviation of the noise")
    time_constant: float = Property(
        2.0, ge=0.0, le=3600.0, unit="s", description="Thermal lag towards the setpoint (0: none)"
    )
    update_interval: float = Property(0.5, ge=0.01, le=60.0, unit="s", description="Time between readings")
    temperature: float = Property(
        22.0, readonly=True, unit="degC",
        warn_low=WARN_LOW, warn_high=WARN_HIGH, alarm_low=ALARM_LOW, alarm_high=ALARM_HIGH,
        description="The last reading",
    )  # fmt: skip

    _reader: asyncio.Task[None] | None = None

    async def on_initialization(self) -> None:
        self._true_value = self.setpoint
        self.temperature = self.setpoint
        self.set_properties({"state": State.MONITORING, "status": "reading"})
        self._reader = asyncio.get_running_loop().create_task(self._read_forever())

    async def on_destruction(self) -> None:
        task, self._reader = self._reader, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def next_reading(self, elapsed: float) -> float:
        """The reading ``elapsed`` seconds after the last one."""
        tau = self.time_constant
        weight = 1.0 if tau == 0 else 1.0 - math.exp(-elapsed / tau)
        self._true_value += (self.setpoint - self._true_value) * weight
        return self._true_value + random.gauss(0.0, self.noise)

    async def _read_forever(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        try:
            while True:
                await asyncio.sleep(self.update_interval)
                now = loop.time()
                self.temperature = round(self.next_reading(now - last), 4)
                last = now
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.error("reading failed", error=f"{type(exc).__name__}: {exc}")
            self.set_properties({"state": State.ERROR, "status": f"reading failed: {exc}"})
