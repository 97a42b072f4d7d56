"""Clock: the facility's train clock, broadcasting ``train_tick(train_id, time, period)``.

Every process of the domain receives the ticks once (on its broadcast lane) and stamps the values
its devices set with the current train id, extrapolated between ticks. Train ids continue from the
wall clock (``time / period``) unless ``first_train_id`` is given, so a restarted clock never
hands out ids that were already used.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from karabo_async import Device, Property, State, UInt64, slot

TRAIN_TICK = "train_tick"


class Clock(Device):
    """Broadcasts train ids at a fixed period (10 Hz at European XFEL)."""

    period: float = Property(0.1, ge=0.001, le=60.0, unit="s", description="Time between trains")
    first_train_id: UInt64 = Property(
        0, init_only=True, description="Id of the first train (0: derived from the wall clock)"
    )
    train_id: UInt64 = Property(0, readonly=True, description="Id of the current train")

    _ticker: asyncio.Task[None] | None = None

    async def on_initialization(self) -> None:
        self.start_ticking()

    def start_ticking(self) -> None:
        first = int(self.first_train_id) or int(time.time() / self.period)
        if self.train_id:
            first = max(first, int(self.train_id) + 1)
        self.set_properties({"state": State.STARTED, "status": "ticking"})
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever(first))

    @slot(allowed_states=[State.STOPPED])
    async def start(self) -> None:
        """Resume ticking after ``stop``."""
        self.start_ticking()

    @slot(allowed_states=[State.STARTED])
    async def stop(self) -> None:
        """Stop ticking; devices then stamp train id 0 after a few periods."""
        await self._cancel()
        self.set_properties({"state": State.STOPPED, "status": f"stopped at train {self.train_id}"})

    async def on_destruction(self) -> None:
        await self._cancel()

    async def _cancel(self) -> None:
        task, self._ticker = self._ticker, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _tick_forever(self, train_id: int) -> None:
        loop = asyncio.get_running_loop()
        next_due = loop.time()
        try:
            while True:
                period = self.period
                self.train_id = train_id
                await self.signalslot.broadcast(TRAIN_TICK, train_id, time.time(), period)
                train_id += 1
                next_due += period
                delay = next_due - loop.time()
                if delay < 0:  # fell behind (a stalled loop): skip the missed trains, keep the rhythm
                    missed = int(-delay / period) + 1
                    train_id += missed
                    next_due += missed * period
                    delay += missed * period
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.error("clock failed", error=f"{type(exc).__name__}: {exc}")
            self.set_properties({"state": State.ERROR, "status": f"clock failed: {exc}"})
