"""``karabo-async demo`` (what ``make demo`` runs): a device server with a simulated motor, the scan
macro stepping it, the topology and the scan's result printed, then everything stops.

It uses RabbitMQ when one answers at the broker URL, else runs in this process on the in-process
broker, and says which.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.table import Table

from ..errors import BrokerUnavailable, CommandLineError
from ..hub import Hub, short_hostname
from ..macro import load_macro_file, pick_macro, real_stdout
from ..server import DeviceServer
from ..transport import default_broker, default_domain
from ..transport.amqp import _redact
from .common import EXIT_ERROR, EXIT_OK, console, print_json
from .devices import topology_table

REPO = Path(__file__).resolve().parents[2]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="start a simulated motor, scan it with a macro, print what happened")
    p.add_argument("--steps", type=int, default=4, help="steps of the scan (default 4)")
    p.add_argument("--stop", type=float, default=2.0, help="last position of the scan in mm (default 2)")
    p.add_argument("--memory", action="store_true", help="use the in-process broker even if RabbitMQ answers")
    p.set_defaults(run=run)


def _folder(name: str) -> Path:
    for base in (Path.cwd(), REPO):
        if (base / name).is_dir():
            return base / name
    raise CommandLineError(f"no {name}/ folder here or in {REPO}: run the demo from the repository")


async def pick_broker(url: str, domain: str, say: Callable[[str], None]) -> str:
    """``url`` when a broker answers there, else the in-process broker; says which."""
    if url.startswith("amqp"):
        probe = Hub(
            f"{short_hostname()}-demo-probe-{os.getpid()}", broker=url, domain=domain, track_topology=False
        )
        try:
            await probe.start()
            await probe.stop()
        except BrokerUnavailable:
            say(
                f"no broker answers at {_redact(url)}: running everything in this process on the in-process broker"
            )
            return "memory://demo"
        say(f"using RabbitMQ at {_redact(url)} (domain {domain})")
        return url
    say(f"using the in-process broker {url}")
    return url


async def run(args: argparse.Namespace) -> int:
    # With --json, stdout carries only the JSON report; the story goes to stderr.
    out = sys.stderr if args.json else real_stdout()

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    domain = args.domain or default_domain()
    broker = (
        "memory://demo" if args.memory else await pick_broker(args.broker or default_broker(), domain, say)
    )
    scan = pick_macro(load_macro_file(_folder("macros") / "scan.py"), "Scan", "macros/scan.py")
    pid = os.getpid()
    server = DeviceServer(
        f"demo-server-{pid}",
        plugin_dirs=[_folder("devices")],
        broker=broker,
        domain=domain,
        heartbeat_interval=1,
    )
    async with server:
        motor_id = await server.instantiate("SimulatedMotor", f"demo-motor-{pid}", {"velocity": 5.0})
        macro = scan(
            {"motor_id": motor_id, "start": 0.0, "stop": args.stop, "steps": args.steps},
            device_id=f"demo-scan-{pid}",
            hub=server.hub,
        )

        def echo(text: str) -> None:
            out.write(text)
            out.flush()

        macro.output_listeners.append(echo)
        await macro.start_device()
        try:
            topology = {iid: dict(info) for iid, info in server.hub.topology.items()}
            say(f"scanning {motor_id} from 0 to {args.stop} mm in {args.steps} steps:")
            outcome = await macro.execute()
        finally:
            await macro.stop_device()
    positions = list(macro.positions)  # type: ignore[attr-defined]
    if args.json:
        print_json(
            {"broker": _redact(broker), "topology": topology, "outcome": outcome, "positions": positions}
        )
        return EXIT_OK if outcome == "finished" else EXIT_ERROR
    screen = console()
    screen.print(topology_table(topology, domain))
    screen.print(f"{macro.device_id}: {macro.status}")  # not a table title: those wrap at the table's width
    table = Table()
    table.add_column("step", justify="right")
    table.add_column("position (mm)", justify="right")
    for i, position in enumerate(positions):
        table.add_row(str(i), f"{position:.3f}")
    screen.print(table)
    if outcome != "finished":
        screen.print(f"the scan {outcome}: {macro.status}")
        return EXIT_ERROR
    return EXIT_OK
