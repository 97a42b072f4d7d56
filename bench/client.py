"""Client API beside raw aio-pika doing the same exchange, in the same run, over RabbitMQ.

    python bench/client.py [--broker URL] [--n 2000] [--loop uvloop|asyncio]

Measures
- ``set_wait`` round trips/s: request ``set`` -> device validates and applies -> reply and ``changed``
  signal -> the proxy shows the value. Raw: the same three messages with msgpack bodies, a dict update
  on the server, the client waiting for reply and signal.
- property updates/s a proxy follows from one busy device (one change per loop iteration, and four
  properties per iteration, which the device batches into one message). Raw: one message per change.
- time from ``connect_device`` to a usable proxy (bind, schema and configuration fetched; then
  released). Raw: bind the signal key, one request for the configuration, unbind.

Device and client run in this process, each with its own broker connection, as do the raw peers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import karabo_async as ka
from karabo_async import Property, State, connect_device, set_wait, slot, wait_until
from karabo_async.device import Device


class BusyMotor(Device):
    velocity: float = Property(1.0, ge=0.0, le=1e9)
    counter: int = Property(0, readonly=True)
    a: float = Property(0.0, readonly=True)
    b: float = Property(0.0, readonly=True)
    c: float = Property(0.0, readonly=True)

    async def on_initialization(self) -> None:
        self.state = State.ON

    @slot
    async def spin(self, n: int, per_iteration: int) -> None:
        asyncio.get_running_loop().create_task(self._spin(n, per_iteration))

    async def _spin(self, n: int, per_iteration: int) -> None:
        for i in range(1, n + 1):
            if per_iteration == 1:
                self.counter = i
            else:
                self.set_properties({"a": float(i), "b": float(i), "c": float(i), "counter": i})
            await asyncio.sleep(0)


# --- raw aio-pika peers --------------------------------------------------------------------------


class Raw:
    def __init__(self, url: str, domain: str) -> None:
        self.url, self.domain = url, domain
        self.exchange_name = f"{domain}.rawbench"

    async def start(self) -> None:
        self.conn_server = await aio_pika.connect(self.url)
        self.conn_client = await aio_pika.connect(self.url)
        self.sch = await self.conn_server.channel(publisher_confirms=False)
        self.cch = await self.conn_client.channel(publisher_confirms=False)
        self.sx = await self.sch.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC)
        self.cx = await self.cch.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC)
        self.values: dict[str, Any] = {"velocity": 1.0}
        self.mirror: dict[str, Any] = {}
        self.replies: dict[str, asyncio.Future[Any]] = {}
        self.signal_seen = asyncio.Event()
        self.updates = 0
        sq = await self.sch.declare_queue(f"{self.domain}.raw.server", exclusive=True)
        await sq.bind(self.exchange_name, "server.#")
        await sq.consume(self._serve, no_ack=True)
        self.cq = await self.cch.declare_queue(f"{self.domain}.raw.client", exclusive=True)
        await self.cq.bind(self.exchange_name, "client.#")
        await self.cq.bind(self.exchange_name, "signal.server.changed")
        await self.cq.consume(self._client_in, no_ack=True)

    async def stop(self) -> None:
        await self.conn_client.close()
        await self.conn_server.close()

    async def _publish(self, exchange: Any, key: str, body: Any, **props: Any) -> None:
        # The same readable envelope the framework's protocol carries (docs/protocol.md), so both sides
        # pay for the same information on the wire.
        target, _, name = key.partition(".")
        headers = {"kind": "request", "sender": "raw", "target": target, "slot": name, "user": "bench"}
        message = aio_pika.Message(
            msgpack.packb(body),
            headers=headers,
            content_type="application/msgpack",
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
            app_id="karabo-async",
            timestamp=time.time(),
            **props,
        )
        await exchange.publish(message, routing_key=key)

    async def _serve(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        slot_name, args = msgpack.unpackb(message.body)
        if slot_name == "set":
            changes = {k: float(v) for k, v in args[0].items()}
            self.values.update(changes)
            await self._publish(self.sx, "client.reply", changes, correlation_id=message.correlation_id)
            await self._publish(self.sx, "signal.server.changed", changes)
        elif slot_name == "get_configuration":
            await self._publish(self.sx, "client.reply", self.values, correlation_id=message.correlation_id)
        elif slot_name == "spin":
            n, per_iteration = args
            for i in range(1, n + 1):
                for key in ("a", "b", "c", "counter")[-per_iteration:]:
                    await self._publish(self.sx, "signal.server.changed", {key: i})

    async def _client_in(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        body = msgpack.unpackb(message.body)
        if message.routing_key == "client.reply":
            future = self.replies.pop(message.correlation_id or "", None)
            if future is not None:
                future.set_result(body)
        else:
            self.mirror.update(body)
            self.updates += len(body)
            self.signal_seen.set()

    async def request(self, slot_name: str, *args: Any) -> Any:
        cid = uuid.uuid4().hex
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.replies[cid] = future
        await self._publish(self.cx, "server.request", [slot_name, list(args)], correlation_id=cid)
        return await future

    async def set_wait(self, value: float) -> None:
        self.signal_seen.clear()
        await self.request("set", {"velocity": value})
        while self.mirror.get("velocity") != value:
            await self.signal_seen.wait()
            self.signal_seen.clear()

    async def connect(self) -> None:
        await self.cq.bind(self.exchange_name, "signal.other.changed")
        await self.request("get_configuration")
        await self.cq.unbind(self.exchange_name, "signal.other.changed")


# --- measurements --------------------------------------------------------------------------------


async def timed(n: int, action: Callable[[int], Awaitable[Any]], warmup: bool = True) -> float:
    for i in range(min(50, n // 10) if warmup else 0):
        await action(-1 - i)
    start = time.perf_counter()
    for i in range(n):
        await action(i)
    return time.perf_counter() - start


async def interleaved(
    n: int, framework: Callable[[int], Awaitable[Any]], raw: Callable[[int], Awaitable[Any]], chunk: int = 50
) -> tuple[float, float]:
    """Seconds each side took for ``n`` actions, run in alternating chunks so that the load other
    processes put on this shared machine falls on both sides alike."""
    await timed(chunk, framework)
    await timed(chunk, raw)
    fw = rw = 0.0
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        fw += await timed(size, lambda i, s=start: framework(s + i), warmup=False)
        rw += await timed(size, lambda i, s=start: raw(s + i), warmup=False)
    return fw, rw


async def main(url: str, n: int) -> list[tuple[str, str, float, float, str]]:
    domain = f"bench_{uuid.uuid4().hex[:8]}"
    motor = BusyMotor({}, device_id="busy", broker=url, domain=domain)
    await motor.start_device()
    raw = Raw(url, domain)
    await raw.start()
    rows: list[tuple[str, str, float, float, str]] = []
    try:
        async with ka.connect(url, domain), connect_device("busy") as proxy:

            async def fw_set(i: int) -> None:
                await set_wait(proxy, velocity=float(i + 10_000))

            async def raw_set(i: int) -> None:
                await raw.set_wait(float(i + 10_000))

            fw_seconds, raw_seconds = await interleaved(n, fw_set, raw_set)
            rows.append(("set_wait round trips", "/s", n / fw_seconds, n / raw_seconds, ">= 0.9"))

            for per_iteration, label in ((4, "4 properties per iteration"), (1, "1 property per iteration")):
                changes = n * 10
                start = time.perf_counter()
                await proxy.spin(changes, per_iteration)
                await wait_until(lambda c=changes: proxy.counter == c, timeout=300)  # type: ignore[misc]
                fw = changes * per_iteration / (time.perf_counter() - start)
                raw.updates = 0
                raw.mirror.clear()
                raw.signal_seen.clear()
                start = time.perf_counter()
                await raw._publish(raw.cx, "server.request", ["spin", [changes, per_iteration]])
                while raw.mirror.get("counter") != changes:
                    await raw.signal_seen.wait()
                    raw.signal_seen.clear()
                rw = changes * per_iteration / (time.perf_counter() - start)
                rows.append((f"updates followed, {label}", "/s", fw, rw, ">= 1.0"))
                motor.set_property("counter", 0)
                await wait_until(lambda: proxy.counter == 0, timeout=10)

            m = max(20, n // 20)
            client2 = await ka.connect(url, domain)
            try:
                manager = ka.proxy.manager_of(client2)

                async def fresh(i: int) -> None:  # a new subscription each time, released after
                    link = await manager.link("busy")
                    link.users += 1
                    await manager.release(link)

                fw_seconds, raw_seconds = await interleaved(m, fresh, lambda i: raw.connect(), chunk=10)
            finally:
                await client2.stop()
            rows.append(
                ("connect_device to usable proxy", "ms", fw_seconds / m * 1e3, raw_seconds / m * 1e3, "lower")
            )
    finally:
        await raw.stop()
        await motor.stop_device()
    return rows


def report(rows: list[tuple[str, str, float, float, str]], loop: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"karabo-async client vs raw aio-pika ({loop}, pid {os.getpid()})")
    for column in ("measure", "framework", "raw aio-pika", "ratio", "target"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for name, unit, fw, rw, target in rows:
        ratio = fw / rw if unit != "ms" else rw / fw
        fmt = "{:,.0f} " if unit == "/s" else "{:.2f} "
        table.add_row(
            name,
            fmt.format(fw) + unit,
            fmt.format(rw) + unit,
            f"{ratio:.2f}",
            target if unit != "ms" else "-",
        )
    Console().print(table)
    print("ratio: framework / raw for rates, raw / framework for times (higher is better)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--broker", default=os.environ.get("KARABO_BROKER", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument("--n", type=int, default=2000, help="round trips per measurement")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    options = parser.parse_args()
    if options.loop == "uvloop":
        result = ka.run(main(options.broker, options.n))
    else:
        result = asyncio.run(main(options.broker, options.n))
    report(result, options.loop)
