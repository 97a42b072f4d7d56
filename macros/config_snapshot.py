"""ConfigSnapshot: write the configuration of devices to a JSON file, to compare or restore later."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from karabo_async import Macro, Property, get_configuration, get_devices


class ConfigSnapshot(Macro):
    """Save the configuration of devices to a JSON file."""

    devices: list[str] = Property([], description="Device ids to save (empty: every device)")
    path: str = Property("snapshot.json", description="File to write (replaced if it exists)")
    saved: list[str] = Property([], readonly=True, description="Devices written to the file")

    async def run(self) -> None:
        ids = list(self.devices) or sorted(get_devices())
        snapshot: dict[str, Any] = {"taken": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "devices": {}}
        for device_id in ids:
            config = await get_configuration(device_id)
            snapshot["devices"][device_id] = config.to_dict()
            self.log.info("saved", device=device_id, properties=len(config.paths()))
        text = json.dumps(snapshot, indent=2, sort_keys=True, default=_plain)
        await asyncio.to_thread(Path(self.path).write_text, text)
        self.saved = ids
        self.log.info("snapshot written", path=self.path, devices=len(ids))


def _plain(value: Any) -> Any:
    """Arrays and other non-JSON values as lists or text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)
