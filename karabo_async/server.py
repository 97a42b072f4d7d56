"""DeviceServer: one process, one event loop, one broker connection for many devices.

It finds device classes through the entry-point group ``karabo_async.devices`` and in plugin
folders (a .py file dropped into a folder while the server runs is offered without a restart; a
file that fails to import is reported, never fatal), announces the classes with their schemas in
its instance info, and instantiates and shuts down devices on request. It sends one heartbeat for
itself and all its devices, and reports the death of one of its devices at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import inspect
import json
import signal
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

from .device import Device
from .errors import (
    ConfigurationError,
    DeviceInitializationError,
    InstanceIdInUse,
    KaraboError,
    UnknownClass,
)
from .hub import Hub
from .plugins import import_file
from .schema import schema_of
from .signalslot import SignalSlotable, generate_instance_id
from .wire import check_instance_id

__all__ = ["DeviceServer", "UnknownClass", "load_init_file", "run_server"]

log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP = "karabo_async.devices"
PLUGIN_SCAN_INTERVAL = 1.0


class _ServerSignalSlotable(SignalSlotable):
    instance_type = "server"


class DeviceServer:
    """Hosts devices. ``plugin_dirs`` are scanned for Device subclasses; ``classes`` adds some directly."""

    def __init__(
        self,
        server_id: str | None = None,
        *,
        plugin_dirs: Iterable[str | Path] = (),
        classes: Iterable[type[Device]] = (),
        broker: str | None = None,
        domain: str | None = None,
        heartbeat_interval: float = 5.0,
        entry_points: bool = True,
        scan_interval: float = PLUGIN_SCAN_INTERVAL,
    ) -> None:
        self.server_id = check_instance_id(server_id or generate_instance_id("server"))
        self.hub = Hub(self.server_id, broker=broker, domain=domain, heartbeat_interval=heartbeat_interval)
        self.plugin_dirs = [Path(p) for p in plugin_dirs]
        self.classes: dict[str, type[Device]] = {}
        self.plugin_errors: dict[str, str] = {}
        self.devices: dict[str, Device] = {}
        self._files: dict[Path, float] = {}
        self._entry_points = entry_points
        self.scan_interval = scan_interval
        for cls in classes:
            self.classes[cls.__name__] = cls
        self.signalslot = _ServerSignalSlotable(
            self.server_id, hub=self.hub, class_id="DeviceServer", info={"server": self.server_id}
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._register_slots()

    # --- plugins --------------------------------------------------------------------------------
    def load_plugins(self) -> bool:
        """Scan entry points and plugin folders; True when the set of classes changed."""
        before = set(self.classes)
        if self._entry_points:
            self._entry_points = False  # installed packages do not change while we run
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                try:
                    self._add_classes(ep.load(), f"entry point {ep.name}")
                except Exception as exc:
                    self._plugin_failed(f"entry point {ep.name}", exc)
        for folder in self.plugin_dirs:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.py")):
                if path.name.startswith("_"):
                    continue
                mtime = path.stat().st_mtime
                if self._files.get(path) == mtime:
                    continue
                self._files[path] = mtime
                try:
                    self._add_classes(_import_file(path), str(path))
                    self.plugin_errors.pop(str(path), None)
                except Exception as exc:
                    self._plugin_failed(str(path), exc)
        return set(self.classes) != before

    def _add_classes(self, obj: Any, origin: str) -> None:
        candidates = vars(obj).values() if isinstance(obj, ModuleType) else [obj]
        for value in candidates:
            if (
                isinstance(value, type)
                and issubclass(value, Device)
                and value is not Device
                and not inspect.isabstract(value)
                and (not isinstance(obj, ModuleType) or value.__module__ == obj.__name__)
            ):
                schema_of(value)  # a class whose schema is broken is a plugin error, found now
                self.classes[value.__name__] = value
                log.debug(
                    "device class offered", server=self.server_id, class_id=value.__name__, origin=origin
                )

    def _plugin_failed(self, origin: str, exc: BaseException) -> None:
        self.plugin_errors[origin] = f"{type(exc).__name__}: {exc}"
        log.error(
            "plugin failed to load", server=self.server_id, plugin=origin, error=self.plugin_errors[origin]
        )

    def class_info(self) -> dict[str, Any]:
        return {name: schema_of(cls).to_document() for name, cls in self.classes.items()}

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.load_plugins()
        self.signalslot._extra_info.update(classes=self.class_info(), plugin_errors=dict(self.plugin_errors))
        await self.hub.start()
        try:
            await self.signalslot.start()
        except BaseException:
            await self.hub.stop()
            raise
        _cleanup_shared_memory()
        if self.plugin_dirs:
            self._tasks.append(asyncio.get_running_loop().create_task(self._watch_plugins()))
        log.info("device server online", server=self.server_id, classes=sorted(self.classes))

    async def _watch_plugins(self) -> None:
        while True:
            await asyncio.sleep(self.scan_interval)
            if self.load_plugins() or self.plugin_errors != self.signalslot._extra_info.get("plugin_errors"):
                await self.signalslot.update_info(
                    classes=self.class_info(), plugin_errors=dict(self.plugin_errors)
                )

    async def stop(self) -> None:
        """Stop every device cleanly (each reported gone), then the server itself."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(
            *(self._stop_device(d) for d in list(self.devices.values())), return_exceptions=True
        )
        await self.signalslot.stop()
        await self.hub.stop()
        self._stopped.set()

    async def __aenter__(self) -> DeviceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def run_forever(self) -> None:
        """Run until SIGTERM, SIGINT or the ``shutdown`` slot."""
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []  # a reference, so the stop task is not collected midway

        def on_signal(sig: signal.Signals) -> None:
            log.info("stopping on signal", server=self.server_id, signal=sig.name)
            if not stopping:
                stopping.append(loop.create_task(self.stop()))

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal, sig)
        await self._stopped.wait()

    # --- devices ---------------------------------------------------------------------------------
    async def instantiate(
        self, class_id: str, device_id: str | None, config: Mapping[str, Any] | None = None
    ) -> str:
        """Validate and start a device; nothing is started when anything is wrong."""
        cls = self.classes.get(class_id)
        if cls is None:
            self.load_plugins()
            cls = self.classes.get(class_id)
        if cls is None:
            raise UnknownClass(
                f"server {self.server_id!r} has no device class {class_id!r}; it has {sorted(self.classes)}"
            )
        if device_id is not None:
            check_instance_id(device_id)
            if device_id in self.devices:
                raise InstanceIdInUse(device_id, self.hub.domain)
        try:
            device = cls(dict(config or {}), device_id=device_id, server_id=self.server_id, hub=self.hub)
        except KaraboError:
            raise
        except Exception as exc:  # the author's constructor: report it, never take the server down
            log.error("device constructor raised", server=self.server_id, class_id=class_id, error=str(exc))
            raise DeviceInitializationError(
                f"{class_id}({device_id or ''}): constructor raised {type(exc).__name__}: {exc}"
            ) from exc
        device._on_shutdown_request = self._stop_device
        device._on_stopped = self._device_stopped
        self.devices[device.device_id] = device
        try:
            await device.start_device()
        except BaseException:
            self.devices.pop(device.device_id, None)
            raise
        log.info("device started", server=self.server_id, device=device.device_id, class_id=class_id)
        return device.device_id

    async def _stop_device(self, device: Device) -> None:
        self.devices.pop(device.device_id, None)
        await device.stop_device()

    def _device_stopped(self, device: Device) -> None:
        """A device went offline (asked to, or on its own): it is no longer hosted here. Its going
        offline already told the domain, through this server's hub, at once."""
        if self.devices.get(device.device_id) is device:
            del self.devices[device.device_id]
            log.warning("device stopped on its own", server=self.server_id, device=device.device_id)

    async def shutdown_device(self, device_id: str) -> None:
        device = self.devices.get(device_id)
        if device is None:
            raise KeyError(f"server {self.server_id!r} hosts no device {device_id!r}")
        await self._stop_device(device)

    async def start_from_file(self, path: str | Path) -> dict[str, str]:
        """Start the devices an init file lists; an invalid entry is reported, the others start.

        Returns ``{device_id: "started" | error text}``; an id repeated in the file is reported as
        ``"<id> (entry <n>)"`` so the first entry's outcome is not lost.
        """
        entries = load_init_file(path)
        results: dict[str, str] = {}
        for i, entry in enumerate(entries):
            label = str(entry.get("id", f"entry {i}")) if isinstance(entry, Mapping) else f"entry {i}"
            if label in results:  # a repeated id: keep the first entry's outcome, report this one apart
                label = f"{label} (entry {i})"
            try:
                if not isinstance(entry, Mapping) or "class" not in entry:
                    raise ConfigurationError(
                        [(label, "each entry needs 'id', 'class' and optional 'config'")]
                    )
                unknown = set(entry) - {"id", "class", "config"}
                if unknown:
                    raise ConfigurationError([(label, f"unknown keys {sorted(unknown)} in the init entry")])
                config = entry.get("config") or {}
                if not isinstance(config, Mapping):
                    raise ConfigurationError([(label, "'config' must be a mapping")])
                await self.instantiate(str(entry["class"]), entry.get("id"), config)
                results[label] = "started"
            except Exception as exc:  # one bad entry must not keep the others from starting
                results[label] = f"{type(exc).__name__}: {exc}"
                log.error("init entry not started", server=self.server_id, device=label, error=results[label])
        return results

    # --- slots -----------------------------------------------------------------------------------
    def _register_slots(self) -> None:
        ss = self.signalslot
        ss.register_slot(self._slot_instantiate, "instantiate")
        ss.register_slot(self.shutdown_device, "shutdown_device")
        ss.register_slot(self._slot_get_class_schema, "get_class_schema")
        ss.register_slot(lambda: sorted(self.classes), "get_classes")
        ss.register_slot(lambda: sorted(self.devices), "get_devices")
        ss.register_slot(lambda: dict(self.plugin_errors), "get_plugin_errors")
        ss.register_slot(self._slot_shutdown, "shutdown")

    async def _slot_instantiate(self, class_id: str, device_id: str | None = None, config: Any = None) -> str:
        if config is not None and not isinstance(config, Mapping):
            raise ConfigurationError([("config", f"must be a mapping, got {type(config).__name__}")])
        if config is not None and hasattr(config, "to_dict"):
            config = config.to_dict()
        return await self.instantiate(class_id, device_id, config)

    def _slot_get_class_schema(self, class_id: str) -> dict[str, Any]:
        cls = self.classes.get(class_id)
        if cls is None:
            raise UnknownClass(f"server {self.server_id!r} has no device class {class_id!r}")
        return schema_of(cls).to_document()

    async def _slot_shutdown(self, device_id: str | None = None) -> None:
        """``shutdown()`` stops the server with its devices; ``shutdown(device_id)`` one device only."""
        if device_id is not None:
            await self.shutdown_device(device_id)
            return

        async def later() -> None:
            await asyncio.sleep(0)  # let the reply go out first
            await self.stop()

        # Not one of the signalslot's own tasks: stopping it cancels those, and with them the stop.
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(later())

    _stopping: asyncio.Task[None] | None = None


def load_init_file(path: str | Path) -> list[Any]:
    """Read ``{"devices": [{"id": ..., "class": ..., "config": {...}}]}`` from YAML or JSON."""
    text = Path(path).read_text()
    try:
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise ConfigurationError([(str(path), f"cannot parse init file: {exc}")]) from exc
    if not isinstance(data, Mapping) or not isinstance(data.get("devices"), list):
        raise ConfigurationError(
            [(str(path), "an init file holds {'devices': [ {id, class, config}, ... ]}")]
        )
    return list(data["devices"])


def _import_file(path: Path) -> ModuleType:
    return import_file(path, "karabo_plugins")


def _cleanup_shared_memory() -> None:
    """Free pipeline pools left behind by dead processes of this session (the shm monitor's job,
    done once at server start as well)."""
    try:
        from .pipeline import cleanup_session

        cleanup_session()
    except Exception as exc:
        log.warning("shared-memory cleanup failed", error=str(exc))


async def run_server(
    server_id: str | None,
    plugin_dirs: list[str],
    broker: str | None,
    domain: str | None,
    init_file: str | None = None,
    heartbeat_interval: float = 5.0,
) -> int:
    """What ``karabo-async server`` runs."""
    if init_file:
        load_init_file(init_file)  # an unreadable file is an error before anything starts
    server = DeviceServer(
        server_id,
        plugin_dirs=plugin_dirs,
        broker=broker,
        domain=domain,
        heartbeat_interval=heartbeat_interval,
    )
    await server.start()
    if init_file:
        results = await server.start_from_file(init_file)
        for device_id, outcome in results.items():
            print(f"{device_id}: {outcome}", flush=True)
    print(f"server {server.server_id} online with classes {', '.join(sorted(server.classes))}", flush=True)
    await server.run_forever()
    return 0
