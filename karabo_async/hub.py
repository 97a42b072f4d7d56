"""The per-process link to the broker: one connection, one heartbeat, one topology view.

A device server hosts many instances; they share one :class:`Hub`, so the broker sees one
connection and one heartbeat per process however many devices it runs. A stand-alone
:class:`~karabo_async.signalslot.SignalSlotable` makes a hub of its own.

Two lanes of its own besides the instances' queues:

* the topology lane (``<domain>.heartbeats.<process>``, its own AMQP channel): heartbeats,
  announcements (``new``/``updated``/``gone``), discovery (``discover``/``query``/``info``). It is
  handled inline on receipt, so slot work queued elsewhere never delays it;
* the broadcast lane (``<domain>.broadcast.<process>``): one delivery per process for a broadcast,
  handed to every local instance that has the slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from . import codec
from .errors import BrokerUnavailable, DecodeError, InstanceIdInUse, QueueLocked
from .topology import Topology
from .transport import Transport, create_transport, default_broker, default_domain
from .wire import Kind, Message, Names, check_instance_id

log = structlog.get_logger(__name__)

VERSION = "0.1.0"
DISCOVERY_QUIET = 0.1
DISCOVERY_MAX = 1.0


def short_hostname() -> str:
    """The host name without domain, safe inside an instance id."""
    name = socket.gethostname().split(".")[0]
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name) or "host"


class Member(Protocol):
    """What the hub needs of an instance it hosts."""

    instance_id: str

    def instance_info(self) -> dict[str, Any]: ...

    def has_slot(self, name: str) -> bool: ...

    def deliver_broadcast(self, message: Message) -> None: ...

    def connection_lost(self, exc: BaseException | None) -> None: ...

    def connection_restored(self) -> None: ...

    def queue_lost(self, exc: BaseException) -> None: ...


class Hub:
    """One broker connection shared by the instances of a process."""

    def __init__(
        self,
        process_id: str,
        *,
        broker: str | None = None,
        domain: str | None = None,
        heartbeat_interval: float = 5.0,
        track_topology: bool = True,
    ) -> None:
        self.process_id = check_instance_id(process_id)
        self.broker = broker or default_broker()
        self.domain = domain or default_domain()
        check_instance_id(self.domain)
        if heartbeat_interval <= 0:
            raise ValueError(f"heartbeat_interval must be positive, got {heartbeat_interval}")
        self.heartbeat_interval = float(heartbeat_interval)
        self.names = Names(self.domain)
        self.transport: Transport = create_transport(self.broker, name=process_id)
        self.topology = Topology(query=self._query if track_topology else None)
        self.track_topology = track_topology
        self.members: dict[str, Member] = {}
        self.broadcast_hooks: dict[str, Callable[[Message], None]] = {}
        self.generation = int(time.time() * 1000)  # monotonic across restarts of a process id
        self.host = short_hostname()
        self.pid = os.getpid()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._last_info = 0.0
        self._heard: asyncio.Event | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        await self.transport.connect()
        try:
            await self._declare()
        except QueueLocked as exc:
            await self.transport.close()
            raise InstanceIdInUse(self.process_id, self.domain) from exc
        except BaseException:
            await self.transport.close()
            raise
        self.transport.add_listener(self)
        self._started = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeat_loop(), name=f"heartbeat {self.process_id}")]
        if self.track_topology:
            self._tasks.append(loop.create_task(self._watch_loop(), name=f"topology {self.process_id}"))
            await self.discover()

    async def _declare(self) -> None:
        n, t = self.names, self.transport
        await t.declare_exchange(n.returns)
        await t.declare_exchange(n.slots, alternate=n.returns)
        for exchange in (n.signals, n.broadcast, n.replies, n.heartbeats):
            await t.declare_exchange(exchange)
        lane = n.topology_queue(self.process_id)
        await t.declare_queue(lane, exclusive=True, max_length=10_000, message_ttl=60.0)
        keys = ["discover.*", f"query.{self.process_id}"]
        if self.track_topology:
            keys += ["heartbeat.*", "new.*", "updated.*", "gone.*", f"info.{self.process_id}"]
        for key in keys:
            await t.bind(lane, n.heartbeats, key)
        await t.consume(lane, self._on_topology, lane="topology")
        bq = n.broadcast_queue(self.process_id)
        await t.declare_queue(bq, exclusive=True, max_length=10_000, message_ttl=60.0)
        await t.bind(bq, n.broadcast, "#")
        await t.consume(bq, self._on_broadcast, lane="slots")

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.transport.remove_listener(self)
        await self.transport.close()

    @property
    def started(self) -> bool:
        return self._started

    # --- membership ------------------------------------------------------------------------------
    async def add_member(self, member: Member) -> None:
        self.members[member.instance_id] = member
        self.generation += 1
        await self._announce("new", {member.instance_id: member.instance_info()})

    async def remove_member(self, instance_id: str) -> None:
        """A clean exit: everyone is told at once, without waiting for heartbeats to stop."""
        if self.members.pop(instance_id, None) is None:
            return
        self.generation += 1
        if self.track_topology:
            self.topology.retire(self.process_id, self.generation, [instance_id])
        await self._send_topology("gone", {"generation": self.generation, "instances": [instance_id]})

    async def report_gone(self, instance_id: str) -> None:
        """For a server whose device died inside it: report the death at once."""
        await self.remove_member(instance_id)

    async def update_member(self, member: Member) -> None:
        self.generation += 1
        await self._announce("updated", {member.instance_id: member.instance_info()})

    async def _announce(self, event: str, instances: dict[str, Any]) -> None:
        if self.track_topology:  # our own members are known here first, not when the echo returns
            self.topology.announce(self.process_id, self.heartbeat_interval, self.generation, instances)
        body = {"generation": self.generation, "interval": self.heartbeat_interval, "instances": instances}
        await self._send_topology(event, body)

    async def _send_topology(self, event: str, body: dict[str, Any], key: str | None = None) -> None:
        if not self.transport.connected:
            return
        message = Message(
            kind=Kind.HEARTBEAT if event == "heartbeat" else Kind.BROADCAST,
            sender=self.process_id,
            target="*",
            name=event,
            body=codec.encode(body),
        )
        try:
            await self.transport.publish(
                self.names.heartbeats, key or self.names.topology_key(event, self.process_id), message
            )
        except BrokerUnavailable as exc:
            log.info("topology message not sent", event=event, reason=str(exc))

    # --- heartbeats and discovery ----------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            body = {
                "interval": self.heartbeat_interval,
                "generation": self.generation,
                "count": len(self.members),
                "sent": time.time(),
            }
            await self._send_topology("heartbeat", body)
            await asyncio.sleep(self.heartbeat_interval)

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.topology.check_period())
            self.topology.check()

    async def discover(self) -> None:
        """Ask every process for its instances and wait until the answers stop coming."""
        self._heard = asyncio.Event()
        await self._send_topology("discover", {"process": self.process_id})
        deadline = time.monotonic() + DISCOVERY_MAX
        quiet = DISCOVERY_QUIET if self.broker.startswith("amqp") else 0.01
        while time.monotonic() < deadline:
            self._heard.clear()
            try:
                async with asyncio.timeout(quiet):
                    await self._heard.wait()
            except TimeoutError:
                break
        self._heard = None

    def _query(self, process_id: str) -> None:
        """A heartbeat showed a generation we do not know: ask that process for its full list."""
        task = asyncio.get_running_loop().create_task(
            self._send_topology("query", {"process": self.process_id}, key=f"query.{process_id}")
        )
        self._tasks.append(task)
        task.add_done_callback(self._tasks_done)

    def _tasks_done(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    def _answer(self, asker: str) -> None:
        body = {
            "generation": self.generation,
            "interval": self.heartbeat_interval,
            "instances": {iid: m.instance_info() for iid, m in self.members.items()},
        }
        task = asyncio.get_running_loop().create_task(self._send_topology("info", body, key=f"info.{asker}"))
        self._tasks.append(task)
        task.add_done_callback(self._tasks_done)

    def _on_topology(self, message: Message) -> None:
        """The topology lane: handled inline, never queued behind slot work."""
        try:
            body = codec.decode(message.body)
            if not isinstance(body, dict):
                raise DecodeError(f"topology body is {type(body).__name__}, not a map")
            self._handle_topology(message.name, message.sender, body)
        except (DecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning(
                "dropped malformed topology message",
                sender=message.sender,
                kind=message.name,
                reason=str(exc),
            )

    def _handle_topology(self, event: str, sender: str, body: dict[str, Any]) -> None:
        topo = self.topology
        if event == "heartbeat":
            topo.heartbeat(sender, float(body["interval"]), int(body["generation"]))
        elif event in ("new", "updated"):
            topo.announce(sender, float(body["interval"]), int(body["generation"]), dict(body["instances"]))
        elif event == "gone":
            topo.retire(sender, int(body["generation"]), list(body["instances"]))
        elif event == "info":
            topo.full_state(sender, float(body["interval"]), int(body["generation"]), dict(body["instances"]))
            if self._heard is not None:
                self._heard.set()
        elif event in ("discover", "query"):
            self._answer(str(body["process"]))
        else:
            log.debug("unknown topology event", event=event, sender=sender)

    # --- broadcasts ------------------------------------------------------------------------------
    def _on_broadcast(self, message: Message) -> None:
        hook = self.broadcast_hooks.get(message.name)
        if hook is not None:  # process-wide handlers (e.g. train ticks) run once, not per instance
            try:
                hook(message)
            except Exception:
                log.exception("broadcast hook failed", slot=message.name)
        for member in list(self.members.values()):
            if member.has_slot(message.name):
                member.deliver_broadcast(message)

    # --- connection listener ---------------------------------------------------------------------
    def connection_lost(self, exc: BaseException | None) -> None:
        self.topology.pause()
        for member in list(self.members.values()):
            member.connection_lost(exc)

    def connection_restored(self) -> None:
        self.topology.resume()
        for member in list(self.members.values()):
            member.connection_restored()
        task = asyncio.get_running_loop().create_task(self._after_restore())
        self._tasks.append(task)
        task.add_done_callback(self._tasks_done)

    async def _after_restore(self) -> None:
        """Tell everyone we are back and relearn who else is, without waiting for heartbeats."""
        self.generation += 1
        await self._announce("new", {iid: m.instance_info() for iid, m in self.members.items()})
        if self.track_topology:
            await self._send_topology("discover", {"process": self.process_id})

    def queue_lost(self, queue: str, exc: BaseException) -> None:
        for member in list(self.members.values()):
            if queue == self.names.instance_queue(member.instance_id):
                member.queue_lost(exc)
