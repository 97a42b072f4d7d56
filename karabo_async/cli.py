"""The ``karabo-async`` command (also ``python -m karabo_async``).

Global options (``--broker``, ``--domain``, ``--json``, ``--timeout``, ``--debug``) are accepted
anywhere on the line. Errors are one line on stderr with a nonzero exit code (see docs/cli.md);
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import structlog

from .commands import BUILTIN_COMMANDS
from .commands.common import EXIT_INTERRUPTED, EXIT_USAGE, error_line, hoist_global_options
from .logs import configure as configure_logging

log = structlog.get_logger(__name__)

# Commands whose framework log lines are what the user came for; the others log errors only (their
# own one-line error says what went wrong; `macro run` streams the macro's own log on stdout).
CHATTY_COMMANDS = frozenset({"server", "demo"})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="karabo-async", description="Control system over RabbitMQ")
    parser.add_argument("--broker", default=None, help="broker URL (env KARABO_BROKER; memory:// in-process)")
    parser.add_argument("--domain", default=None, help="domain (env KARABO_DOMAIN, default 'karabo')")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for replies")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    server = sub.add_parser("server", help="run a device server")
    server.add_argument(
        "--id", dest="server_id", default=None, help="server id (default <host>_Server_<pid>)"
    )
    server.add_argument("--plugin-dir", action="append", default=[], help="folder with device classes")
    server.add_argument("--init", default=None, help="YAML or JSON file of devices to start")
    server.add_argument("--heartbeat-interval", type=float, default=5.0)

    shm = sub.add_parser("shm", help="shared-memory pools of data pipelines")
    shm.add_argument("shm_command", choices=["monitor"])
    shm.add_argument("shm_args", nargs=argparse.REMAINDER)
    for name in (*BUILTIN_COMMANDS, *COMMAND_MODULES):
        importlib.import_module(name).register(sub)
    return parser


COMMAND_MODULES: tuple[str, ...] = ("karabo_async.services.commands",)
"""Modules that add subcommands: each has ``register(subparsers)``, and its parsers set ``run`` to
``async def run(args) -> int`` with ``parser.set_defaults(run=...)``."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(hoist_global_options(sys.argv[1:] if argv is None else argv))
    default_level = "INFO" if args.command in CHATTY_COMMANDS else "ERROR"
    configure_logging("DEBUG" if args.debug else os.environ.get("KARABO_LOG_LEVEL", default_level))
    if not args.debug:  # the broker library's own error lines repeat what our one-line error says
        for name in ("aio_pika", "aiormq"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    args.broker = args.broker or os.environ.get("KARABO_BROKER")
    args.domain = args.domain or os.environ.get("KARABO_DOMAIN")
    if args.timeout is not None and args.timeout <= 0:
        print("karabo-async: error: --timeout must be a positive number of seconds", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "server":
            from .server import run_server

            return _run(
                run_server(
                    args.server_id,
                    args.plugin_dir,
                    args.broker,
                    args.domain,
                    args.init,
                    args.heartbeat_interval,
                )
            )
        if getattr(args, "run_sync", None) is not None:  # runs its own loops (the shell)
            return int(args.run_sync(args))
        if getattr(args, "run", None) is not None:
            return _run(args.run(args))
        if args.command == "shm":
            from .pipeline.monitor import monitor_main

            return _run(monitor_main(list(args.shm_args)))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        code, line = error_line(exc, args.broker)
        log.debug("command failed", command=args.command, exc_info=exc)
        print(f"karabo-async: error: {line}", file=sys.stderr)
        return code
    return EXIT_USAGE


def _run(coro: Coroutine[Any, Any, Any]) -> int:
    """Run on uvloop when it is installed (lower latency for every round trip); SIGTERM and SIGINT
    cancel the command so that its cleanup (``finally``, going offline) runs."""
    try:
        import uvloop
    except ImportError:
        return int(asyncio.run(_interruptible(coro)) or 0)
    return int(uvloop.run(_interruptible(coro)) or 0)


async def _interruptible(coro: Coroutine[Any, Any, Any]) -> Any:
    loop = asyncio.get_running_loop()
    task = loop.create_task(coro)
    received: list[int] = []

    def stop(signum: int) -> None:
        received.append(signum)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop, signum)
    try:
        return await task
    except asyncio.CancelledError:
        if not received:
            raise
        return 128 + received[0]
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
