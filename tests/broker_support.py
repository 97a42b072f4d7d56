"""Helpers for tests that need a broker: the private node module and a TCP proxy that can be cut.

``broker/local_node.py`` is a script as well as a module and lives outside the package, so it is
loaded from its file here; tests import ``local_node`` from this module.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
import types
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aio_pika.abc import AbstractConnection

log = structlog.get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_NODE_SCRIPT = REPO_ROOT / "broker" / "local_node.py"


def _load_local_node() -> types.ModuleType:
    name = "karabo_broker_local_node"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, LOCAL_NODE_SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {LOCAL_NODE_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


local_node = _load_local_node()
LocalRabbitNode = local_node.LocalRabbitNode
broker_answers = local_node.broker_answers


def with_port(url: str, port: int, host: str = "127.0.0.1") -> str:
    """``url`` with its host and port replaced (credentials, vhost and query kept)."""
    parts = urllib.parse.urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


async def wait_for(predicate: Callable[[], bool], seconds: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` named after ``seconds``.

    For conditions that offer no event to await (a port that starts answering, a process state).
    """
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.05)


def close_watch(connection: AbstractConnection) -> asyncio.Event:
    """An event set when ``connection`` closes for any reason.

    aio-pika's own ``closed()`` resolves only after ``close()``, not when the broker goes away.
    """
    closed = asyncio.Event()
    connection.close_callbacks.add(lambda *_: closed.set())
    return closed


class TcpProxy:
    """A TCP proxy on 127.0.0.1 between clients and a broker, which a test can cut and restore.

    ``cut()`` resets every open connection and, until ``restore()``, resets new ones at once: to the
    client this looks like the broker vanishing from the network, which is how reconnection is proven
    without restarting the (shared) broker.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._is_cut = False
        self._changed = asyncio.Condition()
        self.connections_made = 0
        """Client connections piped through to the broker since the proxy started."""

    @classmethod
    def to_url(cls, broker_url: str) -> TcpProxy:
        host, port = local_node.host_and_port(broker_url)
        return cls(host, port)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("TcpProxy.start() was not awaited")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, broker_url: str) -> str:
        """``broker_url`` pointed at this proxy."""
        return with_port(broker_url, self.port)

    @property
    def open_links(self) -> int:
        return len(self._links)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def cut(self) -> None:
        """Reset every connection and refuse service until ``restore()``."""
        self._is_cut = True
        self._reset_all()
        await self._notify()

    def restore(self) -> None:
        self._is_cut = False

    async def wait_connections(self, count: int) -> None:
        """Wait until ``connections_made`` reaches ``count`` (a client has (re)connected)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.connections_made >= count)

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _reset_all(self) -> None:
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()
        self._links.clear()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._is_cut:
            client_writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError as exc:
            log.warning("tcp proxy cannot reach the broker", target=self.target_port, error=str(exc))
            client_writer.transport.abort()
            return
        link = (client_writer, upstream_writer)
        self._links.add(link)
        self.connections_made += 1
        await self._notify()
        pumps = [
            self._spawn(self._pump(client_reader, upstream_writer)),
            self._spawn(self._pump(upstream_reader, client_writer)),
        ]
        # When either direction ends, end both: a half-open AMQP connection is of no use.
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        self._links.discard(link)
        for writer in link:
            writer.transport.abort()

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError as exc:
            # A reset (from cut() or the peer) ends the pump: that is the proxy's purpose.
            log.debug("tcp proxy link reset", error=str(exc))
