"""Device server at scale: instantiation time, idle cost and property-change throughput.

    python bench/devices.py [--broker URL] [--counts 100 1000] [--idle-seconds 10]

Each server runs as its own process (``python -m karabo_async server``), as in production, so its
CPU is measured alone (psutil). The broker traffic of an idle server is counted by a tracing
consumer bound with ``#`` to every exchange of the bench's domain.

Targets: 1,000 devices online in < 10 s; an idle server with 1,000 devices uses < 2 % of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aio_pika
import psutil
from rich.console import Console
from rich.table import Table

from karabo_async import Hash, SignalSlotable

REPO = Path(__file__).resolve().parent.parent
DEVICES = REPO / "devices"
CHATTY = '''
import asyncio
from karabo_async import Device, Property, slot

class Chatty(Device):
    """Publishes property changes as fast as it can, one change per loop iteration."""
    value: int = Property(0, readonly=True)

    @slot
    async def burst(self, count: int) -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        for i in range(1, count + 1):
            self.value = i
            await asyncio.sleep(0)  # changes within one iteration are batched: force one message each
        return loop.time() - began
'''


@contextmanager
def server_process(
    server_id: str, broker: str, domain: str, plugin_dir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-m", "karabo_async", "--broker", broker, "--domain", domain, "server"]
    cmd += ["--id", server_id, "--plugin-dir", str(plugin_dir)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.01)


async def instantiate_many(client: SignalSlotable, server_id: str, count: int) -> float:
    """Seconds from the first instantiate request until all ``count`` devices are in the topology."""
    ids = [f"{server_id}-m{i}" for i in range(count)]
    began = time.perf_counter()
    pending = asyncio.Semaphore(100)  # the requests in flight at once, like a busy GUI or script

    async def one(device_id: str) -> None:
        async with pending:
            await client.request(server_id, "instantiate", "SimulatedMotor", device_id, {}, timeout=60)

    await asyncio.gather(*(one(d) for d in ids))
    await until(lambda: all(d in client.topology for d in ids), 60, f"{count} devices online")
    return time.perf_counter() - began


async def idle_cost(
    broker: str, domain: str, proc: subprocess.Popen[bytes], seconds: float
) -> tuple[float, Counter[str]]:
    """CPU percent of one core used by the server process, and the messages seen on the domain."""
    connection = await aio_pika.connect(broker)
    seen: Counter[str] = Counter()
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        for name in ("slots", "signals", "broadcast", "replies", "heartbeats", "returns"):
            exchange = await channel.get_exchange(f"{domain}.{name}", ensure=False)
            await queue.bind(exchange, "#")

        async def trace(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            seen[
                f"{(message.exchange or '').rsplit('.', 1)[-1]}:{(message.routing_key or '').split('.', 1)[0]}"
            ] += 1

        await queue.consume(trace, no_ack=True)
        process = psutil.Process(proc.pid)
        process.cpu_percent(None)
        await asyncio.sleep(seconds)
        cpu = process.cpu_percent(None)
    finally:
        await connection.close()
    return cpu, seen


async def change_rate(client: SignalSlotable, device_id: str, count: int) -> tuple[float, float, int]:
    """Changes per second published by one device, and received by one subscriber."""
    received = 0
    done = asyncio.Event()
    first = last = 0.0

    def on_changed(changes: Hash) -> None:
        nonlocal received, first, last
        if "value" not in changes:
            return
        received += 1
        last = time.perf_counter()
        if received == 1:
            first = last
        if changes["value"] == count:
            done.set()

    client.register_slot(on_changed, "on_changed")
    await client.connect(device_id, "changed", "on_changed")
    began = time.perf_counter()
    publish_seconds = await client.request(device_id, "burst", count, timeout=120)
    async with asyncio.timeout(120):
        await done.wait()
    receive_seconds = last - began
    return count / publish_seconds, received / receive_seconds, received


async def main(broker: str, counts: list[int], idle_seconds: float, changes: int) -> int:
    domain = f"bench_{uuid.uuid4().hex[:8]}"
    rows: list[tuple[str, str, str]] = []
    ok = True
    async with SignalSlotable("bench-client", broker=broker, domain=domain, heartbeat_interval=5) as client:
        for count in counts:
            server_id = f"bench-{count}"
            with server_process(server_id, broker, domain, DEVICES) as proc:
                await client.topology.wait_for(server_id, timeout=30)
                seconds = await instantiate_many(client, server_id, count)
                target = " (target < 10 s)" if count == 1000 else ""
                if count == 1000 and seconds >= 10:
                    ok = False
                rows.append((f"instantiate {count} devices until all online", f"{seconds:.2f} s", target))
                if count == max(counts):
                    cpu, seen = await idle_cost(broker, domain, proc, idle_seconds)
                    ok = ok and cpu < 2.0
                    rows.append(
                        (
                            f"idle CPU, server with {count} devices",
                            f"{cpu:.2f} % of a core",
                            " (target < 2 %)",
                        )
                    )
                    total = sum(seen.values())
                    rows.append(
                        (
                            f"broker messages/s, idle domain with {count} devices",
                            f"{total / idle_seconds:.2f}",
                            "",
                        )
                    )
                    detail = ", ".join(f"{k} {v / idle_seconds:.2f}/s" for k, v in seen.most_common())
                    rows.append(("  of which (exchange:event)", detail or "none", ""))
                    rss = psutil.Process(proc.pid).memory_info().rss / 2**20
                    rows.append((f"server memory with {count} devices", f"{rss:.0f} MiB", ""))
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "chatty.py").write_text(textwrap.dedent(CHATTY))
            with server_process("bench-chatty", broker, domain, Path(folder)):
                await client.topology.wait_for("bench-chatty", timeout=30)
                await client.request("bench-chatty", "instantiate", "Chatty", "chatty", {}, timeout=10)
                published, received, got = await change_rate(client, "chatty", changes)
                rows.append(("property changes/s one device publishes", f"{published:,.0f}", ""))
                rows.append(
                    (
                        "property changes/s one subscriber receives",
                        f"{received:,.0f}",
                        f" ({got} of {changes})",
                    )
                )
    table = Table(title=f"bench/devices.py on {os.cpu_count()} cores, broker {broker.split('@')[-1]}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("note")
    for row in rows:
        table.add_row(*row)
    Console(width=140).print(table)
    print("targets met" if ok else "a target was missed")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--broker", default=os.environ.get("KARABO_BROKER", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--changes", type=int, default=20_000)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.broker, args.counts, args.idle_seconds, args.changes)))
