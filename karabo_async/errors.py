"""Every exception the framework raises on purpose.

They live in one module at the bottom of the layer stack so that any layer can raise them and users
can catch them from ``karabo_async`` without knowing where they come from.
"""

from __future__ import annotations


class KaraboError(Exception):
    """Base of all errors raised by karabo_async."""


class DecodeError(KaraboError, ValueError):
    """Bytes could not be decoded into a message or value; the text says what was wrong."""


class EncodeError(KaraboError, TypeError):
    """A value has a type the wire format cannot carry."""


class InvalidInstanceId(KaraboError, ValueError):
    """An instance id with characters other than letters, digits, ``_``, ``-`` and ``/``."""


class InstanceIdInUse(KaraboError):
    """Another live instance already holds this id in the domain."""

    def __init__(self, instance_id: str, domain: str) -> None:
        super().__init__(f"instance id {instance_id!r} is already in use in domain {domain!r}")
        self.instance_id = instance_id
        self.domain = domain


class NoSuchInstance(KaraboError, LookupError):
    """No instance of that id exists in the domain (the broker could not route to it)."""

    def __init__(self, instance_id: str, slot: str | None = None) -> None:
        what = f" (calling slot {slot!r})" if slot else ""
        super().__init__(f"no instance {instance_id!r} in this domain{what}")
        self.instance_id = instance_id
        self.slot = slot


class NoSuchSlot(KaraboError, LookupError):
    """The instance exists but has no slot of that name."""

    def __init__(self, instance_id: str, slot: str) -> None:
        super().__init__(f"instance {instance_id!r} has no slot {slot!r}")
        self.instance_id = instance_id
        self.slot = slot


class RequestTimeout(KaraboError, TimeoutError):
    """No reply arrived before the request's deadline."""

    def __init__(self, instance_id: str, slot: str, seconds: float) -> None:
        super().__init__(f"request to {instance_id!r} slot {slot!r} got no reply within {seconds:g} s")
        self.instance_id = instance_id
        self.slot = slot
        self.seconds = seconds


class RemoteError(KaraboError):
    """A remote slot raised: carries the remote exception's type, message and traceback text."""

    def __init__(self, instance_id: str, slot: str, exc_type: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{instance_id}.{slot} raised {exc_type}: {message}")
        self.instance_id = instance_id
        self.slot = slot
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback


class BrokerUnavailable(KaraboError, ConnectionError):
    """The broker cannot be reached, or the connection was lost while a request was in flight."""


class QueueLocked(KaraboError):
    """Transport level: an exclusive queue of that name is held by another connection."""
