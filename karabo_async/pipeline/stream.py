"""One pipeline connection over a stream socket (TCP, or a Unix socket beside shared memory).

An ``asyncio.BufferedProtocol``: the event loop receives straight into memory the
:class:`~.framing.FrameReader` hands out, so large arrays land in their final buffer. Writing
passes each array's own memory to the transport (no join, no copy into msgpack). A malformed frame
closes this connection only, with a log line.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, cast

import structlog

from ..errors import DecodeError, PipelineError
from .framing import Buffer, Frame, FrameReader

log = structlog.get_logger(__name__)

WRITE_HIGH_WATER = 8 * 1024 * 1024

FrameHandler = Callable[["FrameProtocol", Frame], None]
LostHandler = Callable[["FrameProtocol", Exception | None], None]


class FrameProtocol(asyncio.BufferedProtocol):
    """Frames in through ``on_frame``, frames out through :meth:`send` + :meth:`drain`."""

    def __init__(self, name: str, on_frame: FrameHandler, on_lost: LostHandler | None = None) -> None:
        self.name = name
        self.on_frame = on_frame
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self.closed = False
        self.context: Any = None  # whoever owns this connection keeps its state here
        self._reader = FrameReader()
        self._writable = asyncio.Event()
        self._writable.set()
        self._lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but offer the same methods.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            for frame in self._reader.buffer_updated(nbytes):
                if self.closed:
                    return
                self.on_frame(self, frame)
        except DecodeError as exc:
            log.warning(
                "malformed pipeline frame; closing this connection",
                connection=self.name,
                peer=str(self.peer),
                error=str(exc),
            )
            self.abort()
        except PipelineError as exc:
            log.warning(
                "pipeline protocol violation; closing this connection",
                connection=self.name,
                peer=str(self.peer),
                error=str(exc),
            )
            self.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._writable.set()
        if not self._lost.done():
            self._lost.set_result(None)
        if self.on_lost is not None:
            self.on_lost(self, exc)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def send(self, parts: list[Buffer]) -> None:
        """Queue a frame's parts for writing; raise PipelineError if the connection is gone."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise PipelineError(f"pipeline connection {self.name} is closed")
        for part in parts:
            transport.write(part)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark (or the connection is gone)."""
        if not self._writable.is_set():
            await self._writable.wait()
        if self.closed:
            raise PipelineError(f"pipeline connection {self.name} was lost")

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._lost)
