"""Messaging core beside raw aio-pika: request/reply, one-way calls, signals, heartbeats under load.

Usage::

    python bench/messaging.py             # full run, default asyncio loop and uvloop (~2-3 minutes)
    python bench/messaging.py --quick     # short run, to see that it works
    python bench/messaging.py --loop uvloop --style markdown

The broker is env KARABO_BROKER or amqp://guest:guest@127.0.0.1:5672/ (``--broker`` overrides); each
run uses a fresh domain and deletes its exchanges at the end. Every pattern is measured for the
framework (:class:`~karabo_async.signalslot.SignalSlotable`) and for a plain aio-pika program doing
the same exchange pattern (one queue per peer on a topic exchange, karabo-like headers, msgpack
bodies, ``queue.consume`` without acknowledgements, replies to the requester's own queue), in the
same process and alternating (framework, raw, raw, framework) so both see the same machine noise.
What each number means is in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika
import msgpack
from _common import (
    LOOPS,
    LoopResult,
    Row,
    Stopwatch,
    check_target,
    percentile,
    phase,
    print_table,
    run_children,
    run_with_loop,
    table_rows,
    wait_until,
)

from karabo_async import codec
from karabo_async.hub import Hub
from karabo_async.signalslot import SignalSlotable
from karabo_async.topology import INSTANCE_GONE, TopologyEvent
from karabo_async.transport import default_broker
from karabo_async.wire import Message

IN_FLIGHT = 16
BLOCKS = 3
SUBSCRIBERS = 10
HEARTBEAT_INTERVAL = 0.2  # of the heartbeating subprocess; the others beat slowly, to stay out of the way
QUIET_INTERVAL = 2.0
SLOW_SLOT_SECONDS = 0.5
SHORT_SLOT_SECONDS = 0.0005  # CPU time of the short sync slot: 5,000 calls keep the tracker busy 2.5 s
HEARTBEATER = "bench_heartbeater"
USER = "bench"
# A typical small property update: the body of every message in this bench (about 90 bytes packed).
PAYLOAD: dict[str, Any] = {
    "value": 3.25,
    "unit": "mm",
    "state": "MOVING",
    "alarm": "none",
    "stamp": 1.7e9,
    "train": 123456789,
}


@dataclass(frozen=True, slots=True)
class Sizes:
    sequential: int
    in_flight: int
    one_way: int
    signal_emits: int
    flood: int
    warmup: int


FULL = Sizes(sequential=2000, in_flight=6000, one_way=20000, signal_emits=2000, flood=5000, warmup=100)
QUICK = Sizes(sequential=300, in_flight=800, one_way=3000, signal_emits=300, flood=1000, warmup=20)


# --- measuring in alternating rounds --------------------------------------------------------------
@dataclass(slots=True)
class Sample:
    """What one side measured over all its rounds: count, wall time, per-call latencies (s)."""

    count: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    latencies: list[float] | None = None

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_us(self) -> float:
        """Process CPU time per operation: both peers live in this process, so this is the client
        cost of one operation, and far steadier than wall time on a shared machine."""
        return self.cpu / self.count * 1e6 if self.count else float("nan")

    def add(self, count: int, seconds: float, cpu: float, latencies: list[float] | None) -> None:
        self.count += count
        self.seconds += seconds
        self.cpu += cpu
        if latencies is not None:
            self.latencies = (self.latencies or []) + latencies


Run = Callable[[int], Awaitable[tuple[int, float, list[float] | None]]]
"""Does n operations; returns (operations counted, seconds, latencies or None)."""


async def side_by_side(framework: Run, raw: Run, n: int, warmup: int) -> tuple[Sample, Sample]:
    """Warm both up, then n operations each, in BLOCKS rounds of framework, raw, raw, framework: the
    other work on a shared machine comes in bursts of seconds, and short alternating segments spread
    a burst over both sides instead of letting it land on one."""
    if warmup:
        await framework(warmup)
        await raw(warmup)
    fw, rw = Sample(), Sample()
    segment = max(1, n // (2 * BLOCKS))
    for which in (fw, rw, rw, fw) * BLOCKS:
        run = framework if which is fw else raw
        cpu = time.process_time()
        count, seconds, latencies = await run(segment)
        which.add(count, seconds, time.process_time() - cpu, latencies)
    return fw, rw


def cpu_row(what: str, fw: Sample, rw: Sample) -> Row:
    return Row(f"  CPU per {what}", "us", fw.cpu_us, rw.cpu_us, "lower")


# --- raw aio-pika peers ---------------------------------------------------------------------------
class RawPeer:
    """What a plain aio-pika program would be: a connection, a channel, a topic exchange, own queues."""

    def __init__(self, url: str, domain: str, name: str) -> None:
        self.url = url
        self.domain = domain
        self.name = name
        self.exchange_name = f"{domain}.raw"
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None
        self.exchange: aio_pika.abc.AbstractExchange | None = None
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)

    async def start(self) -> RawPeer:
        self.connection = await aio_pika.connect(self.url)
        self.channel = await self.connection.channel(publisher_confirms=False)
        self.exchange = await self.channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=False
        )
        return self

    async def stop(self) -> None:
        if self.connection is not None:
            await self.connection.close()

    async def listen(
        self,
        queue_name: str,
        key: str,
        handler: Callable[[aio_pika.abc.AbstractIncomingMessage], Awaitable[None]],
        *,
        exchange: str | None = None,
        channel: aio_pika.abc.AbstractChannel | None = None,
    ) -> None:
        channel = channel or self.channel
        assert channel is not None
        queue = await channel.declare_queue(f"{self.domain}.raw.{queue_name}", exclusive=True)
        await queue.bind(exchange or self.exchange_name, key)
        await queue.consume(handler, no_ack=True)

    async def send(
        self,
        kind: str,
        target: str,
        slot: str,
        body: bytes,
        *,
        key: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        deadline: float | None = None,
    ) -> None:
        assert self.exchange is not None
        headers: dict[str, Any] = {"kind": kind, "sender": self.name, "target": target, "slot": slot}
        headers["user"] = USER
        expiration = None
        if deadline is not None:
            headers["deadline"] = int(deadline * 1000)
            expiration = deadline - time.time()
        message = aio_pika.Message(
            body,
            headers=headers,
            content_type="application/msgpack",
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
            correlation_id=correlation_id,
            reply_to=reply_to,
            expiration=expiration,
            message_id=correlation_id or "-",
            timestamp=datetime.datetime.now(datetime.UTC),
            type=kind,
            app_id="raw-bench",
        )
        await self.exchange.publish(message, routing_key=key or f"{target}.{slot}.{self.name}")

    async def request(self, target: str, slot: str, *args: Any) -> Any:
        correlation_id = f"{next(self._ids):x}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[correlation_id] = future
        try:
            await self.send(
                "request",
                target,
                slot,
                msgpack.packb(list(args)),
                correlation_id=correlation_id,
                reply_to=self.name,
                deadline=time.time() + 10.0,
            )
            async with asyncio.timeout(10.0):
                return await future
        finally:
            self.pending.pop(correlation_id, None)

    async def on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = self.pending.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(msgpack.unpackb(message.body))


# --- request/reply --------------------------------------------------------------------------------
def echo(i: int, payload: dict[str, Any]) -> dict[str, Any]:
    return payload


async def request_reply(url: str, domain: str, sizes: Sizes, result: LoopResult) -> None:
    client = SignalSlotable("bench_client", broker=url, domain=domain, heartbeat_interval=QUIET_INTERVAL)
    server = SignalSlotable("bench_server", broker=url, domain=domain, heartbeat_interval=QUIET_INTERVAL)
    server.register_slot(echo)
    raw_client = RawPeer(url, domain, "raw_client")
    raw_server = RawPeer(url, domain, "raw_server")
    await client.start()
    await server.start()
    await raw_client.start()
    await raw_server.start()

    async def serve(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        args = msgpack.unpackb(message.body)
        body = msgpack.packb(echo(*args))
        assert message.reply_to is not None
        await raw_server.send(
            "reply",
            message.reply_to,
            "echo",
            body,
            key=f"{message.reply_to}.{raw_server.name}",
            correlation_id=message.correlation_id,
        )

    await raw_server.listen("raw_server", "raw_server.#", serve)
    await raw_client.listen("raw_client", "raw_client.#", raw_client.on_reply)

    def sequential(call: Callable[[int], Awaitable[Any]]) -> Run:
        async def run(n: int) -> tuple[int, float, list[float] | None]:
            latencies = []
            with Stopwatch() as total:
                for i in range(n):
                    started = time.perf_counter()
                    await call(i)
                    latencies.append(time.perf_counter() - started)
            return n, total.elapsed, latencies

        return run

    def in_flight(call: Callable[[int], Awaitable[Any]]) -> Run:
        async def run(n: int) -> tuple[int, float, list[float] | None]:
            latencies: list[float] = []
            per_worker = n // IN_FLIGHT

            async def worker() -> None:
                for i in range(per_worker):
                    started = time.perf_counter()
                    await call(i)
                    latencies.append(time.perf_counter() - started)

            with Stopwatch() as total:
                await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
            return per_worker * IN_FLIGHT, total.elapsed, latencies

        return run

    async def fw_call(i: int) -> Any:
        return await client.request("bench_server", "echo", i, PAYLOAD)

    async def raw_call(i: int) -> Any:
        return await raw_client.request("raw_server", "echo", i, PAYLOAD)

    try:
        with phase("request/reply, sequential"):
            fw, rw = await side_by_side(
                sequential(fw_call), sequential(raw_call), sizes.sequential, sizes.warmup
            )
        fl, rl = fw.latencies or [], rw.latencies or []
        result.rows += [
            Row("request/reply sequential", "calls/s", fw.rate, rw.rate, target=("ratio>=", 0.9)),
            Row("  latency p50", "ms", percentile(fl, 50) * 1e3, percentile(rl, 50) * 1e3, "lower"),
            Row("  latency p99", "ms", percentile(fl, 99) * 1e3, percentile(rl, 99) * 1e3, "lower"),
            cpu_row("round trip", fw, rw),
        ]
        with phase(f"request/reply, {IN_FLIGHT} in flight"):
            fw, rw = await side_by_side(in_flight(fw_call), in_flight(raw_call), sizes.in_flight, 0)
        fl, rl = fw.latencies or [], rw.latencies or []
        result.rows += [
            Row(f"request/reply {IN_FLIGHT} in flight", "calls/s", fw.rate, rw.rate),
            Row("  latency p50", "ms", percentile(fl, 50) * 1e3, percentile(rl, 50) * 1e3, "lower"),
            Row("  latency p99", "ms", percentile(fl, 99) * 1e3, percentile(rl, 99) * 1e3, "lower"),
            cpu_row("round trip", fw, rw),
        ]
    finally:
        await raw_client.stop()
        await raw_server.stop()
        await client.stop()
        await server.stop()


# --- one-way calls --------------------------------------------------------------------------------
class Counter:
    """Counts arrivals and remembers when the expected last one came."""

    def __init__(self) -> None:
        self.count = 0
        self.expected = 0
        self.last = 0.0

    def reset(self, expected: int) -> None:
        self.count = 0
        self.expected = expected
        self.last = 0.0

    def hit(self) -> None:
        self.count += 1
        if self.count == self.expected:
            self.last = time.perf_counter()

    @property
    def complete(self) -> bool:
        return self.count >= self.expected


async def one_way(url: str, domain: str, sizes: Sizes, result: LoopResult) -> None:
    sender = SignalSlotable("bench_sender", broker=url, domain=domain, heartbeat_interval=QUIET_INTERVAL)
    receiver = SignalSlotable("bench_receiver", broker=url, domain=domain, heartbeat_interval=QUIET_INTERVAL)
    fw_count, raw_count = Counter(), Counter()

    @receiver.slot
    def count(i: int, payload: dict[str, Any]) -> None:
        fw_count.hit()

    async def raw_receive(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        msgpack.unpackb(message.body)
        raw_count.hit()

    raw_sender = RawPeer(url, domain, "raw_sender")
    raw_receiver = RawPeer(url, domain, "raw_receiver")
    await sender.start()
    await receiver.start()
    await raw_sender.start()
    await raw_receiver.start()
    await raw_receiver.listen("raw_receiver", "raw_receiver.#", raw_receive)

    async def fw_run(n: int) -> tuple[int, float, list[float] | None]:
        fw_count.reset(n)
        started = time.perf_counter()
        for i in range(n):
            await sender.call("bench_receiver", "count", i, PAYLOAD)
        await wait_until(lambda: fw_count.complete, 60, f"{n} one-way calls to arrive")
        return n, fw_count.last - started, None

    async def raw_run(n: int) -> tuple[int, float, list[float] | None]:
        raw_count.reset(n)
        started = time.perf_counter()
        for i in range(n):
            await raw_sender.send("call", "raw_receiver", "count", msgpack.packb([i, PAYLOAD]))
        await wait_until(lambda: raw_count.complete, 60, f"{n} raw one-way messages to arrive")
        return n, raw_count.last - started, None

    try:
        with phase("one-way calls"):
            fw, rw = await side_by_side(fw_run, raw_run, sizes.one_way, sizes.warmup * 10)
        result.rows += [
            Row("one-way calls", "calls/s", fw.rate, rw.rate, target=("ratio>=", 0.8)),
            cpu_row("call", fw, rw),
        ]
    finally:
        await raw_sender.stop()
        await raw_receiver.stop()
        await sender.stop()
        await receiver.stop()


# --- signals to 10 subscribers in one process -----------------------------------------------------
async def signals(url: str, domain: str, sizes: Sizes, result: LoopResult) -> None:
    emitter = SignalSlotable("bench_emitter", broker=url, domain=domain, heartbeat_interval=QUIET_INTERVAL)
    # the subscribers share one hub, as the devices of one server do: one connection, one channel
    hub = Hub("bench_subscribers", broker=url, domain=domain, heartbeat_interval=QUIET_INTERVAL)
    fw_count, raw_count = Counter(), Counter()

    def on_tick(i: int, payload: dict[str, Any]) -> None:
        fw_count.hit()

    subscribers = [SignalSlotable(f"bench_subscriber_{k}", hub=hub) for k in range(SUBSCRIBERS)]
    raw_emitter = RawPeer(url, domain, "raw_emitter")
    raw_host = RawPeer(url, domain, "raw_subscribers")

    async def raw_receive(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        msgpack.unpackb(message.body)
        raw_count.hit()

    await emitter.start()
    await hub.start()
    for sub in subscribers:
        sub.register_slot(on_tick)
        await sub.connect("bench_emitter", "tick", "on_tick")
        await sub.start()
    await raw_emitter.start()
    await raw_host.start()
    for k in range(SUBSCRIBERS):
        await raw_host.listen(f"raw_subscriber_{k}", "raw_emitter.tick", raw_receive)

    async def fw_run(n: int) -> tuple[int, float, list[float] | None]:
        fw_count.reset(n * SUBSCRIBERS)
        started = time.perf_counter()
        for i in range(n):
            await emitter.emit("tick", i, PAYLOAD)
        await wait_until(lambda: fw_count.complete, 60, f"{n * SUBSCRIBERS} signal deliveries")
        return n * SUBSCRIBERS, fw_count.last - started, None

    async def raw_run(n: int) -> tuple[int, float, list[float] | None]:
        raw_count.reset(n * SUBSCRIBERS)
        started = time.perf_counter()
        for i in range(n):
            await raw_emitter.send("signal", "*", "tick", msgpack.packb([i, PAYLOAD]), key="raw_emitter.tick")
        await wait_until(lambda: raw_count.complete, 60, f"{n * SUBSCRIBERS} raw fan-out deliveries")
        return n * SUBSCRIBERS, raw_count.last - started, None

    try:
        with phase(f"signals to {SUBSCRIBERS} subscribers"):
            fw, rw = await side_by_side(fw_run, raw_run, sizes.signal_emits, sizes.warmup)
        result.rows += [
            Row(
                f"signal deliveries, {SUBSCRIBERS} subscribers",
                "deliveries/s",
                fw.rate,
                rw.rate,
                target=("ratio>=", 0.8),
            ),
            cpu_row("delivery", fw, rw),
        ]
    finally:
        await raw_emitter.stop()
        await raw_host.stop()
        for sub in subscribers:
            await sub.stop()
        await hub.stop()
        await emitter.stop()


# --- heartbeat handling under a slot flood --------------------------------------------------------
class HeartbeatProbe:
    """Records, while armed, how long after its "sent" stamp each heartbeat of the subprocess was
    handled."""

    def __init__(self) -> None:
        self.armed = False
        self.delays: list[float] = []
        self.gone: list[str] = []

    def arm(self) -> None:
        self.delays = []
        self.armed = True

    def heard(self, sent: float, received: float) -> None:
        if self.armed:
            self.delays.append(received - sent)

    def on_topology(self, event: TopologyEvent) -> None:
        if event.kind == INSTANCE_GONE:
            self.gone.append(event.instance_id)


def busy(seconds: float) -> None:
    """Hold the CPU, as a short sync slot doing real work would."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def start_helper(role: str, url: str, domain: str) -> asyncio.subprocess.Process:
    """Start this script as the heartbeating or the flooding subprocess; returns once it is online."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--helper",
        role,
        "--broker",
        url,
        "--domain",
        domain,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    await expect(proc, "ready", 30)
    return proc


async def expect(proc: asyncio.subprocess.Process, word: str, timeout: float) -> None:
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        line = await proc.stdout.readline()
    if line.strip() != word.encode():
        raise RuntimeError(f"bench subprocess said {line!r}, expected {word!r}")


async def stop_helper(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        async with asyncio.timeout(10):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def heartbeats(url: str, domain: str, sizes: Sizes, result: LoopResult) -> None:
    # The heartbeats and the flood come from two other processes, as they would in a facility; a
    # flood sent from the tracker's own loop would pace itself against the slots it triggers.
    beater = await start_helper("heartbeater", url, domain)
    flooder = await start_helper("flooder", url, domain)
    fw_probe, raw_probe = HeartbeatProbe(), HeartbeatProbe()
    tracker = SignalSlotable("bench_tracker", broker=url, domain=domain, heartbeat_interval=QUIET_INTERVAL)
    done = Counter()

    async def flood(side: str, slot: str, target: str) -> None:
        assert flooder.stdin is not None
        flooder.stdin.write(f"{side} {target} {slot} {sizes.flood}\n".encode())
        await expect(flooder, "sent", 60)

    # Observe the hub's topology lane where the hub handles it: patched on the instance before start,
    # because the transport takes the bound method when the hub declares its lane.
    hub_handler = tracker.hub._on_topology

    def observe(message: Message) -> None:
        received = time.time()
        if message.name == "heartbeat" and message.sender == HEARTBEATER:
            fw_probe.heard(float(codec.decode(message.body)["sent"]), received)
        hub_handler(message)

    tracker.hub._on_topology = observe  # type: ignore[method-assign]

    @tracker.slot
    async def slow(i: int, payload: dict[str, Any]) -> None:
        await asyncio.sleep(SLOW_SLOT_SECONDS)
        done.hit()

    @tracker.slot
    def short(i: int, payload: dict[str, Any]) -> None:
        busy(SHORT_SLOT_SECONDS)
        done.hit()

    raw_tracker = RawPeer(url, domain, "raw_tracker")

    async def raw_heartbeat(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        received = time.time()
        if message.headers.get("sender") == HEARTBEATER:
            raw_probe.heard(float(msgpack.unpackb(message.body)["sent"]), received)

    async def raw_slot(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        headers = message.headers
        msgpack.unpackb(message.body)
        if headers.get("slot") == "slow":
            await asyncio.sleep(SLOW_SLOT_SECONDS)
        else:
            busy(SHORT_SLOT_SECONDS)
        done.hit()

    try:
        await tracker.start()
        tracker.topology.add_listener(fw_probe.on_topology)
        await tracker.topology.wait_for(HEARTBEATER, timeout=10)
        await raw_tracker.start()
        assert raw_tracker.connection is not None
        # heartbeats on a channel of their own, as a careful aio-pika program would do
        heartbeat_channel = await raw_tracker.connection.channel()
        await raw_tracker.listen(
            "raw_tracker.heartbeats",
            "heartbeat.*",
            raw_heartbeat,
            exchange=tracker.names.heartbeats,
            channel=heartbeat_channel,
        )
        await raw_tracker.listen("raw_tracker", "raw_tracker.#", raw_slot)

        async def fw_flood(slot: str) -> list[float]:
            done.reset(sizes.flood)
            fw_probe.arm()
            await flood("framework", slot, "bench_tracker")
            await wait_until(lambda: done.complete, 120, f"{sizes.flood} calls of slot {slot!r}")
            fw_probe.armed = False
            return fw_probe.delays

        async def raw_flood(slot: str) -> list[float]:
            done.reset(sizes.flood)
            raw_probe.arm()
            await flood("raw", slot, "raw_tracker")
            await wait_until(lambda: done.complete, 120, f"{sizes.flood} raw calls of slot {slot!r}")
            raw_probe.armed = False
            return raw_probe.delays

        for slot, label in (("slow", "async slot"), ("short", "sync slot")):
            with phase(f"heartbeats under a flood of {sizes.flood} calls to a {label}"):
                fw = await fw_flood(slot)
                raw = await raw_flood(slot)
            if len(fw) < 3 or len(raw) < 3:
                result.notes.append(f"{label} flood: only {len(fw)}/{len(raw)} heartbeats seen")
            result.rows += [
                Row(
                    f"heartbeat delay, {label} flood, p50",
                    "ms",
                    percentile(fw, 50) * 1e3,
                    percentile(raw, 50) * 1e3,
                    "lower",
                ),
                Row(
                    f"heartbeat delay, {label} flood, max",
                    "ms",
                    max(fw, default=float("nan")) * 1e3,
                    max(raw, default=float("nan")) * 1e3,
                    "lower",
                    target=("framework<", 50.0),
                ),
            ]
            result.notes.append(f"{label} flood: {len(fw)} heartbeats seen (framework), {len(raw)} (raw)")
        result.checks["no instance reported gone during the floods"] = not fw_probe.gone
        if fw_probe.gone:
            result.notes.append(f"reported gone during the floods: {sorted(set(fw_probe.gone))}")
    finally:
        await raw_tracker.stop()
        await tracker.stop()
        await stop_helper(flooder)
        await stop_helper(beater)


async def helper(role: str, url: str, domain: str) -> None:
    """A subprocess of the heartbeat bench, run until its stdin closes.

    ``heartbeater``: one instance that heartbeats every HEARTBEAT_INTERVAL and does nothing else.
    ``flooder``: on each line ``<framework|raw> <target> <slot> <n>`` sends n one-way calls, then
    answers ``sent``.
    """
    if role == "heartbeater":
        ss = SignalSlotable(
            HEARTBEATER,
            broker=url,
            domain=domain,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            track_topology=False,
        )
    else:
        ss = SignalSlotable(
            "bench_flooder",
            broker=url,
            domain=domain,
            heartbeat_interval=QUIET_INTERVAL,
            track_topology=False,
        )
    raw = RawPeer(url, domain, "raw_flooder")
    await ss.start()
    await raw.start()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            side, target, slot, count = line.decode().split()
            for i in range(int(count)):
                if side == "framework":
                    await ss.call(target, slot, i, PAYLOAD)
                else:
                    await raw.send("call", target, slot, msgpack.packb([i, PAYLOAD]))
            print("sent", flush=True)
    finally:
        await raw.stop()
        await ss.stop()


# --- one child: the whole set on one event loop ---------------------------------------------------
async def delete_domain(url: str, domain: str) -> None:
    """Exchanges outlive the run (queues are exclusive and go with their connections)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for name in ("slots", "signals", "broadcast", "replies", "heartbeats", "returns", "raw"):
            await channel.exchange_delete(f"{domain}.{name}")
    finally:
        await connection.close()


async def child(url: str, loop: str, sizes: Sizes) -> LoopResult:
    domain = f"bench_{loop}_{uuid.uuid4().hex[:8]}"
    result = LoopResult(loop)
    with Stopwatch() as total:
        try:
            await request_reply(url, domain, sizes, result)
            await one_way(url, domain, sizes, result)
            await signals(url, domain, sizes, result)
            await heartbeats(url, domain, sizes, result)
        finally:
            await delete_domain(url, domain)
    result.seconds = total.elapsed
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages: a short run to try it out")
    parser.add_argument("--loop", choices=[*LOOPS, "both"], default="both")
    parser.add_argument("--broker", default=None, help="AMQP URL (default: env KARABO_BROKER or localhost)")
    parser.add_argument("--style", choices=["rich", "plain", "markdown"], default="rich")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--helper", choices=["heartbeater", "flooder"], help=argparse.SUPPRESS)
    parser.add_argument("--domain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    url = args.broker or os.environ.get("KARABO_BROKER") or default_broker()

    if args.helper:
        asyncio.run(helper(args.helper, url, args.domain))
        return 0
    sizes = QUICK if args.quick else FULL
    if args.child:
        result = run_with_loop(lambda: child(url, args.loop, sizes), args.loop)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(result.to_json())
        return 0

    loops = LOOPS if args.loop == "both" else (args.loop,)
    extra = ["--broker", url] + (["--quick"] if args.quick else [])
    with Stopwatch() as total:
        results = run_children(__file__, loops, extra)
    title = "karabo-async messaging vs raw aio-pika" + (" (quick)" if args.quick else "")
    headers, cells = table_rows(results)
    print_table(title, headers, cells, args.style)
    missed = 0
    for r in results:
        verdicts = [(row.metric.strip(), check_target(row)) for row in r.rows if row.target is not None]
        verdicts += list(r.checks.items())
        met = sum(1 for _, ok in verdicts if ok)
        missed += len(verdicts) - met
        print(f"\n{r.loop}: {met} of {len(verdicts)} targets met ({r.seconds:.0f} s)")
        for name, ok in verdicts:
            print(f"  [{'met' if ok else 'MISSED'}] {name}")
        for note in r.notes:
            print(f"  note: {note}")
    print(f"\ntotal {total.elapsed:.0f} s; ratio = framework / raw aio-pika (same run, same loop)")
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
