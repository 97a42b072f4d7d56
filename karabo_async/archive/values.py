"""How archived values and times are laid out in database columns.

A value becomes three columns: a small integer *kind*, a float ``num`` (set for numbers, so the
database itself can take min/max per time bucket) and a ``val`` blob for everything else. Values whose
encoding exceeds :data:`LARGE_VALUE_BYTES` (images, big arrays) are not stored: an :class:`ArrayRef`
with their shape and dtype takes their place, so that a camera cannot fill the archive.

Times are stored as integer nanoseconds since the epoch (exact to well below the required
microsecond, cheap to index and to bucket with integer arithmetic) beside the train id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import structlog

from ..codec import decode, encode
from ..errors import ArchiveTypeError, ArchiveValueError, EncodeError
from ..timestamp import Timestamp

log = structlog.get_logger(__name__)

LARGE_VALUE_BYTES: Final = 64 * 1024
"""Values whose stored form would be larger than this are archived as an :class:`ArrayRef`."""

KIND_NONE: Final = 0
KIND_BOOL: Final = 1
KIND_INT: Final = 2
KIND_FLOAT: Final = 3
KIND_STR: Final = 4
KIND_BYTES: Final = 5
KIND_ENCODED: Final = 6
KIND_REF: Final = 7

# Integers beyond this lose digits as a float: they also go to ``val`` as text to stay exact.
_EXACT_FLOAT_INT: Final = 2**53
_NS: Final = 1_000_000_000
_ATTO_PER_NS: Final = 1_000_000_000
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

Encoded = tuple[int, float | None, bytes | None]
"""(kind, num, val) as stored in the database."""


@dataclass(frozen=True)
class ArrayRef:
    """Stands in for a value too large to archive: what it looked like, not what it held."""

    shape: tuple[int, ...]
    dtype: str
    nbytes: int


def encode_value(value: Any) -> Encoded:
    """Split ``value`` into the (kind, num, val) columns; raises ArchiveTypeError for the unencodable."""
    # Fast paths for the values a logger sees most (exact types: subclasses take the general path).
    cls = type(value)
    if cls is float:
        if value - value == 0.0:  # finite (inf - inf and nan - nan are nan)
            return KIND_FLOAT, value, None
    elif cls is int:
        if -_EXACT_FLOAT_INT <= value <= _EXACT_FLOAT_INT:
            return KIND_INT, float(value), None
    elif cls is bool:
        return KIND_BOOL, float(value), None
    elif cls is str and len(value) <= LARGE_VALUE_BYTES // 4:  # UTF-8 takes at most 4 bytes a character
        return KIND_STR, None, value.encode()
    return _encode_any(value)


def _encode_any(value: Any) -> Encoded:
    if value is None:
        return KIND_NONE, None, None
    if isinstance(value, bool | np.bool_):
        return KIND_BOOL, float(value), None
    if isinstance(value, int | np.integer):
        integer = int(value)
        if abs(integer) <= _EXACT_FLOAT_INT:
            return KIND_INT, float(integer), None
        # Too large for a float to hold exactly: the text is the value, the float only for min/max.
        approx = float(integer) if abs(integer) < 2**1023 else None
        return KIND_INT, approx, str(integer).encode()
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isfinite(number):
            return KIND_FLOAT, number, None
        # SQLite stores NaN as NULL, and NaN/inf would dominate min/max: keep them as text instead.
        return KIND_FLOAT, None, repr(number).encode()
    if isinstance(value, str):
        text = value.encode()
        if len(text) > LARGE_VALUE_BYTES:
            return _reference((len(value),), "str", len(text))
        return KIND_STR, None, text
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if len(data) > LARGE_VALUE_BYTES:
            return _reference((len(data),), "bytes", len(data))
        return KIND_BYTES, None, data
    if isinstance(value, np.ndarray) and value.nbytes > LARGE_VALUE_BYTES:
        return _reference(value.shape, value.dtype.str, value.nbytes)
    try:
        blob = encode(value)
    except EncodeError as exc:
        raise ArchiveTypeError(f"cannot archive a value of type {type(value).__name__}: {exc}") from exc
    if len(blob) > LARGE_VALUE_BYTES:
        return _reference_to_large(value, len(blob))
    return KIND_ENCODED, None, blob


def decode_value(kind: int, num: float | None, val: bytes | None) -> Any:
    """The inverse of :func:`encode_value` (a large value comes back as its :class:`ArrayRef`)."""
    if kind == KIND_NONE:
        return None
    if kind == KIND_BOOL:
        return bool(num)
    if kind == KIND_INT:
        return int(val) if val is not None else int(num or 0)
    if kind == KIND_FLOAT:
        return float(val) if val is not None else float(num or 0.0)
    if val is None:
        raise ArchiveValueError(f"archived value of kind {kind} has no data (database damaged?)")
    if kind == KIND_STR:
        return bytes(val).decode()
    if kind == KIND_BYTES:
        return bytes(val)
    if kind == KIND_ENCODED:
        return decode(bytes(val))
    if kind == KIND_REF:
        info = decode(bytes(val))
        return ArrayRef(tuple(info["shape"]), str(info["dtype"]), int(info["nbytes"]))
    raise ArchiveValueError(f"archived value has unknown kind {kind} (written by a newer version?)")


def encode_document(doc: Any, what: str) -> bytes:
    """Encode a schema document, event info or saved configuration (never replaced by a reference)."""
    try:
        return encode(doc)
    except EncodeError as exc:
        raise ArchiveTypeError(f"cannot archive {what}: {exc}") from exc


def decode_document(blob: bytes) -> Any:
    """The inverse of :func:`encode_document`."""
    return decode(bytes(blob))


def timestamp_ns(ts: Timestamp) -> int:
    """Integer nanoseconds since the epoch of ``ts`` (finer digits are dropped)."""
    ns = ts.seconds * _NS + ts.fraction // _ATTO_PER_NS
    if not _INT64_MIN <= ns <= _INT64_MAX:
        raise ArchiveValueError(f"time {ts!r} is outside what the archive stores (years 1678 to 2262)")
    return ns


def timestamp_from_ns(ns: int, train_id: int = 0) -> Timestamp:
    """The :class:`Timestamp` stored as ``ns`` nanoseconds and stored ``train_id``."""
    seconds, rest = divmod(ns, _NS)
    return Timestamp(seconds, rest * _ATTO_PER_NS, train_from_db(train_id))


def train_to_db(train_id: int) -> int:
    """Train ids are unsigned 64-bit, database integers signed: the top half wraps to negatives."""
    return train_id - 2**64 if train_id > _INT64_MAX else train_id


def train_from_db(stored: int) -> int:
    """The inverse of :func:`train_to_db`."""
    return stored + 2**64 if stored < 0 else stored


def ns_to_iso(ns: int) -> str:
    """A stored time as ISO 8601, for error messages."""
    return timestamp_from_ns(ns).to_iso()


def _reference(shape: tuple[int, ...], dtype: str, nbytes: int) -> Encoded:
    info = {"shape": [int(n) for n in shape], "dtype": dtype, "nbytes": int(nbytes)}
    return KIND_REF, None, encode(info)


def _reference_to_large(value: Any, nbytes: int) -> Encoded:
    """A reference for a large value that is not an ndarray (a long list, a node holding an image)."""
    if isinstance(value, list | tuple):
        try:
            array = np.asarray(value)
        except ValueError:
            log.debug("large ragged sequence archived without a shape", type=type(value).__name__)
            array = None
        if array is not None and array.dtype != object:
            return _reference(array.shape, array.dtype.str, nbytes)
    return _reference((), type(value).__name__, nbytes)
