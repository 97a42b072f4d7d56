"""Timestamp: a point in time with attosecond resolution, plus the facility's train id.

Every property value a device publishes is stamped. Facilities with a pulsed machine (European XFEL's
10 Hz trains) label data with the train it belongs to, so the train id travels with the time: two
readings of the same instant but different trains are different timestamps.

Seconds and attoseconds are kept as two integers (as Karabo does) so that stamps survive a round trip
through the wire exactly; ``float`` epoch seconds lose precision below a microsecond.
"""

from __future__ import annotations

import math
import re
import time as _time
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Final

ATTOS_PER_SECOND: Final = 10**18
_ATTOS_PER_MICRO: Final = 10**12
_ATTOS_PER_NANO: Final = 10**9
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# years 1 to 9999: what datetime (and so ISO strings) can show
_DATETIME_MIN_S: Final = -62135596800
_DATETIME_MAX_S: Final = 253402300799

# ``datetime.fromisoformat`` keeps only microseconds; the fraction is split off and parsed here so
# that an ISO string written by ``to_iso`` reads back to the same attosecond.
_ISO_FRACTION = re.compile(r"(.+?[T ]\d{2}:?\d{2}:?\d{2})[.,](\d+)(.*)")


class Timestamp:
    """An immutable instant: ``seconds`` since the Unix epoch (UTC), ``fraction`` in attoseconds
    (``0 <= fraction < 10**18``) and a ``train_id`` (0 when the facility has no trains).

    Ordering compares time only (seconds, fraction); equality and hashing also include the train id,
    so two stamps of the same instant but different trains are neither equal nor ordered.

    >>> ts = Timestamp.from_iso("2024-05-01T12:00:00.25Z").with_train_id(7)
    >>> ts.time, ts.train_id
    (1714564800.25, 7)
    """

    __slots__ = ("_fraction", "_seconds", "_train_id")

    _seconds: int
    _fraction: int
    _train_id: int

    def __init__(self, seconds: int, fraction: int = 0, train_id: int = 0) -> None:
        for name, value in (("seconds", seconds), ("fraction", fraction), ("train_id", train_id)):
            if type(value) is not int:
                # bool is an int subclass but a stamp of True seconds is surely a mistake
                raise TypeError(f"Timestamp {name} must be an int, got {type(value).__name__}")
        if not _INT64_MIN <= seconds <= _INT64_MAX:
            raise ValueError(f"Timestamp seconds {seconds} outside the signed 64-bit range")
        if not 0 <= fraction < ATTOS_PER_SECOND:
            raise ValueError(f"Timestamp fraction {fraction} must be in [0, 10**18) attoseconds")
        if not 0 <= train_id <= _UINT64_MAX:
            raise ValueError(f"Timestamp train_id {train_id} outside the unsigned 64-bit range")
        object.__setattr__(self, "_seconds", seconds)
        object.__setattr__(self, "_fraction", fraction)
        object.__setattr__(self, "_train_id", train_id)

    # --- immutability ---------------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Timestamp is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Timestamp is immutable; cannot delete {name!r}")

    def __reduce__(self) -> tuple[type[Timestamp], tuple[int, int, int]]:
        return (Timestamp, (self._seconds, self._fraction, self._train_id))

    # --- fields -----------------------------------------------------------------------------------

    @property
    def seconds(self) -> int:
        """Whole seconds since 1970-01-01T00:00:00 UTC."""
        return self._seconds

    @property
    def fraction(self) -> int:
        """Attoseconds (10**-18 s) past ``seconds``."""
        return self._fraction

    @property
    def train_id(self) -> int:
        """The facility's train (bunch pattern) id, 0 if none."""
        return self._train_id

    @property
    def time(self) -> float:
        """Epoch seconds as a float (sub-microsecond digits are lost for current dates)."""
        # int / int is correctly rounded, so from_float(t).time == t whenever no digit was cut
        return (self._seconds * ATTOS_PER_SECOND + self._fraction) / ATTOS_PER_SECOND

    def with_train_id(self, train_id: int) -> Timestamp:
        """The same instant labelled with another train id."""
        return Timestamp(self._seconds, self._fraction, train_id)

    # --- constructors -----------------------------------------------------------------------------

    @classmethod
    def now(cls, train_id: int = 0) -> Timestamp:
        """The current wall-clock time (nanosecond resolution)."""
        seconds, nanos = divmod(_time.time_ns(), _ATTOS_PER_NANO)
        return cls(seconds, nanos * _ATTOS_PER_NANO, train_id)

    @classmethod
    def from_float(cls, t: float, train_id: int = 0) -> Timestamp:
        """From epoch seconds. The float's shortest decimal form is used, so ``from_float(0.1)`` is
        exactly 0.1 s rather than the binary approximation's 0.1000000000000000055 s."""
        if isinstance(t, bool) or not isinstance(t, int | float):
            raise TypeError(f"Timestamp.from_float needs a float, got {type(t).__name__}")
        if isinstance(t, int):
            return cls(t, 0, train_id)
        if not math.isfinite(t):
            raise ValueError(f"Timestamp.from_float needs a finite number, got {t!r}")
        # scaleb only moves the exponent (repr has at most 17 digits), so this is exact integer math
        attos = int(Decimal(repr(t)).scaleb(18).to_integral_value(rounding=ROUND_FLOOR))
        seconds, fraction = divmod(attos, ATTOS_PER_SECOND)
        return cls(seconds, fraction, train_id)

    @classmethod
    def from_datetime(cls, dt: datetime, train_id: int = 0) -> Timestamp:
        """From a datetime; a naive datetime is taken as UTC."""
        if not isinstance(dt, datetime):
            raise TypeError(f"Timestamp.from_datetime needs a datetime, got {type(dt).__name__}")
        if dt.tzinfo is None or dt.utcoffset() is None:
            dt = dt.replace(tzinfo=UTC)
        delta = dt - _EPOCH
        seconds = delta.days * 86400 + delta.seconds
        return cls(seconds, delta.microseconds * _ATTOS_PER_MICRO, train_id)

    @classmethod
    def from_iso(cls, text: str, train_id: int = 0) -> Timestamp:
        """From an ISO 8601 string such as ``2024-05-01T12:00:00.123456789+02:00`` or ``...Z``; without
        an offset the string is taken as UTC. Up to 18 fractional digits are kept exactly."""
        if not isinstance(text, str):
            raise TypeError(f"Timestamp.from_iso needs a str, got {type(text).__name__}")
        match = _ISO_FRACTION.fullmatch(text.strip())
        digits = ""
        base = text.strip()
        if match:
            base = match.group(1) + match.group(3)
            digits = match.group(2)
            if len(digits) > 18:
                raise ValueError(f"ISO time {text!r} has more than 18 fractional digits")
        try:
            dt = datetime.fromisoformat(base)
        except ValueError as exc:
            raise ValueError(f"not an ISO 8601 time: {text!r}") from exc
        whole = cls.from_datetime(dt)
        fraction = int(digits.ljust(18, "0")) if digits else 0
        return cls(whole.seconds, fraction, train_id)

    @classmethod
    def parse(cls, value: Timestamp | datetime | str | float, train_id: int = 0) -> Timestamp:
        """Whatever a user may write for a point in time: a Timestamp (returned as is), a datetime,
        an ISO 8601 string or epoch seconds. ``train_id`` applies to the converted forms only."""
        if isinstance(value, Timestamp):
            return value
        if isinstance(value, datetime):
            return cls.from_datetime(value, train_id)
        if isinstance(value, str):
            return cls.from_iso(value, train_id)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return cls.from_float(value, train_id)
        raise TypeError(
            f"cannot read a time from {type(value).__name__}; give a Timestamp, datetime, "
            "ISO 8601 string or epoch seconds"
        )

    # --- conversions ------------------------------------------------------------------------------

    def to_datetime(self) -> datetime:
        """A UTC-aware datetime (microsecond resolution; finer digits are truncated)."""
        try:
            return _EPOCH + timedelta(seconds=self._seconds, microseconds=self._fraction // _ATTOS_PER_MICRO)
        except OverflowError as exc:
            raise ValueError(f"{self!r} is outside the range datetime can represent") from exc

    def to_iso(self) -> str:
        """ISO 8601 in UTC with a ``+00:00`` offset; fractional digits in groups of three, at least
        six, as many as needed to be exact (``Timestamp.from_iso`` reads it back unchanged)."""
        try:
            whole = _EPOCH + timedelta(seconds=self._seconds)
        except OverflowError as exc:
            raise ValueError(f"{self!r} is outside the range ISO 8601 dates can show") from exc
        digits = f"{self._fraction:018d}".rstrip("0")
        width = max(6, -(-len(digits) // 3) * 3)
        return f"{whole.replace(tzinfo=None).isoformat(timespec='seconds')}.{digits.ljust(width, '0')}+00:00"

    def __float__(self) -> float:
        return self.time

    # --- comparison -------------------------------------------------------------------------------

    def _key(self) -> tuple[int, int]:
        return (self._seconds, self._fraction)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Timestamp):
            return NotImplemented
        return (
            self._seconds == other._seconds
            and self._fraction == other._fraction
            and self._train_id == other._train_id
        )

    def __hash__(self) -> int:
        return hash((self._seconds, self._fraction, self._train_id))

    def __lt__(self, other: Timestamp) -> bool:
        if not isinstance(other, Timestamp):
            return NotImplemented
        return self._key() < other._key()

    def __le__(self, other: Timestamp) -> bool:
        if not isinstance(other, Timestamp):
            return NotImplemented
        return self._key() <= other._key()

    def __gt__(self, other: Timestamp) -> bool:
        if not isinstance(other, Timestamp):
            return NotImplemented
        return self._key() > other._key()

    def __ge__(self, other: Timestamp) -> bool:
        if not isinstance(other, Timestamp):
            return NotImplemented
        return self._key() >= other._key()

    def __repr__(self) -> str:
        if _DATETIME_MIN_S <= self._seconds <= _DATETIME_MAX_S:
            shown = self.to_iso()
        else:
            shown = f"{self._seconds}s+{self._fraction}as"
        train = f" train_id={self._train_id}" if self._train_id else ""
        return f"<Timestamp {shown}{train}>"

    def __str__(self) -> str:
        return self.to_iso() if _DATETIME_MIN_S <= self._seconds <= _DATETIME_MAX_S else repr(self)


__all__ = ["ATTOS_PER_SECOND", "Timestamp"]
