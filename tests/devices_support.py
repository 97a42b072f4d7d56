"""Helpers for the tests of devices/ and the device server: plugin classes, change watchers,
server subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from karabo_async import Device, Hash, SignalSlotable
from karabo_async.server import _import_file

REPO_ROOT = Path(__file__).resolve().parent.parent
DEVICES_DIR = REPO_ROOT / "devices"
PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python")


def device_class(file: str, name: str) -> type[Device]:
    """A class from devices/ imported the way a server imports it (by path, not as a package)."""
    cls = getattr(_import_file(DEVICES_DIR / file), name)
    assert isinstance(cls, type) and issubclass(cls, Device)
    return cls


def memory_url() -> str:
    return f"memory://{uuid.uuid4().hex}"


class Watcher:
    """Every ``changed`` message of one device, as the merged latest values plus the history."""

    def __init__(self) -> None:
        self.history: list[Hash] = []
        self.latest: dict[str, Any] = {}
        self._changed = asyncio.Event()

    def on_changed(self, changes: Hash) -> None:
        self.history.append(changes)
        self.latest.update({key: changes[key] for key in changes})
        self._changed.set()

    def values_of(self, key: str) -> list[Any]:
        return [h[key] for h in self.history if key in h]

    async def until(self, predicate: Callable[[Watcher], bool], timeout: float = 10.0) -> None:
        """Wait for changes until ``predicate(self)`` holds."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def watching(client: SignalSlotable, device_id: str) -> AsyncIterator[Watcher]:
    watcher = Watcher()
    slot_name = f"on_changed_{device_id.replace('-', '_')}"
    client.register_slot(watcher.on_changed, slot_name)
    await client.connect(device_id, "changed", slot_name)
    try:
        yield watcher
    finally:
        await client.disconnect(device_id, "changed", slot_name)


async def until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a condition that offers no event to await (a subprocess, a file the server scans)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def server_command(
    server_id: str,
    broker: str,
    domain: str,
    plugin_dirs: Sequence[Path | str] = (DEVICES_DIR,),
    init: Path | str | None = None,
    heartbeat_interval: float | None = None,
) -> list[str]:
    cmd = [PYTHON, "-m", "karabo_async", "--broker", broker, "--domain", domain, "server", "--id", server_id]
    for folder in plugin_dirs:
        cmd += ["--plugin-dir", str(folder)]
    if init is not None:
        cmd += ["--init", str(init)]
    if heartbeat_interval is not None:
        cmd += ["--heartbeat-interval", str(heartbeat_interval)]
    return cmd


@contextmanager
def running(
    cmd: Sequence[str], cwd: Path = REPO_ROOT, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A server subprocess, stopped with SIGTERM (then killed) when the block ends."""
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            # shown by pytest when the test fails: what the server said is the first clue
            print(f"--- output of {' '.join(cmd[2:])} (exit {proc.returncode}):\n{proc.stdout.read()}")
            proc.stdout.close()


def output_of(proc: subprocess.Popen[str]) -> str:
    """Everything a finished subprocess printed."""
    assert proc.stdout is not None
    return proc.stdout.read()
