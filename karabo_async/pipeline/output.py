"""The output end of a pipeline: serves inputs in this process, on this host and across the network.

Each connected input is a :class:`_Subscriber` with a credit count the input grants. ``write``
sends at once to every input that has credit; for one without, the input's ``on_slowness`` decides
(copy inputs), or the output's ``no_shared_ready`` (shared inputs). Items waiting for credit are
sent by a short-lived drain task as credit arrives. Nothing is dropped without counting it.

Contract: after ``write`` the item belongs to the pipeline; build a new one (new arrays) for the
next write. In-process inputs get the very same object.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

import structlog

from ..errors import DecodeError, PipelineError, PoolExhausted, ShmFull
from . import registry
from .framing import Buffer, Frame, ItemEncoder, frame_parts, shm_bytes_needed, unpack_header
from .identity import host_id, session_id
from .policies import (
    DATA_DISTRIBUTIONS,
    NO_SHARED_READY,
    ON_SLOWNESS,
    SHM_THRESHOLD,
    TRANSPORTS,
    DataDistribution,
    ItemMeta,
    NoSharedReady,
    OnSlowness,
    Transport,
    check_channel_id,
    check_choice,
    check_positive,
)
from .registry import LocalReceiver
from .shm import ShmPool
from .stream import FrameProtocol
from .waiting import Notifier

log = structlog.get_logger(__name__)

_EOS: Final = object()  # end-of-stream marker in a subscriber's pending queue
_EOS_FRAME: Final = frame_parts({"k": "e"})
_CLOSE_FRAME: Final = frame_parts({"k": "x"})
_unix_names = itertools.count()


class _Outgoing:
    """One written item, encoded lazily and at most once per form (socket, shared memory)."""

    __slots__ = ("_inline", "_shm", "data", "meta")

    def __init__(self, data: Mapping[str, Any], meta: ItemMeta) -> None:
        self.data = data
        self.meta = meta
        self._inline: list[Buffer] | None = None
        self._shm: tuple[int | None, list[Buffer]] | None = None

    def inline_parts(self) -> list[Buffer]:
        if self._inline is None:
            enc = ItemEncoder()
            tree = enc.encode(self.data)
            self._inline = frame_parts(
                {"k": "d", "m": self.meta.to_wire(), "s": None, "d": tree}, enc.buffers
            )
        return self._inline

    async def shm_parts(
        self, pool: ShmPool, attempts: int, interval: float
    ) -> tuple[int | None, list[Buffer]]:
        """Encode with big arrays copied into a slot this item holds until :meth:`finish`."""
        if self._shm is not None:
            return self._shm
        need = shm_bytes_needed(self.data, SHM_THRESHOLD)
        if need == 0 or need > pool.slot_size:
            if need:
                log.debug("item larger than a shm slot; sent over the socket", need=need, slot=pool.slot_size)
            return None, self.inline_parts()
        slot = await pool.acquire(attempts, interval)
        if self._shm is not None:  # encoded meanwhile by another sender of this item
            pool.release_unheld(slot)
            return self._shm
        try:
            view = pool.view(slot)
            enc = ItemEncoder(view, SHM_THRESHOLD, slot * pool.slot_size)
            tree = enc.encode(self.data)
            view.release()
        except BaseException:
            pool.release_unheld(slot)
            raise
        pool.hold(slot, self)
        parts = frame_parts({"k": "d", "m": self.meta.to_wire(), "s": slot, "d": tree}, enc.buffers)
        self._shm = (slot, parts)
        return self._shm

    def finish(self, pool: ShmPool | None) -> None:
        """Drop this item's own hold on its slot; receivers that got it keep theirs."""
        if self._shm is not None and pool is not None:
            slot = self._shm[0]
            if slot is not None:
                pool.release(slot, self)
            self._shm = None


class _Subscriber:
    """One connected input, as the output sees it."""

    def __init__(
        self,
        output: OutputEndpoint,
        input_id: str,
        distribution: DataDistribution,
        on_slowness: OnSlowness,
        max_queue_length: int,
        transport: str,
    ) -> None:
        self.output = output
        self.input_id = input_id
        self.distribution = distribution
        self.on_slowness = on_slowness
        self.max_queue_length = max_queue_length
        self.transport = transport
        self.credits = 0
        self.pending: deque[object] = deque()
        self.sent = 0
        self.dropped = 0
        self.alive = True
        self.busy = False

    # --- how an item reaches the input: one per path ---

    async def send_item(self, out: _Outgoing) -> None:
        raise NotImplementedError

    async def send_eos(self) -> None:
        raise NotImplementedError

    def close_link(self) -> None:
        raise NotImplementedError

    # --- policy ---

    @property
    def room(self) -> int:
        return self.credits - len(self.pending)

    @property
    def queue_depth(self) -> int:
        return sum(1 for p in self.pending if p is not _EOS)

    async def offer(self, out: _Outgoing) -> None:
        """Deliver now if there is credit, else apply this input's slowness policy."""
        if self.room > 0 or self.distribution == "shared":
            await self.push(out)
            return
        if self.on_slowness == "wait":
            while self.alive and self.room <= 0:
                await self.output._changed.wait()
            if self.alive:
                await self.push(out)
            return
        waiting = [i for i in range(max(self.credits, 0), len(self.pending)) if self.pending[i] is not _EOS]
        limit = 1 if self.on_slowness == "drop" else self.max_queue_length
        if len(waiting) >= limit:
            # drop: the newest replaces what waits; queue_drop: the oldest waiting item goes.
            del self.pending[waiting[-1] if self.on_slowness == "drop" else waiting[0]]
            self.dropped += 1
        self.pending.append(out)

    async def push(self, out: _Outgoing) -> None:
        if self.credits > 0 and not self.pending and not self.busy:
            self.busy = True
            try:
                await self._send_one(out)
            finally:
                self.busy = False
            self.kick()
        else:
            self.pending.append(out)
            self.kick()

    async def push_eos(self) -> None:
        if not self.pending and not self.busy:
            self.busy = True
            try:
                await self.send_eos()
            except PipelineError as exc:
                self._lost_while_sending(exc)
            finally:
                self.busy = False
            self.kick()
        else:
            self.pending.append(_EOS)
            self.kick()

    async def _send_one(self, out: _Outgoing) -> None:
        self.credits -= 1
        try:
            await self.send_item(out)
            self.sent += 1
        except PoolExhausted:
            self.credits += 1
            self.dropped += 1
            raise
        except PipelineError as exc:
            self._lost_while_sending(exc)

    def _lost_while_sending(self, exc: PipelineError) -> None:
        # One input going away is no error of the writer's: forget it, the others carry on.
        log.info(
            "input went away while sending",
            output=self.output.channel_id,
            input=self.input_id,
            error=str(exc),
        )
        self.output._remove(self)

    def kick(self) -> None:
        """Start sending what waits, if anything can go now."""
        if self.busy or not self.alive or not self.pending:
            return
        if self.pending[0] is not _EOS and self.credits <= 0:
            return
        self.busy = True
        self.output._spawn(self._drain())

    async def _drain(self) -> None:
        try:
            while self.alive and self.pending:
                head = self.pending[0]
                if head is _EOS:
                    self.pending.popleft()
                    await self.send_eos()
                    continue
                if self.credits <= 0:
                    break
                self.pending.popleft()
                assert isinstance(head, _Outgoing)
                try:
                    await self._send_one(head)
                except PoolExhausted as exc:
                    log.warning(
                        "item dropped: shared-memory pool exhausted",
                        output=self.output.channel_id,
                        input=self.input_id,
                        error=str(exc),
                    )
                finally:
                    head.finish(self.output._pool)
        except PipelineError as exc:
            self._lost_while_sending(exc)
        finally:
            self.busy = False
        self.kick()

    def grant(self, credits: int) -> None:
        if credits < 0:
            raise PipelineError(f"input {self.input_id} granted a negative credit {credits}")
        self.credits += credits
        if self.distribution == "shared":
            self.output._feed_shared(self)
        self.kick()
        self.output._changed.notify_all()

    def detach(self) -> None:
        self.output._remove(self)

    def stats(self) -> dict[str, Any]:
        return {
            "distribution": self.distribution,
            "on_slowness": self.on_slowness,
            "transport": self.transport,
            "credits": self.credits,
            "queue_depth": self.queue_depth,
            "sent": self.sent,
            "dropped": self.dropped,
        }


class _LocalSubscriber(_Subscriber):
    """Same process: the item object itself is handed over."""

    receiver: LocalReceiver

    async def send_item(self, out: _Outgoing) -> None:
        self.receiver.deliver(out.data, out.meta)

    async def send_eos(self) -> None:
        self.receiver.deliver_eos()

    def close_link(self) -> None:
        self.receiver.output_closed()


class _StreamSubscriber(_Subscriber):
    """TCP, or a Unix socket with arrays in shared memory."""

    protocol: FrameProtocol
    pool: ShmPool | None

    async def send_item(self, out: _Outgoing) -> None:
        pool = self.pool
        if pool is None:
            self.protocol.send(out.inline_parts())
        else:
            slot, parts = await out.shm_parts(pool, self.output.alloc_attempts, self.output.alloc_interval)
            if slot is not None:
                pool.hold(slot, self)
            try:
                self.protocol.send(parts)
            except PipelineError:
                if slot is not None:
                    pool.release(slot, self)
                raise
        await self.protocol.drain()

    async def send_eos(self) -> None:
        self.protocol.send(_EOS_FRAME)
        await self.protocol.drain()

    def close_link(self) -> None:
        if not self.protocol.closed:
            try:
                self.protocol.send(_CLOSE_FRAME)
            except PipelineError:
                pass  # already closing: the peer will see EOF, which means the same
            self.protocol.close()


class OutputEndpoint:
    """An output channel ``instance_id:name``.

    ``transport`` limits what is offered (``auto``: everything). ``pool_slots`` x ``slot_size`` is
    the shared-memory pool, created when the first same-host input asks for it (at :meth:`start`
    if ``transport="shm"``). ``no_shared_ready`` decides about items for shared inputs when none has
    credit; ``shared_queue_length`` bounds the queue that policy ``queue`` keeps. A full pool is
    retried ``alloc_attempts`` times ``alloc_interval`` seconds apart, then PoolExhausted.
    """

    def __init__(
        self,
        instance_id: str,
        name: str,
        *,
        transport: Transport = "auto",
        no_shared_ready: NoSharedReady = "drop",
        shared_queue_length: int = 100,
        pool_slots: int = 8,
        slot_size: int = 8 * 1024 * 1024,
        alloc_attempts: int = 20,
        alloc_interval: float = 0.05,
        tcp_host: str = "0.0.0.0",
        tcp_port: int = 0,
        advertise_host: str | None = None,
    ) -> None:
        self.channel_id = f"{instance_id}:{name}"
        check_channel_id(self.channel_id)
        self.instance_id = instance_id
        self.name = name
        self.transport: Transport = check_choice("transport", transport, TRANSPORTS)  # type: ignore[assignment]
        self.no_shared_ready: NoSharedReady = check_choice(  # type: ignore[assignment]
            "no_shared_ready", no_shared_ready, NO_SHARED_READY
        )
        self.shared_queue_length = check_positive("shared_queue_length", shared_queue_length)
        self.pool_slots = check_positive("pool_slots", pool_slots)
        self.slot_size = check_positive("slot_size", slot_size)
        self.alloc_attempts = check_positive("alloc_attempts", alloc_attempts)
        self.alloc_interval = alloc_interval
        self.tcp_host = tcp_host
        self.tcp_port = tcp_port
        self.advertise_host = advertise_host
        self.items_written = 0
        self.dropped_no_shared_ready = 0
        self._dropped_gone = 0  # drops counted for inputs that have gone since: totals never fall
        self.session = session_id()
        self._subs: dict[str, _Subscriber] = {}
        self._shared_queue: deque[_Outgoing] = deque()
        self._rr = 0
        self._changed = Notifier()
        self._pool: ShmPool | None = None
        self._servers: list[asyncio.Server] = []
        self._protocols: set[FrameProtocol] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unix_path: str | None = None
        self._started = False
        self._closed = False

    # --- life cycle ---

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        if self.transport in ("auto", "local"):
            registry.register(self.channel_id, self)
        try:
            if self.transport == "shm":
                self._ensure_pool()
            if self.transport in ("auto", "tcp"):
                server = await loop.create_server(self._new_protocol, self.tcp_host, self.tcp_port)
                self.tcp_port = server.sockets[0].getsockname()[1]
                self._servers.append(server)
            if self.transport in ("auto", "shm"):
                # Abstract socket: no file to clean up, gone when we are.
                self._unix_path = f"@karabo_{self.session}_{os.getpid()}_{next(_unix_names)}"
                server = await loop.create_unix_server(self._new_protocol, "\0" + self._unix_path[1:])
                self._servers.append(server)
        except BaseException:
            await self.close()
            raise

    def address_info(self) -> dict[str, Any]:
        """What an input needs to reach this output; the device layer publishes it."""
        if not self._started:
            raise PipelineError(f"output {self.channel_id} is not started")
        tcp = self.transport in ("auto", "tcp")
        return {
            "channel_id": self.channel_id,
            "host": socket.gethostname(),
            "host_id": host_id(),
            "pid": os.getpid(),
            "session": self.session,
            "tcp_host": (self.advertise_host or _advertised(self.tcp_host)) if tcp else None,
            "tcp_port": self.tcp_port if tcp else None,
            "unix_path": self._unix_path,
            "shm": self.transport in ("auto", "shm"),
            "local": self.transport in ("auto", "local"),
        }

    async def close(self) -> None:
        """Tell every input we are gone, stop serving and free our shared memory."""
        if self._closed:
            return
        self._closed = True
        registry.unregister(self.channel_id, self)
        for server in self._servers:
            server.close()
        for sub in list(self._subs.values()):
            sub.close_link()
            self._remove(sub)
        for proto in list(self._protocols):
            proto.close()
        for proto in list(self._protocols):
            try:
                await asyncio.wait_for(proto.wait_closed(), 2.0)
            except TimeoutError:
                proto.abort()
        for task in list(self._tasks):
            task.cancel()
        for server in self._servers:
            await server.wait_closed()
        self._changed.notify_all()
        if self._pool is not None:
            self._pool.close()

    async def __aenter__(self) -> OutputEndpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- writing ---

    async def write(self, data: Mapping[str, Any], meta: ItemMeta | None = None) -> None:
        """Send ``data`` to the connected inputs; may wait (policy ``wait``) or raise PoolExhausted."""
        self._check_running()
        out = _Outgoing(data, meta if meta is not None else ItemMeta(self.channel_id))
        try:
            shared = False
            for sub in list(self._subs.values()):
                if sub.distribution == "copy":
                    await sub.offer(out)
                else:
                    shared = True
            if shared:
                await self._offer_shared(out)
        finally:
            out.finish(self._pool)
        self.items_written += 1

    async def write_end_of_stream(self) -> None:
        """Every connected input gets one end-of-stream, after the items written before it."""
        self._check_running()
        while self._shared_queue and any(s.distribution == "shared" for s in self._subs.values()):
            await self._changed.wait()
        for sub in list(self._subs.values()):
            await sub.push_eos()

    async def _offer_shared(self, out: _Outgoing) -> None:
        sub = self._ready_shared()
        if sub is not None:
            await sub.push(out)
            return
        policy = self.no_shared_ready
        if policy == "drop":
            self.dropped_no_shared_ready += 1
        elif policy == "queue":
            self._queue_shared(out)
        else:
            while sub is None and any(s.distribution == "shared" for s in self._subs.values()):
                await self._changed.wait()
                sub = self._ready_shared()
            if sub is not None:
                await sub.push(out)

    def _ready_shared(self) -> _Subscriber | None:
        shared = [s for s in self._subs.values() if s.distribution == "shared" and s.alive]
        for i in range(len(shared)):
            sub = shared[(self._rr + i) % len(shared)]
            if sub.room > 0:
                self._rr = (self._rr + i + 1) % len(shared)
                return sub
        return None

    def _queue_shared(self, out: _Outgoing) -> None:
        self._shared_queue.append(out)
        if len(self._shared_queue) > self.shared_queue_length:
            self._shared_queue.popleft()
            self.dropped_no_shared_ready += 1

    def _feed_shared(self, sub: _Subscriber) -> None:
        while self._shared_queue and sub.room > 0:
            sub.pending.append(self._shared_queue.popleft())
        self._changed.notify_all()

    # --- inputs coming and going ---

    def attach_local(
        self,
        input_id: str,
        distribution: DataDistribution,
        on_slowness: OnSlowness,
        max_queue_length: int,
        receiver: LocalReceiver,
    ) -> _Subscriber:
        self._check_running()
        sub = _LocalSubscriber(self, input_id, distribution, on_slowness, max_queue_length, "local")
        sub.receiver = receiver
        self._add(sub)
        return sub

    def _add(self, sub: _Subscriber) -> None:
        old = self._subs.get(sub.input_id)
        if old is not None:
            log.info(
                "input reconnected; dropping its old connection", output=self.channel_id, input=sub.input_id
            )
            old.close_link()
            self._remove(old)
        self._subs[sub.input_id] = sub
        log.debug("input connected", output=self.channel_id, input=sub.input_id, transport=sub.transport)
        self._changed.notify_all()

    def _remove(self, sub: _Subscriber) -> None:
        if self._subs.get(sub.input_id) is sub:
            del self._subs[sub.input_id]
        if not sub.alive:
            return
        sub.alive = False
        self._dropped_gone += sub.dropped
        if isinstance(sub, _StreamSubscriber) and sub.pool is not None:
            sub.pool.release_all(sub)
        if sub.distribution == "shared":
            # Whatever it had not received yet goes to the others.
            waiting = [p for p in sub.pending if isinstance(p, _Outgoing)]
            sub.pending.clear()
            self._shared_queue.extendleft(reversed(waiting))
            if any(s.distribution == "shared" for s in self._subs.values()):
                for other in self._subs.values():
                    if other.distribution == "shared":
                        self._feed_shared(other)
                        other.kick()
            else:
                self._shared_queue.clear()
        self._changed.notify_all()

    def _new_protocol(self) -> FrameProtocol:
        proto = FrameProtocol(f"{self.channel_id}<-?", self._on_frame, self._on_lost)
        self._protocols.add(proto)
        return proto

    def _on_frame(self, proto: FrameProtocol, frame: Frame) -> None:
        header = unpack_header(frame)
        sub = proto.context
        kind = header["k"]
        if sub is None:
            if kind != "hello":
                raise DecodeError(f"first frame must be 'hello', got {kind!r}")
            self._hello(proto, header)
        elif kind == "c":
            self._credit(sub, header)
        else:
            raise DecodeError(f"unexpected frame kind {kind!r} from an input")

    def _hello(self, proto: FrameProtocol, header: dict[str, Any]) -> None:
        if self._closed:
            proto.close()
            return
        input_id = header.get("input")
        if not isinstance(input_id, str):
            raise DecodeError("hello without an input id")
        check_channel_id(input_id)
        dist = check_choice("data_distribution", header.get("dist", ""), DATA_DISTRIBUTIONS)
        slow = check_choice("on_slowness", header.get("slow", ""), ON_SLOWNESS)
        qlen = check_positive("max_queue_length", header.get("qlen", 0))
        credits = header.get("credits", 0)
        if not isinstance(credits, int) or credits < 0:
            raise DecodeError(f"bad initial credit {credits!r}")
        pool = None
        if header.get("shm") and header.get("host_id") == host_id() and self.transport in ("auto", "shm"):
            pool = self._ensure_pool_or_log()
        sub = _StreamSubscriber(self, input_id, dist, slow, qlen, "shm" if pool else "tcp")  # type: ignore[arg-type]
        sub.protocol = proto
        sub.pool = pool
        proto.name = f"{self.channel_id}<-{input_id}"
        proto.context = sub
        self._add(sub)
        proto.send(frame_parts({"k": "welcome", "seg": pool.path if pool else None}))
        sub.grant(credits)

    def _credit(self, sub: _StreamSubscriber, header: dict[str, Any]) -> None:
        n, released = header.get("n", 0), header.get("r", [])
        if not isinstance(n, int) or not isinstance(released, list):
            raise DecodeError(f"bad credit frame {header!r:.100}")
        for slot in released:
            if sub.pool is None or not isinstance(slot, int) or not sub.pool.release(slot, sub):
                log.warning(
                    "input released a slot it did not hold",
                    output=self.channel_id,
                    input=sub.input_id,
                    slot=slot,
                )
        if n:
            sub.grant(n)

    def _on_lost(self, proto: FrameProtocol, exc: Exception | None) -> None:
        self._protocols.discard(proto)
        sub = proto.context
        if isinstance(sub, _Subscriber):
            log.debug("input disconnected", output=self.channel_id, input=sub.input_id, error=str(exc or ""))
            self._remove(sub)

    def _ensure_pool(self) -> ShmPool:
        if self._pool is None:
            self._pool = ShmPool(self.pool_slots, self.slot_size, session=self.session, label=self.channel_id)
        return self._pool

    def _ensure_pool_or_log(self) -> ShmPool | None:
        try:
            return self._ensure_pool()
        except ShmFull as exc:
            log.error(
                "no room for a shared-memory pool; this input gets items over its socket",
                output=self.channel_id,
                error=str(exc),
            )
            return None

    # --- helpers ---

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _check_running(self) -> None:
        if not self._started or self._closed:
            raise PipelineError(f"output {self.channel_id} is {'closed' if self._closed else 'not started'}")

    @property
    def inputs(self) -> list[str]:
        return list(self._subs)

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for the device layer to publish: per input, the shared queue, the pool."""
        return {
            "items_written": self.items_written,
            "dropped_no_shared_ready": self.dropped_no_shared_ready,
            "dropped": self.dropped_no_shared_ready
            + self._dropped_gone
            + sum(s.dropped for s in self._subs.values()),
            "shared_queue_depth": len(self._shared_queue),
            "inputs": {k: s.stats() for k, s in self._subs.items()},
            "pool": (self._pool.describe() | {"exhausted": self._pool.exhausted_count})
            if self._pool
            else None,
        }


def _advertised(bind_host: str) -> str:
    return socket.gethostname() if bind_host in ("", "0.0.0.0", "::") else bind_host


__all__ = ["OutputEndpoint"]
