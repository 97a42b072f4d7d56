"""The broker interface the framework needs, and nothing more.

Two implementations sit under it with the same routing semantics: ``amqp`` (RabbitMQ through
aio-pika) and ``memory`` (in-process, for single-process runs and fast tests). Everything above
speaks only of exchanges, queues, bindings and :class:`~karabo_async.wire.Message`.

A transport is *robust*: it remembers what was declared, bound and consumed, and replays it after
the broker comes back, telling its listeners when the link was lost and when it was restored.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from ..wire import Message

log = structlog.get_logger(__name__)

Handler = Callable[[Message], Awaitable[None] | None]
"""Called once per delivered message, in delivery order; may return an awaitable to finish later."""

DEFAULT_BROKER = "amqp://guest:guest@localhost:5672/"
DEFAULT_DOMAIN = "karabo"


def default_broker() -> str:
    return os.environ.get("KARABO_BROKER") or DEFAULT_BROKER


def default_domain() -> str:
    return os.environ.get("KARABO_DOMAIN") or DEFAULT_DOMAIN


@dataclass(slots=True)
class QueueSpec:
    """A queue as declared, kept so that it can be declared again after a broker restart."""

    name: str
    exclusive: bool = True
    max_length: int | None = None
    message_ttl: float | None = None
    dead_letter_exchange: str | None = None
    durable: bool = False
    bindings: set[tuple[str, str]] = field(default_factory=set)
    handler: Handler | None = None
    lane: str = "slots"


class ConnectionListener(Protocol):
    def connection_lost(self, exc: BaseException | None) -> None: ...

    def connection_restored(self) -> None: ...

    def queue_lost(self, queue: str, exc: BaseException) -> None: ...


class Transport(ABC):
    """One connection to a broker, shared by every instance of a process that uses it."""

    def __init__(self, url: str, *, name: str, max_message_size: int = 64 * 1024 * 1024) -> None:
        self.url = url
        self.name = name
        self.max_message_size = max_message_size
        self.exchanges: dict[str, str | None] = {}
        self.queues: dict[str, QueueSpec] = {}
        self._listeners: list[ConnectionListener] = []

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    @abstractmethod
    def connected(self) -> bool: ...

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    def add_listener(self, listener: ConnectionListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: ConnectionListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify_lost(self, exc: BaseException | None) -> None:
        for listener in list(self._listeners):
            listener.connection_lost(exc)

    def _notify_restored(self) -> None:
        for listener in list(self._listeners):
            listener.connection_restored()

    def _notify_queue_lost(self, queue: str, exc: BaseException) -> None:
        for listener in list(self._listeners):
            listener.queue_lost(queue, exc)

    # --- topology --------------------------------------------------------------------------------
    async def declare_exchange(self, name: str, *, alternate: str | None = None) -> None:
        """Declare a topic exchange (idempotent); ``alternate`` receives what nothing routes."""
        if name in self.exchanges:
            return
        await self._declare_exchange(name, alternate)
        self.exchanges[name] = alternate

    async def declare_queue(
        self,
        name: str,
        *,
        exclusive: bool = True,
        max_length: int | None = None,
        message_ttl: float | None = None,
        dead_letter_exchange: str | None = None,
        durable: bool = False,
    ) -> None:
        """Declare a queue; an exclusive queue held by another connection raises QueueLocked."""
        spec = QueueSpec(name, exclusive, max_length, message_ttl, dead_letter_exchange, durable)
        await self._declare_queue(spec)
        self.queues[name] = spec

    async def delete_queue(self, name: str) -> None:
        spec = self.queues.pop(name, None)
        if spec is not None and spec.handler is not None:
            await self._cancel(spec)
        await self._delete_queue(name)

    async def bind(self, queue: str, exchange: str, key: str) -> None:
        spec = self.queues[queue]
        if (exchange, key) in spec.bindings:
            return
        await self._bind(queue, exchange, key)
        spec.bindings.add((exchange, key))

    async def unbind(self, queue: str, exchange: str, key: str) -> None:
        spec = self.queues.get(queue)
        if spec is None or (exchange, key) not in spec.bindings:
            return
        spec.bindings.discard((exchange, key))
        await self._unbind(queue, exchange, key)

    async def consume(self, queue: str, handler: Handler, *, lane: str = "slots") -> None:
        """Deliver the queue's messages to ``handler``; lanes are independent of each other so that a
        flood on one (slot calls) never delays another (heartbeats)."""
        spec = self.queues[queue]
        spec.handler = handler
        spec.lane = lane
        await self._consume(spec)

    @abstractmethod
    async def publish(self, exchange: str, routing_key: str, message: Message) -> None:
        """Send a message; raises BrokerUnavailable while the link is down."""

    # --- what implementations provide ------------------------------------------------------------
    @abstractmethod
    async def _declare_exchange(self, name: str, alternate: str | None) -> None: ...

    @abstractmethod
    async def _declare_queue(self, spec: QueueSpec) -> None: ...

    @abstractmethod
    async def _delete_queue(self, name: str) -> None: ...

    @abstractmethod
    async def _bind(self, queue: str, exchange: str, key: str) -> None: ...

    @abstractmethod
    async def _unbind(self, queue: str, exchange: str, key: str) -> None: ...

    @abstractmethod
    async def _consume(self, spec: QueueSpec) -> None: ...

    @abstractmethod
    async def _cancel(self, spec: QueueSpec) -> None: ...


def create_transport(url: str, *, name: str) -> Transport:
    """Pick the implementation from the URL scheme: ``memory://`` or ``amqp(s)://``."""
    if url.startswith("memory:"):
        from .memory import MemoryTransport

        return MemoryTransport(url, name=name)
    if url.startswith(("amqp://", "amqps://")):
        from .amqp import AmqpTransport

        return AmqpTransport(url, name=name)
    raise ValueError(f"unsupported broker URL {url!r}: use amqp://user:password@host:port/vhost or memory://")
