"""SimulatedMotor: a motor axis that moves to a target position at a set velocity.

``move`` starts a move and returns at once; the position then changes in small steps (state
MOVING) until the target is reached (state ON) or ``stop`` is called. Soft limits bound every move:
a target beyond them drives the axis to the limit, where it stops in ERROR with the limit named in
the status; ``reset`` clears the error.
"""

from __future__ import annotations

import asyncio
import contextlib

from karabo_async import Device, Property, State, slot

STEP_INTERVAL = 0.02  # 50 position updates per second while moving: smooth, yet cheap


class SimulatedMotor(Device):
    """A motor that moves to a target position at a set velocity."""

    velocity: float = Property(1.0, ge=0.01, le=10.0, unit="mm/s", description="Speed of a move")
    target_position: float = Property(
        0.0, ge=-100.0, le=100.0, unit="mm", allowed_states=[State.ON], description="Where move goes"
    )
    position: float = Property(
        0.0, readonly=True, unit="mm", warn_high=90.0, alarm_high=99.0, description="Actual position"
    )
    serial_number: str = Property("", init_only=True, description="Serial number of the hardware")
    low_limit: float = Property(
        -95.0, ge=-100.0, le=100.0, unit="mm", allowed_states=[State.ON, State.ERROR],
        description="Soft limit: moves never go below it",
    )  # fmt: skip
    high_limit: float = Property(
        95.0, ge=-100.0, le=100.0, unit="mm", allowed_states=[State.ON, State.ERROR],
        description="Soft limit: moves never go above it",
    )  # fmt: skip
    step_interval: float = Property(
        STEP_INTERVAL, ge=0.001, le=1.0, unit="s", init_only=True, description="Time between position updates"
    )

    _move_task: asyncio.Task[None] | None = None

    async def on_initialization(self) -> None:
        self.set_properties({"state": State.ON, "status": "ready"})

    def pre_reconfigure(self, changes: dict[str, object]) -> None:
        low = float(changes.get("low_limit", self.low_limit))  # type: ignore[arg-type]
        high = float(changes.get("high_limit", self.high_limit))  # type: ignore[arg-type]
        if low >= high:
            raise ValueError(f"low_limit {low} must be below high_limit {high}")

    @slot(allowed_states=[State.ON])
    async def move(self) -> None:
        """Start moving to target_position; returns at once, the state says when the move ends."""
        target = self.target_position
        limited = min(max(target, self.low_limit), self.high_limit)
        self.set_properties({"state": State.MOVING, "status": f"moving to {limited} mm"})
        self._move_task = asyncio.get_running_loop().create_task(self._run_move(target, limited))

    @slot
    async def stop(self) -> None:
        """Stop a move where the axis is now."""
        await self._cancel_move()
        if self.state is State.MOVING:
            self.set_properties({"state": State.ON, "status": f"stopped at {self.position} mm"})

    @slot(allowed_states=[State.ERROR])
    async def reset(self) -> None:
        """Leave ERROR (after a limit was hit) once the cause is understood."""
        self.set_properties({"state": State.ON, "status": "reset"})

    async def on_destruction(self) -> None:
        await self._cancel_move()

    async def _cancel_move(self) -> None:
        task, self._move_task = self._move_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run_move(self, target: float, limited: float) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        try:
            while self.position != limited:
                await asyncio.sleep(self.step_interval)
                now = loop.time()
                # integrate: a velocity changed during the move applies from now on
                step = self.velocity * (now - last)
                last = now
                remaining = limited - self.position
                self.position = (
                    limited
                    if abs(remaining) <= step
                    else self.position + step * (1.0 if remaining > 0 else -1.0)
                )
        except Exception as exc:
            self.log.error("move failed", error=f"{type(exc).__name__}: {exc}")
            self.set_properties({"state": State.ERROR, "status": f"move failed: {exc}"})
            return
        if limited != target:
            side = "high" if target > limited else "low"
            self.log.warning("soft limit reached", limit=side, position=limited, target=target)
            self.set_properties(
                {
                    "state": State.ERROR,
                    "status": f"{side} soft limit reached at {limited} mm (target {target} mm)",
                }
            )
        else:
            self.set_properties({"state": State.ON, "status": f"at {limited} mm"})
