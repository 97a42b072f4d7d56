"""Values as a proxy shows them: the plain value plus when it was set and its alarm state.

``motor.position`` is a :class:`FloatValue`, a ``float`` that also carries ``timestamp``, ``alarm``
and ``stale``, so arithmetic, comparisons and formatting work as on the plain value. Types Python does
not let us subclass (``bool``, enums such as :class:`~karabo_async.states.State`, ``None``-able
structures) are wrapped by :class:`WrappedValue`, which compares equal to the plain value and passes
attribute access through (``motor.state.is_derived_from(State.CHANGING)``).

Wrappers are made when a property is read, not when an update arrives, so following a busy device
costs nothing for properties nobody looks at.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from .states import AlarmCondition
from .timestamp import Timestamp


class KaraboValue:
    """What every proxy value has besides its value: ``timestamp``, ``alarm``, ``stale`` and ``value``.

    ``stale`` is true when the value was read while the link to the broker was down (it may have
    changed since). ``source`` is ``(proxy, path)``, what :func:`karabo_async.wait_until_new` waits on.
    """

    timestamp: Timestamp | None
    alarm: AlarmCondition
    stale: bool
    source: tuple[Any, str] | None

    def _stamp(
        self, timestamp: Timestamp | None, alarm: AlarmCondition, stale: bool, source: tuple[Any, str] | None
    ) -> None:
        self.timestamp = timestamp
        self.alarm = alarm
        self.stale = stale
        self.source = source

    @property
    def value(self) -> Any:
        """The plain value, without the extras."""
        raise NotImplementedError


class FloatValue(KaraboValue, float):
    @property
    def value(self) -> float:
        return float(self)


class IntValue(KaraboValue, int):
    @property
    def value(self) -> int:
        return int(self)


class StringValue(KaraboValue, str):
    @property
    def value(self) -> str:
        return str.__str__(self)


class BytesValue(KaraboValue, bytes):
    @property
    def value(self) -> bytes:
        return bytes(self)


class ListValue(KaraboValue, list[Any]):
    @property
    def value(self) -> list[Any]:
        return list(self)


class ArrayValue(KaraboValue, np.ndarray):
    """A numpy array with the extras; results of arithmetic are plain arrays."""

    def __array_finalize__(self, obj: Any) -> None:
        self._stamp(
            getattr(obj, "timestamp", None),
            getattr(obj, "alarm", AlarmCondition.NONE),
            getattr(obj, "stale", False),
            getattr(obj, "source", None),
        )

    def __array_wrap__(self, array: Any, context: Any = None, return_scalar: bool = False) -> Any:
        plain = np.asarray(array).view(np.ndarray)
        return plain[()] if return_scalar else plain

    @property
    def value(self) -> np.ndarray:
        return self.view(np.ndarray)


class WrappedValue(KaraboValue):
    """Any other value (bool, enum, Hash, Image): compares, hashes and formats like it."""

    __wrapped: Any

    def __init__(self, value: Any) -> None:
        self.__wrapped = value

    @property
    def value(self) -> Any:
        return self.__wrapped

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_WrappedValue__"):
            raise AttributeError(name)
        return getattr(self.__wrapped, name)

    def __eq__(self, other: object) -> bool:
        other = unwrap(other)
        if isinstance(other, enum.Enum) and not isinstance(self.__wrapped, enum.Enum):
            other = other.value  # an enum the client does not know travels as its value
        return bool(self.__wrapped == other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __lt__(self, other: Any) -> bool:
        return bool(self.__wrapped < unwrap(other))

    def __le__(self, other: Any) -> bool:
        return bool(self.__wrapped <= unwrap(other))

    def __gt__(self, other: Any) -> bool:
        return bool(self.__wrapped > unwrap(other))

    def __ge__(self, other: Any) -> bool:
        return bool(self.__wrapped >= unwrap(other))

    def __hash__(self) -> int:
        return hash(self.__wrapped)

    def __bool__(self) -> bool:
        return bool(self.__wrapped)

    def __int__(self) -> int:
        return int(self.__wrapped)

    def __float__(self) -> float:
        return float(self.__wrapped)

    def __index__(self) -> int:
        return int(self.__wrapped.__index__())

    def __contains__(self, item: Any) -> bool:
        return bool(item in self.__wrapped)

    def __iter__(self) -> Any:
        return iter(self.__wrapped)

    def __len__(self) -> int:
        return len(self.__wrapped)

    def __getitem__(self, key: Any) -> Any:
        return self.__wrapped[key]

    def __str__(self) -> str:
        return str(self.__wrapped)

    def __repr__(self) -> str:
        return repr(self.__wrapped)

    def __format__(self, spec: str) -> str:
        return format(self.__wrapped, spec)


_SUBCLASSES: dict[type, type[KaraboValue]] = {
    float: FloatValue,
    int: IntValue,
    str: StringValue,
    bytes: BytesValue,
    list: ListValue,
}


def wrap(
    value: Any,
    timestamp: Timestamp | None,
    alarm: AlarmCondition = AlarmCondition.NONE,
    *,
    stale: bool = False,
    source: tuple[Any, str] | None = None,
    enum_value: bool = False,
) -> Any:
    """``value`` with its extras; ``None`` stays ``None`` (a property that has no value yet).

    ``enum_value`` marks the value of an enum this process does not know: it then compares equal to
    members of any enum with that value."""
    if value is None:
        return None
    result: KaraboValue
    cls = _SUBCLASSES.get(type(value))
    if cls is not None and not isinstance(value, enum.Enum) and not enum_value:
        result = cls(value)  # type: ignore[call-arg]
    elif isinstance(value, np.ndarray):
        result = value.view(ArrayValue)
    else:
        result = WrappedValue(value)
    result._stamp(timestamp, alarm, stale, source)
    return result


def unwrap(value: Any) -> Any:
    """The plain value of a proxy value (anything else is returned as it is)."""
    return value.value if isinstance(value, KaraboValue) else value


__all__ = [
    "ArrayValue",
    "BytesValue",
    "FloatValue",
    "IntValue",
    "KaraboValue",
    "ListValue",
    "StringValue",
    "WrappedValue",
    "unwrap",
    "wrap",
]
