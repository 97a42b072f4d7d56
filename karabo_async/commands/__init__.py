"""Subcommands of ``karabo-async``, one module per concept (devices, monitor, macros, shell, demo).

Each module has ``register(subparsers)``; its parsers set ``run`` (``async def run(args) -> int``).
Shared helpers (global options, value parsing, errors, output) live in :mod:`.common`.
"""

from __future__ import annotations

BUILTIN_COMMANDS: tuple[str, ...] = (
    "karabo_async.commands.devices",
    "karabo_async.commands.monitor",
    "karabo_async.commands.macros",
    "karabo_async.commands.shell",
    "karabo_async.commands.demo",
)
