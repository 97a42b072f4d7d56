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
        # Exception.__init__ directly: a RemoteError may also be a framework error class (see
        # signalslot._remote_class) whose own __init__ takes other arguments.
        Exception.__init__(self, f"{instance_id}.{slot} raised {exc_type}: {message}")
        self.instance_id = instance_id
        self.slot = slot
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback


class BrokerUnavailable(KaraboError, ConnectionError):
    """The broker cannot be reached, or the connection was lost while a request was in flight."""


class QueueLocked(KaraboError):
    """Transport level: an exclusive queue of that name is held by another connection."""


# --- archive (data logger and configuration manager storage) ---


class ArchiveError(KaraboError):
    """Base of the errors raised by the archive store (``karabo_async.archive``)."""


class ArchiveUnavailable(ArchiveError, ConnectionError):
    """The archive database cannot be reached, at start or while running; ``url`` has no password."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"archive database {url} is unavailable: {reason}")
        self.url = url
        self.reason = reason


class ArchiveVersionError(ArchiveError):
    """The database was migrated by a newer karabo_async than this one; refusing to touch it."""


class UnknownDevice(ArchiveError, LookupError):
    """Nothing was ever archived for this device id."""

    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id!r} was never archived")
        self.device_id = device_id


class UnknownProperty(ArchiveError, LookupError):
    """The device is archived, but this property of it never was."""

    def __init__(self, device_id: str, path: str) -> None:
        super().__init__(f"property {path!r} of device {device_id!r} was never archived")
        self.device_id = device_id
        self.path = path


class BeforeDeviceExisted(ArchiveError, LookupError):
    """A time earlier than anything archived for the device was asked for."""

    def __init__(self, device_id: str, when: str, first: str) -> None:
        super().__init__(
            f"device {device_id!r} has no archived data at {when}: its first record is at {first}"
        )
        self.device_id = device_id
        self.when = when
        self.first = first


class InvalidTimeRange(ArchiveError, ValueError):
    """A time range whose start lies after its end."""


class ArchiveValueError(ArchiveError, ValueError):
    """An argument to the archive has the right type but a value it cannot accept."""


class ArchiveTypeError(ArchiveError, TypeError):
    """An argument to the archive has a type it cannot accept."""


class ConfigurationExists(ArchiveError, ValueError):
    """A configuration of that name is already saved for the device (names are unique per device)."""

    def __init__(self, name: str, device_id: str) -> None:
        super().__init__(
            f"a configuration named {name!r} is already saved for device {device_id!r}"
            " (delete it first or save with overwrite=True)"
        )
        self.name = name
        self.device_id = device_id


class UnknownConfiguration(ArchiveError, LookupError):
    """No configuration of that name is saved for the device."""

    def __init__(self, name: str, device_id: str) -> None:
        super().__init__(f"no configuration named {name!r} is saved for device {device_id!r}")
        self.name = name
        self.device_id = device_id


class ServiceNotFound(KaraboError, LookupError):
    """No instance of the service class asked for (data logger manager, configuration manager) runs
    in the domain."""

    def __init__(self, class_id: str, domain: str, hint: str = "") -> None:
        super().__init__(f"no {class_id} runs in domain {domain!r}" + (f": {hint}" if hint else ""))
        self.class_id = class_id
        self.domain = domain


class SchemaError(KaraboError, TypeError):
    """A class declares its properties, slots or state machine wrongly; the text names the culprit."""


class IllegalTransition(KaraboError):
    """A state machine was sent an event its current state does not accept (or whose guard refused)."""

    def __init__(self, state: str, event: str, reason: str = "", allowed: tuple[str, ...] = ()) -> None:
        why = reason or f"not allowed in state {state}"
        accepted = f" (accepted here: {', '.join(allowed)})" if allowed else ""
        super().__init__(f"event {event!r} in state {state}: {why}{accepted}")
        self.state = state
        self.event = event
        self.reason = why
        self.allowed = allowed


class ConfigurationError(KaraboError, ValueError):
    """A configuration was refused; ``errors`` lists every bad key with its reason."""

    what = "invalid configuration"

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__(f"{self.what}: " + "; ".join(f"{key}: {reason}" for key, reason in errors))
        self.errors = errors


class ReconfigurationError(ConfigurationError):
    """A change to a running instance was refused as a whole; ``errors`` lists each key and reason."""

    what = "reconfiguration refused"


class PipelineError(KaraboError):
    """A pipeline channel could not do what was asked (bad configuration, peer unreachable, ...)."""


class ShmFull(PipelineError, OSError):
    """The shared-memory directory has no room for a pool: reserved at creation, so never a SIGBUS later."""

    def __init__(self, path: str, size: int, reason: str) -> None:
        super().__init__(f"cannot reserve {size} bytes of shared memory for {path!r}: {reason}")
        self.path = path
        self.size = size


class PoolExhausted(PipelineError):
    """Every slot of an output's shared-memory pool stayed in use through all allocation retries."""

    def __init__(self, pool: str, slots: int, attempts: int, interval: float) -> None:
        super().__init__(
            f"shared-memory pool {pool!r}: all {slots} slots still in use after {attempts} attempts"
            f" {interval:g} s apart (receivers too slow to release?)"
        )
        self.pool = pool
        self.slots = slots
        self.attempts = attempts
        self.interval = interval


class SlotRefused(KaraboError):
    """A slot was called in a state (or at an access level) that it does not allow; nothing ran."""


class DeviceLocked(KaraboError):
    """The device is locked by another instance."""


class DeviceInitializationError(KaraboError):
    """A device's ``on_initialization`` raised: the device went down again, its server did not."""


class UnknownClass(KaraboError, LookupError):
    """No device class of that name on this server."""


class DeviceGone(KaraboError, LookupError):
    """The device a proxy stands for is not alive (any more)."""


class CommandLineError(KaraboError, ValueError):
    """Bad input on the command line (unknown property or slot, unparsable value ...); the text says
    what was wrong and what to do instead."""


class MacroError(KaraboError):
    """A macro file or class cannot be used: syntax error, no Macro class in it, unknown macro name."""
