"""The input end of a pipeline: connects to outputs, grants credit, hands items to ``on_data``.

Each output connection grants ``credit_window`` items up front and replenishes in batches as
``on_data`` finishes, so the output never sends more than the input can hold and slowness is
decided at the output by the policies. Shared-memory slots are released right after ``on_data``
returns: arrays that must outlive the call need copying (``np.array(view)``).

A lost connection is retried by itself, asking ``resolve`` for the output's current address.
"""

from __future__ import annotations

import asyncio
import inspect
import mmap
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import structlog

from ..errors import DecodeError, PipelineError
from ..hash import Hash
from . import registry
from .allocator import tune_for_large_items
from .framing import Frame, frame_parts, unpack_header
from .identity import host_id
from .policies import (
    DATA_DISTRIBUTIONS,
    ON_SLOWNESS,
    TRANSPORTS,
    DataDistribution,
    ItemMeta,
    OnSlowness,
    Transport,
    check_channel_id,
    check_choice,
    check_positive,
)
from .registry import LocalSubscription
from .shm import attach
from .stream import FrameProtocol

log = structlog.get_logger(__name__)

OnData = Callable[[Mapping[str, Any], ItemMeta], Awaitable[None] | None]
OnEndOfStream = Callable[[], Awaitable[None] | None]
Resolve = Callable[[str], Awaitable[Mapping[str, Any]]]

_EOS: Final = object()


class _Link:
    """One established connection to an output (a new one after every reconnect)."""

    transport = ""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.input = conn.input
        self.alive = True
        self.established = True  # a socket link only once the output's welcome arrived
        self._owed = 0

    def consumed(self, slot: int | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _gone(self) -> None:
        if self.alive:
            self.alive = False
            self.conn.lost(self)


class _LocalLink(_Link):
    transport = "local"
    subscription: LocalSubscription

    def deliver(self, data: Mapping[str, Any], meta: ItemMeta) -> None:
        self.input._enqueue((self, data, meta, None))

    def deliver_eos(self) -> None:
        self.input._enqueue((self, _EOS, None, None))

    def output_closed(self) -> None:
        self._gone()

    def consumed(self, slot: int | None) -> None:
        if not self.alive:
            return
        self._owed += 1
        if self._owed >= self.input._credit_batch:
            self.subscription.grant(self._owed)
            self._owed = 0

    def close(self) -> None:
        if self.alive:
            self.alive = False
            self.subscription.detach()


class _StreamLink(_Link):
    def __init__(self, conn: _Connection, transport: str) -> None:
        super().__init__(conn)
        self.transport = transport
        self.established = False
        self.protocol: FrameProtocol | None = None
        self.segment: mmap.mmap | None = None
        self.welcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.welcome.add_done_callback(_retrieve)

    def on_frame(self, proto: FrameProtocol, frame: Frame) -> None:
        header = unpack_header(frame, self.segment)
        kind = header["k"]
        if kind == "d":
            data = header.get("d")
            if not isinstance(data, dict | Hash):
                raise DecodeError(f"item must be a map; got {type(data).__name__}")
            slot = header.get("s")
            if slot is not None and (not isinstance(slot, int) or self.segment is None):
                raise DecodeError(f"bad slot {slot!r}")
            self.input._enqueue((self, data, ItemMeta.from_wire(header.get("m")), slot))
        elif kind == "e":
            self.input._enqueue((self, _EOS, None, None))
        elif kind == "welcome":
            seg = header.get("seg")
            if seg is not None:
                if not isinstance(seg, str):
                    raise DecodeError(f"bad segment name {seg!r}")
                self.segment = attach(seg)
            self.established = True
            if not self.welcome.done():
                self.welcome.set_result(None)
        elif kind == "x":
            log.info("output closed", input=self.input.channel_id, output=self.conn.output_id)
            proto.close()
        else:
            raise DecodeError(f"unexpected frame kind {kind!r} from an output")

    def on_lost(self, proto: FrameProtocol, exc: Exception | None) -> None:
        if not self.welcome.done():
            self.welcome.set_exception(PipelineError(f"output {self.conn.output_id} closed during handshake"))
        self._gone()

    def consumed(self, slot: int | None) -> None:
        if not self.alive or self.protocol is None:
            return
        self._owed += 1
        if slot is not None or self._owed >= self.input._credit_batch:
            try:
                self.protocol.send(
                    frame_parts({"k": "c", "n": self._owed, "r": [] if slot is None else [slot]})
                )
            except PipelineError as exc:
                log.debug(
                    "could not grant credit; connection gone", output=self.conn.output_id, error=str(exc)
                )
            self._owed = 0

    def close(self) -> None:
        self.alive = False
        if self.protocol is not None:
            self.protocol.close()


def _retrieve(fut: asyncio.Future[None]) -> None:
    # The handshake may be abandoned (timeout) before the connection fails: not an unhandled error.
    if not fut.cancelled():
        fut.exception()


class _Connection:
    """The wish to be connected to one output, kept up by a task that reconnects."""

    def __init__(self, inp: InputEndpoint, output_id: str, info: Mapping[str, Any] | None) -> None:
        self.input = inp
        self.output_id = output_id
        self.info = info
        self.link: _Link | None = None
        self.reconnects = 0
        self.last_error: str | None = None
        self.changed = asyncio.Event()
        self._lost = asyncio.Event()
        self._retry = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"pipeline-input-{output_id}")

    @property
    def connected(self) -> bool:
        # Not before the handshake is done: the output does not know this input until then.
        return self.link is not None and self.link.alive and self.link.established

    def lost(self, link: _Link) -> None:
        if link is self.link:
            self._lost.set()
            self.changed.set()

    async def _run(self) -> None:
        delay = self.input.reconnect_delay[0]
        first = True
        while True:
            try:
                info = await self._address(first)
                first = False
                self._lost.clear()
                await self._open(info)
                self.last_error = None
                delay = self.input.reconnect_delay[0]
                log.debug(
                    "input connected",
                    input=self.input.channel_id,
                    output=self.output_id,
                    transport=self.link.transport if self.link else None,
                )
                self.changed.set()
                await self._lost.wait()
                log.info(
                    "connection to output lost; reconnecting",
                    input=self.input.channel_id,
                    output=self.output_id,
                )
            except (PipelineError, DecodeError, OSError, TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.info(
                    "cannot connect to output; will retry",
                    input=self.input.channel_id,
                    output=self.output_id,
                    error=self.last_error,
                    retry_in=delay,
                )
            finally:
                if self.link is not None:
                    self.link.close()
                self.link = None
                self.changed.set()
            # Back off, unless told the output is (back) up: then try at once.
            try:
                async with asyncio.timeout(delay):
                    await self._retry.wait()
            except TimeoutError:
                pass
            self._retry.clear()
            delay = min(2 * delay, self.input.reconnect_delay[1])
            self.reconnects += 1

    def retry_now(self) -> None:
        """Skip the back-off: the output is worth trying again (e.g. its device just came up)."""
        if not self.connected:
            self._retry.set()

    async def _address(self, first: bool) -> Mapping[str, Any]:
        resolve = self.input.resolve
        if (first or resolve is None) and self.info is not None:
            return self.info
        if resolve is None:
            raise PipelineError(f"no address for output {self.output_id} and no resolve callback")
        try:
            self.info = await resolve(self.output_id)
        except Exception as exc:
            raise PipelineError(f"resolving output {self.output_id} failed: {exc!r}") from exc
        return self.info

    async def _open(self, info: Mapping[str, Any]) -> None:
        path = self.input.choose_path(self.output_id, info)
        if path == "local":
            self._open_local()
        else:
            await self._open_stream(info, path)

    def _open_local(self) -> None:
        output = registry.lookup(self.output_id)
        if output is None:
            raise PipelineError(f"output {self.output_id} is not running in this process")
        link = _LocalLink(self)
        inp = self.input
        link.subscription = output.attach_local(
            inp.channel_id, inp.data_distribution, inp.on_slowness, inp.max_queue_length, link
        )
        self.link = link
        link.subscription.grant(inp.credit_window)

    async def _open_stream(self, info: Mapping[str, Any], path: str) -> None:
        loop = asyncio.get_running_loop()
        link = _StreamLink(self, path)
        self.link = link

        def factory() -> FrameProtocol:
            return FrameProtocol(f"{self.input.channel_id}->{self.output_id}", link.on_frame, link.on_lost)

        timeout = self.input.handshake_timeout
        async with asyncio.timeout(timeout):
            if path == "shm":
                # Connected by hand: uvloop refuses abstract addresses in create_unix_connection.
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, "\0" + str(info["unix_path"])[1:])
                    _, proto = await loop.create_unix_connection(factory, sock=sock)
                except BaseException:
                    sock.close()
                    raise
            else:
                _, proto = await loop.create_connection(factory, str(info["tcp_host"]), int(info["tcp_port"]))
            link.protocol = proto
            inp = self.input
            hello = {
                "k": "hello",
                "input": inp.channel_id,
                "dist": inp.data_distribution,
                "slow": inp.on_slowness,
                "qlen": inp.max_queue_length,
                "shm": path == "shm",
                "host_id": host_id(),
                "credits": inp.credit_window,
            }
            proto.send(frame_parts(hello))
            await link.welcome

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "transport": self.link.transport if self.link else None,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        if self.link is not None:
            self.link.close()


class InputEndpoint:
    """An input channel ``instance_id:name``; calls ``on_data(data, meta)`` for each item in turn.

    ``data_distribution``: ``copy`` (every item) or ``shared`` (a share of the items);
    ``on_slowness`` and ``max_queue_length`` tell outputs what to do when this input has no credit
    (copy only; for shared inputs the output's ``no_shared_ready`` decides). ``on_end_of_stream()``
    runs once every connected output has sent its end of stream. ``resolve(output_id)`` returns an
    output's current :meth:`OutputEndpoint.address_info`, used on every reconnect.
    """

    def __init__(
        self,
        instance_id: str,
        name: str,
        *,
        data_distribution: DataDistribution = "copy",
        on_slowness: OnSlowness = "wait",
        max_queue_length: int = 2,
        credit_window: int = 8,
        on_data: OnData | None = None,
        on_end_of_stream: OnEndOfStream | None = None,
        resolve: Resolve | None = None,
        transport: Transport = "auto",
        handshake_timeout: float = 5.0,
        reconnect_delay: tuple[float, float] = (0.05, 2.0),
    ) -> None:
        tune_for_large_items()
        self.channel_id = f"{instance_id}:{name}"
        check_channel_id(self.channel_id)
        self.data_distribution: DataDistribution = check_choice(  # type: ignore[assignment]
            "data_distribution", data_distribution, DATA_DISTRIBUTIONS
        )
        self.on_slowness: OnSlowness = check_choice("on_slowness", on_slowness, ON_SLOWNESS)  # type: ignore[assignment]
        self.max_queue_length = check_positive("max_queue_length", max_queue_length)
        self.credit_window = check_positive("credit_window", credit_window)
        self.transport: Transport = check_choice("transport", transport, TRANSPORTS)  # type: ignore[assignment]
        self.on_data = on_data
        self.on_end_of_stream = on_end_of_stream
        self.resolve = resolve
        self.handshake_timeout = handshake_timeout
        self.reconnect_delay = reconnect_delay
        self._credit_batch = max(1, credit_window // 2)
        self._connections: dict[str, _Connection] = {}
        self._queue: deque[tuple[_Link, Any, ItemMeta | None, int | None]] = deque()
        self._has_items = asyncio.Event()
        self._consumer: asyncio.Task[None] | None = None
        self._eos_from: set[str] = set()
        self.last_end_of_stream_from = ""
        self.received = 0
        self.processed = 0
        self.on_data_errors = 0
        self.eos_received = 0
        self.end_of_stream_calls = 0
        self._closed = False

    # --- connections ---

    async def connect(
        self, output_id: str, info: Mapping[str, Any] | None = None, *, timeout: float = 5.0
    ) -> bool:
        """Keep connected to ``output_id`` from now on; True once connected, False if not within ``timeout``.

        ``info`` is the output's address (else ``resolve`` is asked). A failed attempt is retried in
        the background; :attr:`missing_connections` tells which outputs are not connected.
        """
        if self._closed:
            raise PipelineError(f"input {self.channel_id} is closed")
        check_channel_id(output_id)
        if info is not None:
            self.choose_path(output_id, info)  # a forced, impossible path is a configuration error
        if self._consumer is None:
            self._consumer = asyncio.get_running_loop().create_task(self._consume())
        conn = self._connections.get(output_id)
        if conn is None:
            conn = self._connections[output_id] = _Connection(self, output_id, info)
        return await self._wait_connected(conn, timeout)

    async def _wait_connected(self, conn: _Connection, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while not conn.connected:
                    conn.changed.clear()
                    await conn.changed.wait()
        except TimeoutError:
            return False
        return True

    async def wait_connected(self, output_id: str, timeout: float = 5.0) -> bool:
        conn = self._connections.get(output_id)
        if conn is None:
            raise PipelineError(f"input {self.channel_id} was never asked to connect to {output_id}")
        return await self._wait_connected(conn, timeout)

    def retry(self, output_id: str) -> None:
        """Try ``output_id`` again now if it is not connected (e.g. its device has just started)."""
        conn = self._connections.get(output_id)
        if conn is not None:
            conn.retry_now()

    async def disconnect(self, output_id: str) -> None:
        conn = self._connections.pop(output_id, None)
        if conn is not None:
            await conn.stop()

    def choose_path(self, output_id: str, info: Mapping[str, Any]) -> str:
        """Which path reaches this output: ``local``, ``shm`` or ``tcp``; PipelineError if none."""
        same_host = info.get("host_id") == host_id()
        local = same_host and info.get("pid") == os.getpid() and bool(info.get("local"))
        shm = same_host and bool(info.get("shm")) and bool(info.get("unix_path"))
        tcp = bool(info.get("tcp_host")) and isinstance(info.get("tcp_port"), int)
        wanted = self.transport
        for path, possible in (("local", local), ("shm", shm), ("tcp", tcp)):
            if possible and wanted in ("auto", path):
                return path
        raise PipelineError(
            f"input {self.channel_id} cannot reach output {output_id} by transport {wanted!r}"
            f" (output offers local={local}, shm={shm}, tcp={tcp})"
        )

    @property
    def connected_output_channels(self) -> list[str]:
        return list(self._connections)

    @property
    def connected(self) -> list[str]:
        return [k for k, c in self._connections.items() if c.connected]

    @property
    def missing_connections(self) -> list[str]:
        return [k for k, c in self._connections.items() if not c.connected]

    # --- items ---

    def _enqueue(self, entry: tuple[_Link, Any, ItemMeta | None, int | None]) -> None:
        if entry[1] is not _EOS:
            self.received += 1
        self._queue.append(entry)
        self._has_items.set()

    async def _consume(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._has_items.clear()
                await self._has_items.wait()
                continue
            link, data, meta, slot = queue.popleft()
            if data is _EOS:
                await self._end_of_stream(link)
                continue
            try:
                if self.on_data is not None:
                    assert meta is not None
                    result = self.on_data(data, meta)
                    if inspect.isawaitable(result):
                        await result
            except Exception:
                self.on_data_errors += 1
                log.exception(
                    "on_data raised; item skipped", input=self.channel_id, source=meta and meta.source
                )
            finally:
                del data
                self.processed += 1
                link.consumed(slot)

    async def _end_of_stream(self, link: _Link) -> None:
        self.eos_received += 1
        self._eos_from.add(link.conn.output_id)
        self.last_end_of_stream_from = link.conn.output_id
        if not set(self.connected) <= self._eos_from:
            return
        self._eos_from.clear()
        self.end_of_stream_calls += 1
        if self.on_end_of_stream is None:
            return
        try:
            result = self.on_end_of_stream()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_end_of_stream raised", input=self.channel_id)

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for the device layer to publish."""
        return {
            "received": self.received,
            "processed": self.processed,
            "queue_depth": sum(1 for e in self._queue if e[1] is not _EOS),
            "on_data_errors": self.on_data_errors,
            "eos_received": self.eos_received,
            "end_of_stream_calls": self.end_of_stream_calls,
            "connections": {k: c.stats() for k, c in self._connections.items()},
        }

    async def close(self) -> None:
        """Disconnect from every output; items not yet handed to ``on_data`` are discarded."""
        if self._closed:
            return
        self._closed = True
        for output_id in list(self._connections):
            await self.disconnect(output_id)
        if self._consumer is not None:
            self._consumer.cancel()
            try:
                await self._consumer
            except asyncio.CancelledError:
                pass
        if self._queue:
            log.info(
                "input closed with items not processed", input=self.channel_id, discarded=len(self._queue)
            )
        self._queue.clear()

    async def __aenter__(self) -> InputEndpoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
