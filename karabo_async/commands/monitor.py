"""``karabo-async monitor``: a live, decoded view of the broker traffic of one domain.

A temporary exclusive queue is bound with ``#`` to every exchange of the domain except ``slots``:
there a catch-all binding would make every call routable, so calls to instances that do not exist
would no longer come back through the ``returns`` exchange (and their callers would wait for a
timeout instead of getting NoSuchInstance). On ``slots`` the queue is bound per live instance
(``<id>.#``), following the topology; calls to unknown ids are seen as they come back on ``returns``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any

from rich.text import Text

from .. import codec
from ..errors import DecodeError
from ..hub import Hub, short_hostname
from ..topology import INSTANCE_GONE, INSTANCE_NEW, TopologyEvent
from ..transport.amqp import _redact
from ..wire import Kind, Message
from .common import console, err_console, jsonable, short

TYPES = (*(k.value for k in Kind), "topology", "returned")
STYLES = {
    "request": "cyan",
    "reply": "green",
    "call": "blue",
    "signal": "magenta",
    "broadcast": "yellow",
    "heartbeat": "dim",
    "returned": "red",
    "topology": "dim",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("monitor", help="show all broker traffic of the domain, decoded, until Ctrl-C")
    p.add_argument("--device", default=None, metavar="ID", help="only messages from or to this instance")
    p.add_argument(
        "--type",
        dest="types",
        action="append",
        choices=TYPES,
        default=None,
        help="only messages of this type (repeatable)",
    )
    p.add_argument("--heartbeats", action="store_true", help="show heartbeats too (hidden by default)")
    p.set_defaults(run=run)


class TrafficMonitor:
    """Binds a private queue to the domain's exchanges and hands each decoded message to ``show``."""

    def __init__(
        self,
        broker: str | None,
        domain: str | None,
        *,
        device: str | None = None,
        types: list[str] | None = None,
        heartbeats: bool = False,
    ) -> None:
        self.hub = Hub(f"{short_hostname()}-monitor-{id(self):x}", broker=broker, domain=domain)
        self.queue = f"{self.hub.domain}.monitor.{self.hub.process_id}"
        self.device = device
        self.types = set(types) if types else None
        self.heartbeats = heartbeats or (self.types is not None and "heartbeat" in self.types)
        self.bound: set[str] = set()
        self._changes: asyncio.Queue[TopologyEvent] = asyncio.Queue()
        self._follower: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.hub.start()
        t, n = self.hub.transport, self.hub.names
        await t.declare_queue(self.queue, exclusive=True, max_length=100_000, message_ttl=60.0)
        for exchange in (n.signals, n.broadcast, n.replies, n.heartbeats, n.returns):
            await t.bind(self.queue, exchange, "#")
        for instance_id in list(self.hub.topology):
            await self._bind_instance(instance_id)
        self.hub.topology.add_listener(self._changes.put_nowait)
        self._follower = asyncio.get_running_loop().create_task(self._follow_topology())
        await t.consume(self.queue, self._on_message, lane="slots")

    async def stop(self) -> None:
        self.hub.topology.remove_listener(self._changes.put_nowait)
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        try:
            if self.hub.transport.connected:
                await self.hub.transport.delete_queue(self.queue)
        finally:
            await self.hub.stop()

    async def _bind_instance(self, instance_id: str) -> None:
        if instance_id not in self.bound:
            self.bound.add(instance_id)
            await self.hub.transport.bind(self.queue, self.hub.names.slots, f"{instance_id}.#")

    async def _follow_topology(self) -> None:
        """Bindings follow the topology in order; a dead instance's binding goes, so that calls to it
        come back as undeliverable again."""
        while True:
            event = await self._changes.get()
            if event.kind == INSTANCE_NEW:
                await self._bind_instance(event.instance_id)
            elif event.kind == INSTANCE_GONE and event.instance_id in self.bound:
                self.bound.discard(event.instance_id)
                await self.hub.transport.unbind(self.queue, self.hub.names.slots, f"{event.instance_id}.#")

    # --- showing --------------------------------------------------------------------------------
    def kind_of(self, message: Message) -> str:
        if message.death_reason or (
            message.exchange == self.hub.names.slots and message.target not in self.bound
        ):
            return "returned"
        if message.exchange == self.hub.names.heartbeats and message.kind is not Kind.HEARTBEAT:
            return "topology"  # announcements and discovery: instances coming and going
        return message.kind.value

    def wanted(self, message: Message, kind: str) -> bool:
        if message.sender == self.hub.process_id:
            return False
        if kind == "heartbeat" and not self.heartbeats:
            return False
        if self.types is not None and kind not in self.types:
            return False
        return self.device is None or self.device in (message.sender, message.target)

    def _on_message(self, message: Message) -> None:
        kind = self.kind_of(message)
        if self.wanted(message, kind):
            self.show(message, kind)

    def show(self, message: Message, kind: str) -> None:
        raise NotImplementedError


def decode_body(message: Message) -> Any:
    try:
        value = codec.decode(message.body)
    except DecodeError as exc:
        return f"<undecodable: {exc}>"
    if message.kind in (Kind.CALL, Kind.REQUEST, Kind.SIGNAL, Kind.BROADCAST) and isinstance(value, list):
        if len(value) == 1:
            return value[0]
        if not value:
            return ""
    return value


class _PrintingMonitor(TrafficMonitor):
    def __init__(self, *args: Any, as_json: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.as_json = as_json
        self.out = console()

    def show(self, message: Message, kind: str) -> None:
        now = time.time()
        body = decode_body(message)
        note = message.error or message.death_reason or ""
        if self.as_json:
            record = {
                "time": now,
                "type": kind,
                "sender": message.sender,
                "target": message.target,
                "name": message.name,
                "body": jsonable(body),
            }
            if note:
                record["note"] = note
            print(json.dumps(record), flush=True)
            return
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
        line = Text()
        line.append(stamp + " ", style="dim")
        line.append(f"{kind:<9} ", style=STYLES.get(kind, ""))
        line.append(f"{message.sender} → {message.target} ")
        line.append(message.name, style="bold")
        if note:
            line.append(f" [{note}]", style="red")
        line.append(" " + short(body, 80))
        self.out.print(line, soft_wrap=True)
        sys.stdout.flush()


async def run(args: argparse.Namespace) -> int:
    monitor = _PrintingMonitor(
        args.broker,
        args.domain,
        as_json=args.json,
        device=args.device,
        types=args.types,
        heartbeats=args.heartbeats,
    )
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    await monitor.start()
    err_console().print(
        f"monitoring domain {monitor.hub.domain} at {_redact(monitor.hub.broker)} (Ctrl-C to stop)",
        highlight=False,
    )
    sys.stderr.flush()
    try:
        await stopped.wait()
    finally:
        await monitor.stop()
    return 0
