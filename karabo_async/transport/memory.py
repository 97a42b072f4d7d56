"""An in-process broker with RabbitMQ's routing semantics, for single-process runs and fast tests.

Topic exchanges with ``*``/``#`` wildcards, alternate exchanges, exclusive queues owned by a
connection, bounded queues that dead-letter what they drop (``maxlen``) or what expired
(``expired``, from the queue TTL or the message deadline). ``memory://`` and ``memory://name``
select a broker shared by every transport of this process with that URL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import deque
from functools import lru_cache
from typing import ClassVar

import structlog

from ..errors import BrokerUnavailable, QueueLocked
from ..wire import Message
from .base import QueueSpec, Transport

log = structlog.get_logger(__name__)

_DRAIN_BATCH = 64


@lru_cache(maxsize=65536)
def topic_matches(binding_key: str, routing_key: str) -> bool:
    """AMQP topic matching: ``*`` is exactly one word, ``#`` zero or more words."""
    if binding_key == "#":
        return True
    pattern = binding_key.split(".")
    words = routing_key.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(words)
        if pattern[i] == "#":
            return any(match(i + 1, k) for k in range(j, len(words) + 1))
        if j == len(words):
            return False
        return (pattern[i] == "*" or pattern[i] == words[j]) and match(i + 1, j + 1)

    return match(0, 0)


class _Queue:
    def __init__(self, spec: QueueSpec, owner: int | None) -> None:
        self.spec = spec
        self.owner = owner
        self.items: deque[tuple[Message, float]] = deque()
        self.consumer: MemoryTransport | None = None
        self.scheduled = False


class MemoryBroker:
    """The shared state of one in-process broker."""

    _brokers: ClassVar[dict[str, MemoryBroker]] = {}

    def __init__(self) -> None:
        self.exchanges: dict[str, str | None] = {}
        self.bindings: dict[str, list[tuple[str, str]]] = {}  # exchange -> [(key, queue)]
        self.queues: dict[str, _Queue] = {}

    @classmethod
    def named(cls, url: str) -> MemoryBroker:
        return cls._brokers.setdefault(url.rstrip("/"), cls())

    def route(self, exchange: str, routing_key: str, message: Message, depth: int = 0) -> None:
        names = {q for key, q in self.bindings.get(exchange, ()) if topic_matches(key, routing_key)}
        if not names:
            alternate = self.exchanges.get(exchange)
            if alternate and depth < 2:
                self.route(alternate, routing_key, message, depth + 1)
            return
        for name in names:
            queue = self.queues.get(name)
            if queue is not None:
                self.enqueue(queue, dataclasses.replace(message, exchange=exchange, routing_key=routing_key))

    def enqueue(self, queue: _Queue, message: Message) -> None:
        queue.items.append((message, time.monotonic()))
        limit = queue.spec.max_length
        while limit is not None and len(queue.items) > limit:
            dropped, _ = queue.items.popleft()
            self.dead_letter(queue, dropped, "maxlen")
        if queue.consumer is not None:
            queue.consumer.schedule(queue)

    def dead_letter(self, queue: _Queue, message: Message, reason: str) -> None:
        dlx = queue.spec.dead_letter_exchange
        if dlx:
            # as RabbitMQ does, a dead-lettered message loses its expiration so it cannot expire again
            self.route(
                dlx, message.routing_key, dataclasses.replace(message, death_reason=reason, deadline=None)
            )

    def expired(self, queue: _Queue, message: Message, enqueued: float) -> bool:
        ttl = queue.spec.message_ttl
        if ttl is not None and time.monotonic() - enqueued > ttl:
            return True
        return message.deadline is not None and time.time() > message.deadline


class MemoryTransport(Transport):
    """A connection to an in-process :class:`MemoryBroker`."""

    _ids = itertools.count(1)

    def __init__(self, url: str, *, name: str, max_message_size: int = 64 * 1024 * 1024) -> None:
        super().__init__(url, name=name, max_message_size=max_message_size)
        self.broker = MemoryBroker.named(url)
        self.connection_id = next(self._ids)
        self._open = False
        self._running: set[asyncio.Future[None]] = set()

    @property
    def connected(self) -> bool:
        return self._open

    async def connect(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
        for name, queue in list(self.broker.queues.items()):
            if queue.consumer is self:
                queue.consumer = None
            if queue.owner == self.connection_id:
                self._drop_queue(name)

    def _drop_queue(self, name: str) -> None:
        self.broker.queues.pop(name, None)
        for exchange, pairs in self.broker.bindings.items():
            self.broker.bindings[exchange] = [(k, q) for k, q in pairs if q != name]

    def _check_open(self) -> None:
        if not self._open:
            raise BrokerUnavailable(f"in-process broker {self.url!r}: connection {self.name!r} is closed")

    async def _declare_exchange(self, name: str, alternate: str | None) -> None:
        self._check_open()
        self.broker.exchanges.setdefault(name, alternate)
        self.broker.bindings.setdefault(name, [])

    async def _declare_queue(self, spec: QueueSpec) -> None:
        self._check_open()
        existing = self.broker.queues.get(spec.name)
        if existing is not None:
            if existing.owner is not None and existing.owner != self.connection_id:
                raise QueueLocked(f"queue {spec.name!r} is held exclusively by another connection")
            existing.spec = spec
            return
        owner = self.connection_id if spec.exclusive else None
        self.broker.queues[spec.name] = _Queue(spec, owner)

    async def _delete_queue(self, name: str) -> None:
        self._drop_queue(name)

    async def _bind(self, queue: str, exchange: str, key: str) -> None:
        self._check_open()
        if exchange not in self.broker.exchanges:
            raise LookupError(f"no exchange {exchange!r} in the in-process broker")
        self.broker.bindings[exchange].append((key, queue))

    async def _unbind(self, queue: str, exchange: str, key: str) -> None:
        pairs = self.broker.bindings.get(exchange, [])
        if (key, queue) in pairs:
            pairs.remove((key, queue))

    async def _consume(self, spec: QueueSpec) -> None:
        self._check_open()
        queue = self.broker.queues[spec.name]
        queue.consumer = self
        if queue.items:
            self.schedule(queue)

    async def _cancel(self, spec: QueueSpec) -> None:
        queue = self.broker.queues.get(spec.name)
        if queue is not None and queue.consumer is self:
            queue.consumer = None

    async def publish(self, exchange: str, routing_key: str, message: Message) -> None:
        self._check_open()
        if exchange not in self.broker.exchanges:
            raise LookupError(f"no exchange {exchange!r} in the in-process broker")
        self.broker.route(exchange, routing_key, message)

    # --- delivery --------------------------------------------------------------------------------
    def schedule(self, queue: _Queue) -> None:
        if not queue.scheduled:
            queue.scheduled = True
            asyncio.get_running_loop().call_soon(self._drain, queue)

    def _drain(self, queue: _Queue) -> None:
        """Deliver a batch in order, then give the loop back so other queues (lanes) get their turn."""
        queue.scheduled = False
        handler = queue.spec.handler
        if queue.consumer is not self or handler is None or not self._open:
            return
        for _ in range(_DRAIN_BATCH):
            if not queue.items:
                return
            message, enqueued = queue.items.popleft()
            if self.broker.expired(queue, message, enqueued):
                self.broker.dead_letter(queue, message, "expired")
                continue
            try:
                pending = handler(message)
                if pending is not None:
                    task = asyncio.ensure_future(pending)
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
            except Exception:
                log.exception("message handler failed", queue=queue.spec.name)
        if queue.items:
            self.schedule(queue)
