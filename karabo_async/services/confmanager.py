"""The configuration manager: named configurations of devices, saved in the archive database.

Saving reads the live configuration of each device and stores every property value under the name
(with description, user and time). Applying is done by the client that asks for it (see
:func:`karabo_async.services.api.apply_configuration`): the device then validates the change against
*that* caller's access level and lock, the usual rules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import structlog

from ..archive import ArchiveStore, ConfigurationInfo, open_store, redact_url
from ..device import Device
from ..errors import ArchiveTypeError, ArchiveValueError
from ..hash import Hash
from ..schema import Property, slot
from ..signalslot import current_message
from .recording import flat_values

log = structlog.get_logger(__name__)

SAVE_TIMEOUT = 10.0
STORE_WAIT = 30.0


class ConfigurationManager(Device):
    """Saves, lists and hands out named device configurations."""

    database: str = Property(
        "sqlite:karabo-archive.db", init_only=True, description="Archive URL (sqlite: or postgresql://)"
    )
    saved_count: int = Property(0, readonly=True, description="Configurations saved through this manager")

    def __init__(self, configuration: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(configuration, **kwargs)
        self._db: ArchiveStore | None = None
        self._opened = asyncio.Event()

    async def on_initialization(self) -> None:
        self._db = await open_store(self.database)
        self._opened.set()
        self.status = f"configurations in {redact_url(self.database)}"

    async def on_destruction(self) -> None:
        if self._db is not None:
            await self._db.close()

    async def _archive(self) -> ArchiveStore:
        """The store, once ``on_initialization`` opened it (queries may arrive while it does)."""
        if self._db is None:
            async with asyncio.timeout(STORE_WAIT):
                await self._opened.wait()
        assert self._db is not None
        return self._db

    @slot
    async def save_configuration(
        self, name: str, device_ids: list[str], description: str = "", overwrite: bool = False
    ) -> list[str]:
        """Save the live configuration of each device under ``name``; all or nothing."""
        if isinstance(device_ids, str):
            device_ids = [device_ids]
        if not isinstance(device_ids, list | tuple) or not device_ids:
            raise ArchiveTypeError(
                f"device_ids must be a non-empty list of device ids, not {device_ids!r:.100}"
            )
        for device_id in device_ids:
            if not isinstance(device_id, str) or not device_id:
                raise ArchiveTypeError(f"device ids must be non-empty str, not {device_id!r:.100}")
        if len(set(device_ids)) != len(device_ids):
            raise ArchiveValueError(f"device_ids lists a device twice: {list(device_ids)}")
        configs: dict[str, dict[str, Any]] = {}
        for device_id in device_ids:
            config = await self.signalslot.request(device_id, "get_configuration", timeout=SAVE_TIMEOUT)
            if not isinstance(config, Hash):
                raise ArchiveTypeError(f"{device_id} answered get_configuration with {type(config).__name__}")
            configs[device_id] = flat_values(config)
        message = current_message.get()
        user = (message.user or message.sender) if message is not None else ""
        await (await self._archive()).save_configuration(
            name, configs, description=description, user=user or "", overwrite=bool(overwrite)
        )
        self.saved_count += len(configs)
        log.info("configuration saved", name=name, devices=list(configs), user=user)
        return list(configs)

    @slot
    async def list_configurations(self, device_id: str | None = None) -> list[dict[str, Any]]:
        """The configurations saved for a device (all devices for None), oldest first."""
        return [_info(i) for i in await (await self._archive()).list_configurations(device_id)]

    @slot
    async def get_saved_configuration(self, name: str, device_id: str) -> dict[str, Any]:
        """One saved configuration with its description (not ``get_configuration``: that is the
        device's own)."""
        saved = await (await self._archive()).get_configuration(name, device_id)
        return _info(saved) | {"config": saved.config}

    @slot
    async def delete_configuration(self, name: str, device_id: str) -> None:
        await (await self._archive()).delete_configuration(name, device_id)


def _info(info: ConfigurationInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "device_id": info.device_id,
        "description": info.description,
        "user": info.user,
        "timestamp": info.timestamp,
    }


__all__ = ["ConfigurationManager"]
