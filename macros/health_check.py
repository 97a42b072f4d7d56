"""HealthCheck: which devices are in ERROR, in alarm (or warning), or not answering."""

from __future__ import annotations

import asyncio

from karabo_async import AlarmCondition, Macro, Property, State, get_configuration, get_topology


class HealthCheck(Macro):
    """List the devices that are in alarm or in error."""

    include_warnings: bool = Property(True, description="Report devices in warning as well")
    timeout: float = Property(5.0, gt=0, unit="s", description="How long each device may take to answer")
    problems: list[str] = Property([], readonly=True, description="One line per device with a problem")
    checked: int = Property(0, readonly=True, description="Number of devices checked")

    async def run(self) -> None:
        devices = sorted(i for i, info in get_topology().items() if info.get("type") == "device")
        answers = await asyncio.gather(*(self._check(d) for d in devices))
        problems = [line for line in answers if line]
        self.set_properties({"problems": problems, "checked": len(devices)})
        for line in problems:
            self.log.warning("problem", device=line)
        self.log.info("health check done", devices=len(devices), problems=len(problems))

    async def _check(self, device_id: str) -> str:
        try:
            config = await asyncio.wait_for(get_configuration(device_id), self.timeout)
        except (TimeoutError, Exception) as exc:  # an unreachable device is a finding, not a failure
            return f"{device_id}: not answering ({type(exc).__name__}: {exc})"
        state = str(config.get("state", ""))
        alarm = str(config.get("alarm_condition", ""))
        status = config.get("status", "")
        if state == State.ERROR:
            return f"{device_id}: ERROR ({status})"
        if alarm == AlarmCondition.ALARM or (self.include_warnings and alarm == AlarmCondition.WARN):
            return f"{device_id}: {alarm} on {', '.join(config.get('alarm_properties', []))}"
        return ""
