"""RabbitMQ through aio-pika, with the hot paths on its aiormq channels.

aio-pika opens the connection and the channels; publishing, consuming and acknowledging go straight
to the underlying aiormq channel, which skips aio-pika's per-message wrapper objects (about half the
client CPU per message, see docs/protocol.md). Recovery is our own: the transport remembers every
exchange, queue, binding and consumer and replays them after a reconnect, so that an exclusive
instance queue taken meanwhile by someone else is noticed (``queue_lost``) instead of silently lost.

Channels: ``declare`` (errors close a channel, so declarations get one of their own), ``publish``,
and one per consumer lane: ``slots`` (instance queues, acknowledged in batches under a prefetch
window so that only a bounded number of slot calls can sit ahead of a heartbeat in the socket) and
``topology`` (heartbeats, never held up by slot work).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aio_pika
import aiormq
import structlog
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from ..errors import BrokerUnavailable, DecodeError, QueueLocked
from ..wire import APP_ID, CONTENT_TYPE, Message, message_from_headers
from .base import QueueSpec, Transport

log = structlog.get_logger(__name__)

SLOT_PREFETCH = 16
ACK_DELAY = 0.01  # seconds an acknowledgement may wait to be batched with later ones
_RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 1.0, 2.0)


class AmqpTransport(Transport):
    """A robust link to RabbitMQ."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        max_message_size: int = 64 * 1024 * 1024,
        prefetch: int = SLOT_PREFETCH,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(url, name=name, max_message_size=max_message_size)
        self.prefetch = prefetch
        self.connect_timeout = connect_timeout
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channels: dict[str, aio_pika.abc.AbstractChannel] = {}
        self._raw: dict[str, aiormq.abc.AbstractChannel] = {}
        self._consumer_tags: dict[str, str] = {}
        self._closing = False
        self._up = False
        self._reconnect_task: asyncio.Task[None] | None = None
        self._ack_tag = 0
        self._ack_pending = 0
        self._ack_timer: asyncio.TimerHandle | None = None

    @property
    def connected(self) -> bool:
        return self._up

    # --- lifecycle -------------------------------------------------------------------------------
    async def connect(self) -> None:
        self._closing = False
        await self._open()
        self._up = True

    async def _open(self) -> None:
        try:
            connection = await aio_pika.connect(
                self.url,
                timeout=self.connect_timeout,
                client_properties={"connection_name": f"karabo-async {self.name}"},
            )
        except (TimeoutError, OSError, aiormq.exceptions.AMQPError, StopAsyncIteration) as exc:
            # aiormq raises StopAsyncIteration when the socket closes during the handshake
            reason = str(exc) or type(exc).__name__
            raise BrokerUnavailable(f"cannot connect to broker {_redact(self.url)}: {reason}") from exc
        self._connection = connection
        for lane in ("declare", "publish", "slots", "topology"):
            await self._open_channel(lane)
        connection.close_callbacks.add(self._on_connection_closed)

    async def _open_channel(self, lane: str) -> None:
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False, on_return_raises=False)
        raw = await channel.get_underlay_channel()
        if lane == "slots":
            await raw.basic_qos(prefetch_count=self.prefetch)
        self._channels[lane] = channel
        self._raw[lane] = raw

    async def close(self) -> None:
        self._closing = True
        self._up = False
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
        if self._connection is not None:
            self._connection.close_callbacks.discard(self._on_connection_closed)
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection = None

    def _on_connection_closed(self, _sender: object, exc: BaseException | None = None) -> None:
        if self._closing:
            return
        log.warning("broker connection lost", transport=self.name, reason=str(exc))
        self._up = False
        self._consumer_tags.clear()
        self._ack_tag = 0
        self._ack_pending = 0
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._notify_lost(exc)
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        attempt = 0
        while not self._closing:
            await asyncio.sleep(_RECONNECT_DELAYS[min(attempt, len(_RECONNECT_DELAYS) - 1)])
            attempt += 1
            try:
                await self._open()
                await self._replay()
            except Exception as exc:  # whatever a half-open link raises, keep trying until closed
                log.info("reconnect attempt failed", transport=self.name, attempt=attempt, reason=str(exc))
                await self._drop_connection()
                continue
            self._up = True
            log.info("broker connection restored", transport=self.name, attempts=attempt)
            self._notify_restored()
            return

    async def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close_callbacks.discard(self._on_connection_closed)
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

    async def _replay(self) -> None:
        """Declare again everything this transport had, in dependency order."""
        for name, alternate in self.exchanges.items():
            await self._declare_exchange(name, alternate)
        for spec in list(self.queues.values()):
            try:
                await self._declare_queue(spec)
            except QueueLocked as exc:
                self.queues.pop(spec.name, None)
                self._notify_queue_lost(spec.name, exc)
                continue
            for exchange, key in spec.bindings:
                await self._bind(spec.name, exchange, key)
            if spec.handler is not None:
                await self._consume(spec)

    # --- declarations ----------------------------------------------------------------------------
    async def _declare(self, operation: str, **kwargs: Any) -> None:
        """Run a declaration; a channel error closes the channel, so reopen it before re-raising."""
        raw = self._raw_channel("declare")
        try:
            await getattr(raw, operation)(**kwargs)
        except aiormq.exceptions.ChannelClosed:
            await self._open_channel("declare")
            raise

    async def _declare_exchange(self, name: str, alternate: str | None) -> None:
        arguments = {"alternate-exchange": alternate} if alternate else None
        await self._declare(
            "exchange_declare", exchange=name, exchange_type="topic", durable=False, arguments=arguments
        )

    async def _declare_queue(self, spec: QueueSpec) -> None:
        arguments: dict[str, Any] = {}
        if spec.max_length is not None:
            arguments["x-max-length"] = spec.max_length
        if spec.message_ttl is not None:
            arguments["x-message-ttl"] = int(spec.message_ttl * 1000)
        if spec.dead_letter_exchange:
            arguments["x-dead-letter-exchange"] = spec.dead_letter_exchange
        try:
            await self._declare(
                "queue_declare",
                queue=spec.name,
                exclusive=spec.exclusive,
                durable=spec.durable,
                auto_delete=False,
                arguments=arguments or None,
            )
        except aiormq.exceptions.ChannelLockedResource as exc:
            raise QueueLocked(f"queue {spec.name!r} is held exclusively by another connection") from exc

    async def _delete_queue(self, name: str) -> None:
        if self._up:
            with contextlib.suppress(aiormq.exceptions.ChannelClosed):
                await self._declare("queue_delete", queue=name)

    async def _bind(self, queue: str, exchange: str, key: str) -> None:
        await self._declare("queue_bind", queue=queue, exchange=exchange, routing_key=key)

    async def _unbind(self, queue: str, exchange: str, key: str) -> None:
        if self._up:
            await self._declare("queue_unbind", queue=queue, exchange=exchange, routing_key=key)

    def _raw_channel(self, lane: str) -> aiormq.abc.AbstractChannel:
        raw = self._raw.get(lane)
        if raw is None or raw.is_closed:
            raise BrokerUnavailable(f"not connected to broker {_redact(self.url)} ({self.name})")
        return raw

    # --- consuming -------------------------------------------------------------------------------
    async def _consume(self, spec: QueueSpec) -> None:
        lane = "slots" if spec.lane == "slots" else "topology"
        raw = self._raw_channel(lane)
        acked = lane == "slots"
        handler = spec.handler
        assert handler is not None
        exchange_cache: dict[str, str] = {}

        async def on_delivery(delivered: DeliveredMessage) -> None:
            if acked:
                self._ack_later(delivered)
            message = _to_message(delivered, exchange_cache, self.max_message_size)
            if message is None:
                return
            pending = handler(message)
            if pending is not None:
                await pending

        ok = await raw.basic_consume(spec.name, on_delivery, no_ack=not acked)
        assert ok.consumer_tag is not None
        self._consumer_tags[spec.name] = ok.consumer_tag

    async def _cancel(self, spec: QueueSpec) -> None:
        tag = self._consumer_tags.pop(spec.name, None)
        if tag is not None and self._up:
            lane = "slots" if spec.lane == "slots" else "topology"
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await self._raw_channel(lane).basic_cancel(tag)

    def _ack_later(self, delivered: DeliveredMessage) -> None:
        """Acknowledge in batches: one ``multiple`` ack when half the prefetch window is used or
        ACK_DELAY passed, so a lone request/reply pays no extra socket write per message while a
        flood still keeps the window open."""
        tag = getattr(delivered.delivery, "delivery_tag", None)
        if tag is None:
            return
        self._ack_tag = max(self._ack_tag, tag)
        self._ack_pending += 1
        if self._ack_pending * 2 >= self.prefetch:
            self._flush_acks(delivered.channel)
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(
                ACK_DELAY, self._flush_acks, delivered.channel
            )

    def _flush_acks(self, channel: aiormq.abc.AbstractChannel) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._ack_pending = 0
        if channel.is_closed or self._ack_tag == 0:
            return
        tag, self._ack_tag = self._ack_tag, 0
        ack: Any = channel.basic_ack(tag, multiple=True, wait=False)
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(ack)
        task.add_done_callback(_ignore_closed)

    # --- publishing ------------------------------------------------------------------------------
    async def publish(self, exchange: str, routing_key: str, message: Message) -> None:
        if not self._up:
            raise BrokerUnavailable(f"not connected to broker {_redact(self.url)} ({self.name})")
        expiration = None
        if message.deadline is not None:
            expiration = str(max(1, int((message.deadline - time.time()) * 1000)))
        properties = Basic.Properties(
            content_type=CONTENT_TYPE,
            headers=message.headers(),  # type: ignore[arg-type]
            delivery_mode=1,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            expiration=expiration,
            message_id=message.correlation_id or "-",
            timestamp=_amqp_time(message.timestamp),
            message_type=message.kind.value,
            app_id=APP_ID,
        )
        raw = self._raw_channel("publish")
        try:
            await raw.basic_publish(  # type: ignore[call-arg]
                message.body, exchange=exchange, routing_key=routing_key, properties=properties, wait=False
            )
        except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError) as exc:
            if isinstance(exc, aiormq.exceptions.ChannelClosed) and self._up:
                await self._open_channel("publish")
            raise BrokerUnavailable(f"publishing to {exchange!r}/{routing_key!r} failed: {exc}") from exc


def _amqp_time(t: float) -> Any:
    # pamqp wants a datetime for the timestamp property (second resolution on the wire).
    import datetime

    return datetime.datetime.fromtimestamp(int(t), tz=datetime.UTC)


def _to_message(delivered: DeliveredMessage, cache: dict[str, str], max_size: int) -> Message | None:
    """Turn a delivery into a Message; malformed or oversize messages are logged and dropped."""
    delivery = delivered.delivery
    exchange = str(getattr(delivery, "exchange", "") or "")
    routing_key = str(getattr(delivery, "routing_key", "") or "")
    body = delivered.body
    if len(body) > max_size:
        log.warning("dropped oversize message", exchange=exchange, routing_key=routing_key, size=len(body))
        return None
    props = delivered.header.properties
    stamp = props.timestamp
    try:
        return message_from_headers(
            props.headers,  # type: ignore[arg-type]
            body,
            correlation_id=props.correlation_id,
            reply_to=props.reply_to,
            timestamp=stamp.timestamp() if stamp is not None else None,
            exchange=cache.setdefault(exchange, exchange),
            routing_key=routing_key,
        )
    except DecodeError as exc:
        log.warning("dropped malformed message", exchange=exchange, routing_key=routing_key, reason=str(exc))
        return None


def _ignore_closed(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("batched ack not sent", reason=str(task.exception()))


def _redact(url: str) -> str:
    """Never print a password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}@{host}"
    return url
