"""The message envelope: what every message says about itself, independent of any broker library.

A transport maps these fields onto AMQP properties and headers (so a person can read them in the
RabbitMQ console) and back. The body is always bytes produced by :mod:`karabo_async.codec`.
Exchange and routing-key names are made here too, so that docs/protocol.md has one place to match.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from enum import StrEnum

from .errors import DecodeError, InvalidInstanceId

CONTENT_TYPE = "application/msgpack"
APP_ID = "karabo-async"

# used with fullmatch: ``$`` would also accept a trailing newline
_INSTANCE_ID = re.compile(r"[A-Za-z0-9_/\-]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class Kind(StrEnum):
    """What a message is for; travels as the AMQP ``type`` property and the ``kind`` header."""

    SIGNAL = "signal"
    CALL = "call"
    REQUEST = "request"
    REPLY = "reply"
    HEARTBEAT = "heartbeat"
    BROADCAST = "broadcast"


_KINDS = {k.value: k for k in Kind}


@dataclass(slots=True)
class Message:
    """One message as the framework sees it.

    ``name`` is the slot (call, request, reply, broadcast) or signal name; ``deadline`` is an absolute
    epoch time after which a request must not be executed; ``error`` marks a reply that carries an
    error description instead of a return value.
    """

    kind: Kind
    sender: str
    target: str
    name: str
    body: bytes = b""
    correlation_id: str | None = None
    reply_to: str | None = None
    user: str | None = None
    deadline: float | None = None
    error: str | None = None
    access_level: int | None = None
    timestamp: float = field(default_factory=time.time)
    # Filled in on receipt, for dispatch and for the monitor.
    exchange: str = ""
    routing_key: str = ""
    death_reason: str | None = None

    def headers(self) -> dict[str, str | int]:
        """AMQP headers: every field a person needs to read the message in the console."""
        h: dict[str, str | int] = {
            "kind": self.kind.value,
            "sender": self.sender,
            "target": self.target,
            ("signal" if self.kind is Kind.SIGNAL else "slot"): self.name,
        }
        if self.user:
            h["user"] = self.user
        if self.deadline is not None:
            # integer milliseconds: AMQP tables carry Python floats as 32-bit, far too coarse for epochs
            h["deadline"] = int(self.deadline * 1000)
        if self.error:
            h["error"] = self.error
        if self.access_level is not None:
            h["access_level"] = self.access_level
        return h


def message_from_headers(
    headers: dict[str, object] | None,
    body: bytes,
    *,
    correlation_id: str | None,
    reply_to: str | None,
    timestamp: float | None,
    exchange: str,
    routing_key: str,
) -> Message:
    """Rebuild a Message from received headers; anything malformed raises DecodeError naming it."""
    if not headers:
        raise DecodeError(f"message on {exchange!r}/{routing_key!r} has no karabo headers")
    kind = _KINDS.get(str(headers.get("kind")))
    if kind is None:
        raise DecodeError(f"unknown message kind {headers.get('kind')!r} on {exchange!r}/{routing_key!r}")
    sender = headers.get("sender")
    target = headers.get("target")
    name = headers.get("signal" if kind is Kind.SIGNAL else "slot")
    if not isinstance(sender, str) or not isinstance(target, str) or not isinstance(name, str):
        raise DecodeError(
            f"{kind} message on {exchange!r}/{routing_key!r} lacks sender, target or name header"
        )
    deadline = headers.get("deadline")
    if deadline is not None and not isinstance(deadline, int | float):
        raise DecodeError(f"deadline header {deadline!r} is not a number")
    user = headers.get("user")
    error = headers.get("error")
    level = headers.get("access_level")
    death = _death_reason(headers.get("x-death"))
    return Message(
        kind=kind,
        sender=sender,
        target=target,
        name=name,
        body=body,
        correlation_id=correlation_id,
        reply_to=reply_to,
        user=user if isinstance(user, str) else None,
        deadline=deadline / 1000.0 if deadline is not None else None,
        error=error if isinstance(error, str) else None,
        access_level=level if isinstance(level, int) and not isinstance(level, bool) else None,
        timestamp=timestamp if timestamp is not None else time.time(),
        exchange=exchange,
        routing_key=routing_key,
        death_reason=death,
    )


def _death_reason(x_death: object) -> str | None:
    """RabbitMQ's dead-letter record says why a message came back: 'expired', 'maxlen', 'rejected'."""
    if isinstance(x_death, list) and x_death and isinstance(x_death[0], dict):
        reason = x_death[0].get("reason")
        return reason.decode() if isinstance(reason, bytes) else str(reason)
    return None


def check_instance_id(instance_id: str) -> str:
    """Refuse ids that would break routing keys or queue names, with a clear reason."""
    if not isinstance(instance_id, str) or not _INSTANCE_ID.fullmatch(instance_id):
        raise InvalidInstanceId(
            f"invalid instance id {instance_id!r}: use letters, digits, '_', '-' and '/' only"
        )
    return instance_id


def check_name(name: str, what: str = "slot") -> str:
    """Slot and signal names are identifiers, optionally dotted for slots inside nodes."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"invalid {what} name {name!r}: use a Python identifier (dots separate nodes)")
    return name


@dataclass(frozen=True, slots=True)
class Names:
    """Exchange, queue and routing-key names of one domain, readable in the RabbitMQ console.

    Routing keys of calls end with the sender's id so that the ``returns`` exchange (alternate
    exchange of ``slots`` and dead-letter exchange of instance queues) can bring an undeliverable
    call straight back to its sender: that is how ``NoSuchInstance`` is raised at once.
    """

    domain: str

    @property
    def slots(self) -> str:
        return f"{self.domain}.slots"

    @property
    def signals(self) -> str:
        return f"{self.domain}.signals"

    @property
    def broadcast(self) -> str:
        return f"{self.domain}.broadcast"

    @property
    def replies(self) -> str:
        return f"{self.domain}.replies"

    @property
    def heartbeats(self) -> str:
        return f"{self.domain}.heartbeats"

    @property
    def returns(self) -> str:
        return f"{self.domain}.returns"

    def instance_queue(self, instance_id: str) -> str:
        return f"{self.domain}.instance.{instance_id}"

    def topology_queue(self, process_id: str) -> str:
        return f"{self.domain}.heartbeats.{process_id}"

    def broadcast_queue(self, process_id: str) -> str:
        return f"{self.domain}.broadcast.{process_id}"

    @staticmethod
    def call_key(target: str, slot: str, sender: str) -> str:
        return f"{target}.{slot}.{sender}"

    @staticmethod
    def signal_key(sender: str, signal: str) -> str:
        return f"{sender}.{signal}"

    @staticmethod
    def reply_key(target: str, sender: str) -> str:
        return f"{target}.{sender}"

    @staticmethod
    def topology_key(event: str, process_id: str) -> str:
        return f"{event}.{process_id}"
