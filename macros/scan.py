"""Scan: step a motor through a range and record where it got to at each step."""

from __future__ import annotations

from karabo_async import Macro, Property, State, connect_device, set_wait, wait_until


class Scan(Macro):
    """Step a motor and record its position."""

    motor_id: str = Property("motor-1", description="The motor to move")
    start: float = Property(0.0, description="First target position")
    stop: float = Property(10.0, description="Last target position")
    steps: int = Property(5, ge=1, description="Number of steps between start and stop")
    move_timeout: float = Property(60.0, gt=0, unit="s", description="Longest wait for one move")
    positions: list[float] = Property([], readonly=True, description="Position reached at each step")

    async def run(self) -> None:
        reached: list[float] = []
        async with connect_device(self.motor_id) as motor:
            for i in range(self.steps + 1):
                target = self.start + i * (self.stop - self.start) / self.steps
                await set_wait(motor, target_position=target)
                await motor.move()
                # The move's own updates say when it is over: ON at the target, or ERROR (a limit).
                await wait_until(
                    lambda t=target: (
                        motor.state == State.ERROR
                        or (motor.state == State.ON and abs(float(motor.position) - t) < 1e-9)
                    ),
                    timeout=self.move_timeout,
                )
                if motor.state == State.ERROR:
                    raise RuntimeError(f"{self.motor_id} stopped in ERROR: {motor.status}")
                reached.append(float(motor.position))
                self.positions = reached
                self.log.info("step", i=i, position=float(motor.position))
