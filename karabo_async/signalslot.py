"""SignalSlotable: an instance on the broker with slots, signals, calls and request/reply.

Every instance owns one exclusive queue (``<domain>.instance.<id>``); the exclusivity is the
uniqueness check, done atomically by the broker. Calls are routed by instance id and the slot is
picked here, in the process (client-side dispatch). Calls whose target does not exist come back at
once through the ``returns`` exchange (alternate exchange of ``slots``), which is how
:class:`~karabo_async.errors.NoSuchInstance` is raised without waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import getpass
import inspect
import itertools
import os
import secrets
import time
import traceback
from collections import defaultdict
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar, overload

import structlog

from . import codec, errors
from .errors import (
    BrokerUnavailable,
    DecodeError,
    InstanceIdInUse,
    KaraboError,
    NoSuchInstance,
    NoSuchSlot,
    QueueLocked,
    RemoteError,
    RequestTimeout,
)
from .hub import VERSION, Hub, short_hostname
from .topology import INSTANCE_GONE, INSTANCE_NEW, INSTANCE_UPDATED, EventStream, Topology, TopologyEvent
from .wire import Kind, Message, Names, check_instance_id, check_name

log = structlog.get_logger(__name__)

current_message: contextvars.ContextVar[Message | None] = contextvars.ContextVar(
    "current_message", default=None
)
"""The message whose slot is running: devices read the caller, user and access level from it."""

_current_instance: contextvars.ContextVar[SignalSlotable | None] = contextvars.ContextVar(
    "current_instance", default=None
)
_default_instance: list[SignalSlotable] = []


def current_instance() -> SignalSlotable:
    """The instance module-level functions act for: the device or macro whose code is running, else
    the client of ``ka.connect`` (the process default)."""
    instance = _current_instance.get()
    if instance is not None and instance.online:
        return instance
    if _default_instance:
        return _default_instance[-1]
    raise RuntimeError("no current instance: use `async with karabo_async.connect():` or run inside a device")


def set_current_instance(instance: SignalSlotable | None) -> contextvars.Token[SignalSlotable | None]:
    """Make ``instance`` current for this task (and tasks it creates)."""
    return _current_instance.set(instance)


def reset_current_instance(token: contextvars.Token[SignalSlotable | None]) -> None:
    _current_instance.reset(token)


def push_default_instance(instance: SignalSlotable) -> None:
    _default_instance.append(instance)


def pop_default_instance(instance: SignalSlotable) -> None:
    if instance in _default_instance:
        _default_instance.remove(instance)


F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_REQUEST_TIMEOUT = float(os.environ.get("KARABO_REQUEST_TIMEOUT", "10"))
DEFAULT_QUEUE_LENGTH = 100_000
DEFAULT_QUEUE_TTL = 300.0

_counters: dict[str, itertools.count[int]] = defaultdict(lambda: itertools.count(1))

# What a slot may raise without taking its instance down: a sys.exit() in one device's slot must not
# end the server process hosting all the others (it is reported like any other slot error).
_SLOT_ERRORS = (Exception, SystemExit)


def generate_instance_id(kind: str, class_id: str | None = None) -> str:
    """Ids for instances nobody named: ``<host>_Server_<pid>`` for servers,
    ``<host>-<pid>_<ClassId>_<n>`` for devices and everything else."""
    host, pid = short_hostname(), os.getpid()
    if kind == "server":
        return f"{host}_Server_{pid}"
    name = class_id or kind.capitalize()
    return f"{host}-{pid}_{name}_{next(_counters[name])}"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


class _Pending:
    __slots__ = ("future", "reply_slot", "slot", "target", "timeout")

    def __init__(
        self,
        target: str,
        slot: str,
        timeout: float,
        future: asyncio.Future[Any] | None,
        reply_slot: str | None,
    ) -> None:
        self.target = target
        self.slot = slot
        self.timeout = timeout
        self.future = future
        self.reply_slot = reply_slot


class SignalSlotable:
    """An instance that talks through the broker.

    ``broker`` defaults to env KARABO_BROKER, else amqp://guest:guest@localhost:5672/; ``memory://``
    selects the in-process broker. ``domain`` defaults to env KARABO_DOMAIN, else "karabo".
    Pass ``hub`` to share one connection and heartbeat with other instances of the process.
    """

    instance_type = "client"

    @property
    def acting_instance(self) -> SignalSlotable:
        """Whose behalf slot code runs on (module-level client functions use it)."""
        return self

    def __init__(
        self,
        instance_id: str | None = None,
        broker: str | None = None,
        domain: str | None = None,
        heartbeat_interval: float = 5.0,
        *,
        hub: Hub | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        queue_max_length: int = DEFAULT_QUEUE_LENGTH,
        queue_ttl: float = DEFAULT_QUEUE_TTL,
        track_topology: bool = True,
        class_id: str | None = None,
        info: dict[str, Any] | None = None,
        access_level: int = 1,
    ) -> None:
        self.instance_id = check_instance_id(
            generate_instance_id(self.instance_type, class_id) if instance_id is None else instance_id
        )
        self._own_hub = hub is None
        self.hub = hub or Hub(
            self.instance_id,
            broker=broker,
            domain=domain,
            heartbeat_interval=heartbeat_interval,
            track_topology=track_topology,
        )
        self.names: Names = self.hub.names
        self.request_timeout = request_timeout
        self.queue_max_length = queue_max_length
        self.queue_ttl = queue_ttl
        self._class_id = class_id or type(self).__name__
        self.user = _user()
        self.access_level = access_level
        self._extra_info = dict(info or {})
        self._slots: dict[str, Callable[..., Any]] = {}
        self._connections: dict[tuple[str, str], set[str]] = {}
        self._pending: dict[str, _Pending] = {}
        self._prefix = secrets.token_hex(3)
        self._next_id = itertools.count(1)
        self._online = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self.returned_calls = 0
        self.dropped_messages = 0
        self._register_builtin_slots()

    # --- identity --------------------------------------------------------------------------------
    @property
    def domain(self) -> str:
        return self.hub.domain

    @property
    def broker(self) -> str:
        return self.hub.broker

    @property
    def topology(self) -> Topology:
        """``{instance_id: info}`` of the live instances of the domain."""
        return self.hub.topology

    @property
    def online(self) -> bool:
        return self._online

    def instance_info(self) -> dict[str, Any]:
        """What others learn about this instance in the topology."""
        info: dict[str, Any] = {
            "type": self.instance_type,
            "class": self._class_id,
            "server": self._extra_info.get("server", ""),
            "host": self.hub.host,
            "pid": self.hub.pid,
            "status": self.info_status(),
            "heartbeat_interval": self.hub.heartbeat_interval,
            "version": VERSION,
            "process": self.hub.process_id,
            "user": self.user,
        }
        info.update(self._extra_info)
        return info

    def info_status(self) -> str:
        """The one-word health shown in the topology (devices derive it from state and alarms)."""
        return "ok"

    async def update_info(self, **changes: Any) -> None:
        """Change what the topology says about this instance and tell everyone."""
        self._extra_info.update(changes)
        if self._online:
            await self.hub.update_member(self)

    # --- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> SignalSlotable:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Go online: claim the id (atomically, through the broker), bind, consume, announce."""
        if self._online:
            return
        if self._own_hub:
            await self.hub.start()
        try:
            await self._declare_queue()
        except QueueLocked as exc:
            if self._own_hub:
                await self.hub.stop()
            raise InstanceIdInUse(self.instance_id, self.domain) from exc
        except BaseException:
            if self._own_hub:
                await self.hub.stop()
            raise
        self._online = True
        await self.hub.add_member(self)

    async def _declare_queue(self) -> None:
        t, n = self.hub.transport, self.names
        queue = n.instance_queue(self.instance_id)
        await t.declare_queue(
            queue,
            exclusive=True,
            max_length=self.queue_max_length,
            message_ttl=self.queue_ttl,
            dead_letter_exchange=n.returns,
        )
        await t.bind(queue, n.slots, f"{self.instance_id}.#")
        await t.bind(queue, n.replies, f"{self.instance_id}.#")
        await t.bind(queue, n.returns, f"#.{self.instance_id}")
        for sender, signal in self._connections:
            await t.bind(queue, n.signals, Names.signal_key(sender, signal))
        await t.consume(queue, self._on_message, lane="slots")

    async def stop(self) -> None:
        """Go offline cleanly: others learn at once that this instance is gone."""
        if not self._online:
            if self._own_hub:
                await self.hub.stop()
            return
        # Replies and signals already on their way go out first (e.g. the reply of the slot that
        # asked this instance to stop); bounded, so a stuck send cannot hold the shutdown.
        current = asyncio.current_task()
        sending = [t for t in self._tasks if t is not current and not t.done()]
        if sending:
            await asyncio.wait(sending, timeout=1.0)
        self._online = False
        with_errors = BrokerUnavailable(f"instance {self.instance_id!r} stopped")
        self._fail_pending(with_errors)
        for task in list(self._tasks):
            task.cancel()
        try:
            await self.hub.remove_member(self.instance_id)
            if self.hub.transport.connected:
                await self.hub.transport.delete_queue(self.names.instance_queue(self.instance_id))
        finally:
            if self._own_hub:
                await self.hub.stop()

    # --- slots -----------------------------------------------------------------------------------
    @overload
    def slot(self, fn_or_name: F) -> F: ...

    @overload
    def slot(self, fn_or_name: str | None = None) -> Callable[[F], F]: ...

    def slot(self, fn_or_name: F | str | None = None) -> F | Callable[[F], F]:
        """Register a sync or async function as a slot: ``@ss.slot`` or ``@ss.slot("name")``."""
        if callable(fn_or_name):
            self.register_slot(fn_or_name)
            return fn_or_name

        def decorator(fn: F) -> F:
            self.register_slot(fn, fn_or_name)
            return fn

        return decorator

    def register_slot(self, fn: Callable[..., Any], name: str | None = None) -> str:
        slot_name = check_name(name or fn.__name__, "slot")
        self._slots[slot_name] = fn
        return slot_name

    def unregister_slot(self, name: str) -> None:
        self._slots.pop(name, None)

    def has_slot(self, name: str) -> bool:
        return name in self._slots

    @property
    def slots(self) -> list[str]:
        return sorted(self._slots)

    def _register_builtin_slots(self) -> None:
        self._slots["ping"] = self._slot_ping
        self._slots["get_instance_info"] = self.instance_info
        self._slots["get_slots"] = lambda: self.slots

    def _slot_ping(self, *args: Any) -> Any:
        return args[0] if len(args) == 1 else list(args) if args else self.instance_id

    # --- sending ---------------------------------------------------------------------------------
    def _message(self, kind: Kind, target: str, name: str, args: tuple[Any, ...]) -> Message:
        return Message(
            kind=kind,
            sender=self.instance_id,
            target=target,
            name=name,
            body=codec.encode(list(args)),
            user=self.user,
            access_level=self.access_level,
        )

    async def _publish(self, exchange: str, key: str, message: Message) -> None:
        if not self._online:
            raise BrokerUnavailable(f"instance {self.instance_id!r} is not online")
        await self.hub.transport.publish(exchange, key, message)

    async def call(self, target: str, slot: str, *args: Any) -> None:
        """Call a slot without wanting a reply. An unknown target is logged when the broker returns
        the call (there is no reply to raise from)."""
        message = self._message(Kind.CALL, target, slot, args)
        await self._publish(self.names.slots, Names.call_key(target, slot, self.instance_id), message)

    async def request(self, target: str, slot: str, *args: Any, timeout: float | None = None) -> Any:
        """Call a slot and return its return value; raises NoSuchInstance, NoSuchSlot, RemoteError,
        RequestTimeout (the request is not executed once its deadline passed)."""
        seconds = self.request_timeout if timeout is None else timeout
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        correlation_id = self._track(_Pending(target, slot, seconds, future, None))
        try:
            await self._send_request(correlation_id, target, slot, args, seconds)
            async with asyncio.timeout(seconds):
                return await future
        except TimeoutError:
            if future.done() and not future.cancelled():
                # The outcome (a reply, or the broker's "expired" return) arrived as our own timer
                # fired: report that outcome, never the timer's bare TimeoutError.
                return future.result()
            raise RequestTimeout(target, slot, seconds) from None
        finally:
            self._pending.pop(correlation_id, None)

    async def request_no_wait(
        self, target: str, slot: str, *args: Any, reply_slot: str, timeout: float | None = None
    ) -> None:
        """Send a request whose reply arrives later at the local slot ``reply_slot``."""
        if reply_slot not in self._slots:
            raise NoSuchSlot(self.instance_id, reply_slot)
        seconds = self.request_timeout if timeout is None else timeout
        correlation_id = self._track(_Pending(target, slot, seconds, None, reply_slot))
        try:
            await self._send_request(correlation_id, target, slot, args, seconds)
        except BaseException:
            self._pending.pop(correlation_id, None)
            raise
        loop = asyncio.get_running_loop()
        loop.call_later(seconds, self._expire_no_wait, correlation_id)

    def _track(self, pending: _Pending) -> str:
        correlation_id = f"{self._prefix}{next(self._next_id):x}"
        self._pending[correlation_id] = pending
        return correlation_id

    async def _send_request(
        self, correlation_id: str, target: str, slot: str, args: tuple[Any, ...], seconds: float
    ) -> None:
        """A request carries its deadline: the broker drops it when it expires in a queue, and the
        callee refuses to run it when it arrives late."""
        message = self._message(Kind.REQUEST, target, slot, args)
        message.correlation_id = correlation_id
        message.reply_to = self.instance_id
        message.deadline = time.time() + seconds
        await self._publish(self.names.slots, Names.call_key(target, slot, self.instance_id), message)

    def _expire_no_wait(self, correlation_id: str) -> None:
        pending = self._pending.pop(correlation_id, None)
        if pending is not None:
            log.warning(
                "no reply in time",
                instance=self.instance_id,
                target=pending.target,
                slot=pending.slot,
                reply_slot=pending.reply_slot,
                timeout=pending.timeout,
            )

    async def emit(self, signal: str, *args: Any) -> None:
        """Send a signal to every slot connected to it."""
        message = self._message(Kind.SIGNAL, "*", signal, args)
        await self._publish(self.names.signals, Names.signal_key(self.instance_id, signal), message)

    async def broadcast(self, slot: str, *args: Any) -> None:
        """Call the slot of that name on every instance of the domain that has one."""
        message = self._message(Kind.BROADCAST, "*", slot, args)
        await self._publish(self.names.broadcast, Names.signal_key(self.instance_id, slot), message)

    async def connect(self, instance_id: str, signal: str, slot: str | Callable[..., Any]) -> None:
        """Connect ``instance_id``'s signal to a local slot (a name, or a function made a slot)."""
        check_instance_id(instance_id)
        check_name(signal, "signal")
        slot_name = slot if isinstance(slot, str) else self.register_slot(slot)
        if slot_name not in self._slots:
            raise NoSuchSlot(self.instance_id, slot_name)
        key = (instance_id, signal)
        first = key not in self._connections
        self._connections.setdefault(key, set()).add(slot_name)
        if first and self._online:
            queue = self.names.instance_queue(self.instance_id)
            await self.hub.transport.bind(queue, self.names.signals, Names.signal_key(instance_id, signal))

    async def disconnect(self, instance_id: str, signal: str, slot: str | Callable[..., Any]) -> None:
        slot_name = slot if isinstance(slot, str) else slot.__name__
        slots = self._connections.get((instance_id, signal))
        if not slots or slot_name not in slots:
            return
        slots.discard(slot_name)
        if not slots:
            del self._connections[(instance_id, signal)]
            if self._online:
                queue = self.names.instance_queue(self.instance_id)
                await self.hub.transport.unbind(
                    queue, self.names.signals, Names.signal_key(instance_id, signal)
                )

    # --- topology conveniences -------------------------------------------------------------------
    def on_instance_new(self, callback: Callable[[str, dict[str, Any]], Any]) -> Callable[..., Any]:
        return self._on_topology(INSTANCE_NEW, callback)

    def on_instance_updated(self, callback: Callable[[str, dict[str, Any]], Any]) -> Callable[..., Any]:
        return self._on_topology(INSTANCE_UPDATED, callback)

    def on_instance_gone(self, callback: Callable[[str, dict[str, Any]], Any]) -> Callable[..., Any]:
        return self._on_topology(INSTANCE_GONE, callback)

    def _on_topology(self, kind: str, callback: Callable[[str, dict[str, Any]], Any]) -> Callable[..., Any]:
        def listener(event: TopologyEvent) -> None:
            if event.kind == kind:
                result = callback(event.instance_id, event.info)
                if inspect.isawaitable(result):
                    self._spawn(result)

        self.topology.add_listener(listener)
        return callback

    def topology_events(self) -> EventStream:
        """instance_new / instance_updated / instance_gone events from this call on, as an async
        iterator (``aclose()`` it when done)."""
        return self.topology.events()

    # --- receiving -------------------------------------------------------------------------------
    def _on_message(self, message: Message) -> Awaitable[None] | None:
        exchange = message.exchange
        n = self.names
        if exchange == n.replies:
            self._on_reply(message)
        elif exchange == n.slots:
            if message.target != self.instance_id:
                # routed here by the alternate exchange (RabbitMQ keeps the original exchange name)
                self._on_returned(message)
                return None
            return self._dispatch(message, reply=message.kind is Kind.REQUEST)
        elif exchange == n.signals:
            return self._on_signal(message)
        elif exchange == n.returns:
            self._on_returned(message)
        else:
            log.warning(
                "message from unexpected exchange dropped", instance=self.instance_id, exchange=exchange
            )
        return None

    def deliver_broadcast(self, message: Message) -> None:
        pending = self._dispatch(message, reply=False)
        if pending is not None:
            self._spawn(pending)

    def _decode_args(self, message: Message) -> list[Any]:
        args = codec.decode(message.body)
        if not isinstance(args, list):
            raise DecodeError(
                f"arguments of {message.kind} {message.name!r} are {type(args).__name__}, not a list"
            )
        return args

    def _dispatch(self, message: Message, *, reply: bool) -> Awaitable[None] | None:
        """Run a slot for a call, request or broadcast. Sync slots run here, in arrival order; async
        slots start here, in arrival order, and then run concurrently."""
        if message.deadline is not None and time.time() > message.deadline:
            log.info(
                "expired request not executed",
                instance=self.instance_id,
                slot=message.name,
                sender=message.sender,
            )
            return None
        fn = self._slots.get(message.name)
        if fn is None:
            if reply:
                self._reply_error(message, NoSuchSlot(self.instance_id, message.name))
            else:
                log.warning(
                    "call of unknown slot",
                    instance=self.instance_id,
                    slot=message.name,
                    sender=message.sender,
                )
            return None
        token = current_message.set(message)
        owner = _current_instance.set(self.acting_instance)
        try:
            args = self._decode_args(message)
            result = fn(*args)
        except _SLOT_ERRORS as exc:
            self._slot_failed(message, exc, reply)
            return None
        finally:
            current_message.reset(token)
            _current_instance.reset(owner)
        if inspect.isawaitable(result):
            return self._finish(message, result, reply)
        if reply:
            self._reply(message, result)
        return None

    async def _finish(self, message: Message, pending: Awaitable[Any], reply: bool) -> None:
        current_message.set(message)  # this task's own context: the coroutine body runs in it
        _current_instance.set(self.acting_instance)
        try:
            result = await pending
        except asyncio.CancelledError:
            if reply:
                self._reply_error(
                    message, RemoteError(self.instance_id, message.name, "CancelledError", "cancelled")
                )
            raise
        except _SLOT_ERRORS as exc:
            self._slot_failed(message, exc, reply)
            return
        if reply:
            self._reply(message, result)

    def _slot_failed(self, message: Message, exc: BaseException, reply: bool) -> None:
        log.warning(
            "slot raised",
            instance=self.instance_id,
            slot=message.name,
            sender=message.sender,
            error=f"{type(exc).__name__}: {exc}",
        )
        if isinstance(exc, Exception):
            self.slot_exception(message.name, exc)
        if reply:
            self._reply_error(message, exc)
        else:
            log.debug("slot traceback", exc_info=exc)

    def slot_exception(self, slot: str, exc: Exception) -> None:
        """Hook for subclasses (devices report slot exceptions to ``on_exception``)."""

    def _reply(self, message: Message, result: Any) -> None:
        try:
            body = codec.encode(result)
        except errors.EncodeError as exc:
            self._reply_error(message, exc)
            return
        self._send_reply(message, body, None)

    def _reply_error(self, message: Message, exc: BaseException) -> None:
        payload: dict[str, Any] = {
            "type": type(exc).__name__,
            "module": type(exc).__module__,
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)),
        }
        data = {k: v for k, v in vars(exc).items() if not k.startswith("_") and _plain_data(v)}
        if data:
            payload["data"] = data
        kind = "NoSuchSlot" if isinstance(exc, NoSuchSlot) else "RemoteError"
        try:
            body = codec.encode(payload)
        except errors.EncodeError:
            payload.pop("data", None)
            body = codec.encode(payload)
        self._send_reply(message, body, kind)

    def _send_reply(self, message: Message, body: bytes, error: str | None) -> None:
        if not message.reply_to or not message.correlation_id:
            return
        reply = Message(
            kind=Kind.REPLY,
            sender=self.instance_id,
            target=message.reply_to,
            name=message.name,
            body=body,
            correlation_id=message.correlation_id,
            error=error,
            user=self.user,
        )
        self._spawn(
            self._publish(self.names.replies, Names.reply_key(message.reply_to, self.instance_id), reply)
        )

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background send failed", instance=self.instance_id, error=str(task.exception()))

    def _on_reply(self, message: Message) -> None:
        pending = self._pending.get(message.correlation_id or "")
        if pending is None:
            log.debug("late or unknown reply dropped", instance=self.instance_id, sender=message.sender)
            return
        if pending.future is not None:
            if pending.future.done():
                return
            try:
                value = codec.decode(message.body)
            except DecodeError as exc:
                pending.future.set_exception(exc)
                return
            if message.error:
                pending.future.set_exception(_remote_exception(message, value))
            else:
                pending.future.set_result(value)
            return
        self._pending.pop(message.correlation_id or "", None)
        self._deliver_reply_to_slot(pending, message)

    def _deliver_reply_to_slot(self, pending: _Pending, message: Message) -> None:
        try:
            value = codec.decode(message.body)
        except DecodeError as exc:
            log.warning("undecodable reply dropped", instance=self.instance_id, reason=str(exc))
            return
        if message.error:
            log.warning(
                "request failed",
                instance=self.instance_id,
                target=pending.target,
                slot=pending.slot,
                error=str(_remote_exception(message, value)),
            )
            return
        args = () if value is None else tuple(value) if isinstance(value, list) else (value,)
        fn = self._slots.get(pending.reply_slot or "")
        if fn is None:
            return
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                self._spawn(result)
        except _SLOT_ERRORS as exc:
            log.warning(
                "reply slot raised", instance=self.instance_id, slot=pending.reply_slot, error=str(exc)
            )

    def _on_signal(self, message: Message) -> Awaitable[None] | None:
        slots = self._connections.get((message.sender, message.name))
        if not slots:
            return None
        try:
            args = self._decode_args(message)
        except DecodeError as exc:
            log.warning(
                "undecodable signal dropped", instance=self.instance_id, signal=message.name, reason=str(exc)
            )
            return None
        waits: list[Awaitable[Any]] = []
        for name in slots:
            fn = self._slots.get(name)
            if fn is None:
                continue
            try:
                result = fn(*args)
            except _SLOT_ERRORS as exc:
                self._slot_failed(message, exc, False)
                continue
            if inspect.isawaitable(result):
                waits.append(result)
        if not waits:
            return None
        return self._finish_all(message, waits)

    async def _finish_all(self, message: Message, waits: list[Awaitable[Any]]) -> None:
        for pending in waits:
            await self._finish(message, pending, False)

    def _on_returned(self, message: Message) -> None:
        """A call came back undelivered: no such instance (unroutable), or dropped by a full or
        expired queue. Requests fail at once; one-way calls are counted and logged."""
        if message.sender != self.instance_id or message.kind not in (Kind.REQUEST, Kind.CALL):
            return
        reason = message.death_reason
        if message.kind is Kind.CALL:
            self.returned_calls += 1
            log.warning(
                "call not delivered",
                instance=self.instance_id,
                target=message.target,
                slot=message.name,
                reason=reason or "no such instance",
            )
            return
        pending = self._pending.get(message.correlation_id or "")
        if pending is None or pending.future is None or pending.future.done():
            if pending is not None and pending.future is None:
                self._pending.pop(message.correlation_id or "", None)
                log.warning("request not delivered", target=message.target, slot=message.name, reason=reason)
            return
        if reason is None:
            pending.future.set_exception(NoSuchInstance(message.target, message.name))
        elif reason == "expired":
            pending.future.set_exception(RequestTimeout(message.target, message.name, pending.timeout))
        else:
            self.dropped_messages += 1
            pending.future.set_exception(
                BrokerUnavailable(
                    f"request to {message.target!r} slot {message.name!r} dropped by the broker: {reason}"
                )
            )

    # --- connection events from the hub ----------------------------------------------------------
    def _fail_pending(self, exc: BaseException) -> None:
        for correlation_id, pending in list(self._pending.items()):
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(exc)
            elif pending.future is None:
                self._pending.pop(correlation_id, None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail_pending(
            BrokerUnavailable(f"connection to the broker lost while waiting for a reply ({exc or 'closed'})")
        )

    def connection_restored(self) -> None:
        log.info("instance back online", instance=self.instance_id)

    def queue_lost(self, exc: BaseException) -> None:
        """While we were cut off, another instance took our id: we must not fight over it."""
        log.error(
            "instance id taken while disconnected; going offline", instance=self.instance_id, error=str(exc)
        )
        self._online = False
        self._fail_pending(InstanceIdInUse(self.instance_id, self.domain))


def _plain_data(value: Any) -> bool:
    if isinstance(value, str | int | float | bool) or value is None:
        return True
    if isinstance(value, list | tuple):
        return all(_plain_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_data(v) for k, v in value.items())
    return False


@functools.lru_cache(maxsize=64)
def _remote_class(name: str) -> type[RemoteError]:
    """A RemoteError that is also the framework error the remote side raised, so ``except
    ReconfigurationError`` works across the wire."""
    base = getattr(errors, name, None)
    if not (isinstance(base, type) and issubclass(base, KaraboError)) or issubclass(base, RemoteError):
        return RemoteError
    try:
        return type(
            f"Remote{name}",
            (RemoteError, base),
            {"__init__": RemoteError.__init__, "__str__": RemoteError.__str__},
        )
    except TypeError:  # incompatible layouts: fall back to the plain remote error
        return RemoteError


_REMOTE_FIELDS = frozenset({"instance_id", "slot", "exc_type", "message", "traceback"})


def _remote_exception(message: Message, value: Any) -> Exception:
    info = value if isinstance(value, dict) else {"type": "Error", "message": str(value)}
    exc_type = str(info.get("type", "Error"))
    text = str(info.get("message", ""))
    if message.error == "NoSuchSlot":
        return NoSuchSlot(message.sender, message.name)
    cls = _remote_class(exc_type) if info.get("module") == errors.__name__ else RemoteError
    try:
        exc = cls(message.sender, message.name, exc_type, text, str(info.get("traceback", "")))
    except Exception:  # never let an odd remote error break reply handling
        exc = RemoteError(message.sender, message.name, exc_type, text, str(info.get("traceback", "")))
    data = info.get("data")
    if isinstance(data, dict):
        for key, val in data.items():
            if isinstance(key, str) and not key.startswith("_") and key not in _REMOTE_FIELDS:
                setattr(exc, key, val)
    return exc
