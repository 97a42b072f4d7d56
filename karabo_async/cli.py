"""The ``karabo-async`` command (also ``python -m karabo_async``)."""

from __future__ import annotations

import argparse
import importlib
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from .hub import short_hostname
from .logs import configure as configure_logging
from .transport import default_broker, default_domain


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="karabo-async", description="Control system over RabbitMQ")
    parser.add_argument("--broker", default=None, help="broker URL (env KARABO_BROKER; memory:// in-process)")
    parser.add_argument("--domain", default=None, help="domain (env KARABO_DOMAIN, default 'karabo')")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    server = sub.add_parser("server", help="run a device server")
    server.add_argument(
        "--id", dest="server_id", default=None, help="server id (default <host>_Server_<pid>)"
    )
    server.add_argument("--plugin-dir", action="append", default=[], help="folder with device classes")
    server.add_argument("--init", default=None, help="YAML or JSON file of devices to start")
    server.add_argument("--heartbeat-interval", type=float, default=5.0)

    sub.add_parser("demo", help="start two instances that talk, print what they said")

    shm = sub.add_parser("shm", help="shared-memory pools of data pipelines")
    shm.add_argument("shm_command", choices=["monitor"])
    shm.add_argument("shm_args", nargs=argparse.REMAINDER)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


COMMAND_MODULES: tuple[str, ...] = ()
"""Modules that add subcommands: each has ``register(subparsers)``, and its parsers set ``run`` to
``async def run(args) -> int`` with ``parser.set_defaults(run=...)``."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("DEBUG" if args.debug else os.environ.get("KARABO_LOG_LEVEL", "INFO"))
    broker = args.broker or os.environ.get("KARABO_BROKER")
    domain = args.domain or os.environ.get("KARABO_DOMAIN")
    try:
        if args.command == "server":
            from .server import run_server

            return _run(
                run_server(
                    args.server_id, args.plugin_dir, broker, domain, args.init, args.heartbeat_interval
                )
            )
        if args.command == "demo":
            return _run(_demo(broker or default_broker(), domain or default_domain()))
        if getattr(args, "run", None) is not None:
            args.broker, args.domain = broker, domain
            return _run(args.run(args))
        if args.command == "shm":
            from .pipeline.monitor import monitor_main

            return _run(monitor_main(list(args.shm_args)))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"karabo-async: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 2


def _run(coro: Coroutine[Any, Any, Any]) -> int:
    """Run on uvloop when it is installed: lower latency for every round trip."""
    try:
        import uvloop
    except ImportError:
        return int(asyncio.run(coro) or 0)
    return int(uvloop.run(coro) or 0)


async def _demo(broker: str, domain: str) -> int:
    from .signalslot import SignalSlotable
    from .transport.amqp import _redact

    if broker.startswith("amqp"):
        from .errors import BrokerUnavailable

        try:
            probe = SignalSlotable(f"demo-probe-{os.getpid()}", broker=broker, domain=domain)
            await probe.start()
            await probe.stop()
            print(f"using RabbitMQ at {_redact(broker)}")
        except BrokerUnavailable:
            print(f"no broker answers at {_redact(broker)}: running on the in-process broker")
            broker = "memory://demo"
    host = short_hostname()
    async with SignalSlotable(f"{host}-bob", broker=broker, domain=domain, heartbeat_interval=1) as bob:
        bob.register_slot(lambda name: f"hello {name}", "greet")
        async with SignalSlotable(
            f"{host}-alice", broker=broker, domain=domain, heartbeat_interval=1
        ) as alice:
            reply = await alice.request(bob.instance_id, "greet", "alice", timeout=5)
            print(f"alice asked bob to greet: {reply!r}")
            print("topology:", ", ".join(sorted(alice.topology)))
    return 0
