"""The one body codec: Python values <-> bytes, msgpack with a few extension types.

Every message goes through here, so the common case (no numpy arrays) is a single call into
msgpack's C packer/unpacker with a module-level hook that only runs for our extension types.
Arrays never enter msgpack: their headers do, and their bytes follow the msgpack document in a
data section, so a sender can hand the array buffers to the socket as they are
(:func:`encode_parts`) and a receiver gets read-only numpy views into the received buffer
(:func:`decode`), no copy on either side. The byte layout is described in docs/wire-format.md.

Decoding what ``encode`` made gives back an equal value, with these normalisations: tuples become
lists, bytearray/memoryview become bytes, enums become their value, numpy scalars become Python
``bool``/``int``/``float``/``complex``, and arrays come back read-only (views into the input).
"""

from __future__ import annotations

import enum
import math
import struct
import threading
from itertools import chain
from typing import Any, Final

import msgpack
import numpy as np

from .errors import DecodeError, EncodeError
from .hash import Hash
from .timestamp import Timestamp

# --- extension type codes (docs/wire-format.md) -------------------------------------------------
EXT_HASH: Final = 1
EXT_TIMESTAMP: Final = 2
EXT_ARRAY: Final = 3
EXT_COMPLEX: Final = 4
EXT_FRAME: Final = 75  # "K": the preamble of a message with a data section

FRAME_VERSION: Final = 1
ALIGNMENT: Final = 64  # array payloads start at multiples of this, counted from the message start
MAX_HASH_DEPTH: Final = 32
"""Hashes nest at most this deep. Each level is one more msgpack call on the C stack (about 40 KiB
when decoding), so the limit keeps hostile input from exhausting a thread's stack."""

_PREAMBLE: Final = struct.Struct(">BbHHIQ")  # 0xd8 (fixext 16), EXT_FRAME, version, reserved, doc, data
_PREAMBLE_HEAD: Final = b"\xd8" + bytes([EXT_FRAME])
_TIMESTAMP: Final = struct.Struct(">qQQ")
_COMPLEX: Final = struct.Struct(">dd")
_PADDING: Final = bytes(ALIGNMENT)
_INT64_MIN: Final = -(2**63)
_UINT64_MAX: Final = 2**64 - 1

# byte-order-explicit dtype strings we accept, e.g. "<f8", ">i4", "|u1", "|b1"; looked up rather than
# handed to np.dtype() so that a header cannot make numpy build an arbitrary (structured, object) type
_DTYPES: Final[dict[str, np.dtype[Any]]] = {}
for _code in ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"):
    for _order in "<>|":
        _dt = np.dtype(_order + _code)
        _DTYPES[_dt.str] = _dt


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


class _NeedsDataSection(Exception):
    """Raised by the fast path's hook on meeting an array: encode again, collecting buffers."""


class _DataSection:
    """The arrays of one message being encoded, with their offsets in the data section."""

    __slots__ = ("buffers", "end")

    def __init__(self) -> None:
        self.buffers: list[tuple[int, memoryview]] = []
        self.end = 0

    def add(self, flat_bytes: memoryview) -> int:
        offset = _align(self.end)
        self.buffers.append((offset, flat_bytes))
        self.end = offset + flat_bytes.nbytes
        return offset

    def frame(self, doc: bytes) -> list[bytes | memoryview]:
        head = _PREAMBLE.pack(0xD8, EXT_FRAME, FRAME_VERSION, 0, len(doc), self.end)
        start = _align(len(head) + len(doc))
        parts: list[bytes | memoryview] = [head + doc + _PADDING[: start - len(head) - len(doc)]]
        position = 0
        for offset, buffer in self.buffers:
            if offset > position:
                parts.append(_PADDING[: offset - position])
            parts.append(buffer)
            position = offset + buffer.nbytes
        return parts


class _Encoder:
    """msgpack's ``default`` hook: turns our types into extension types. ``section`` is None on the
    fast path, which gives up (``_NeedsDataSection``) when it meets an array."""

    __slots__ = ("depth", "section")

    def __init__(self, section: _DataSection | None, depth: int) -> None:
        self.section = section
        self.depth = depth

    def default(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is Hash:
            return self._hash(obj)
        if kind is Timestamp:
            return msgpack.ExtType(EXT_TIMESTAMP, _TIMESTAMP.pack(obj.seconds, obj.fraction, obj.train_id))
        if isinstance(obj, np.ndarray):
            return self._array(obj)
        if isinstance(obj, np.generic):
            return _numpy_scalar(obj)
        if isinstance(obj, enum.Enum):
            return obj.value
        if isinstance(obj, complex):
            return msgpack.ExtType(EXT_COMPLEX, _COMPLEX.pack(obj.real, obj.imag))
        if isinstance(obj, Hash):
            return self._hash(obj)
        if isinstance(obj, Timestamp):
            return msgpack.ExtType(EXT_TIMESTAMP, _TIMESTAMP.pack(obj.seconds, obj.fraction, obj.train_id))
        raise EncodeError(f"cannot encode a value of type {_type_name(obj)}")

    def _hash(self, h: Hash) -> msgpack.ExtType:
        if self.depth >= MAX_HASH_DEPTH:
            raise EncodeError(f"Hashes nest deeper than {MAX_HASH_DEPTH} levels")
        inner = _Encoder(self.section, self.depth + 1)
        # Hash internals are read directly: this is the hot path of every message
        payload = msgpack.packb([h._data, h._attrs], default=inner.default, use_bin_type=True, datetime=False)
        return msgpack.ExtType(EXT_HASH, payload)

    def _array(self, array: np.ndarray[Any, Any]) -> msgpack.ExtType:
        if self.section is None:
            raise _NeedsDataSection
        if isinstance(array, np.ma.MaskedArray):
            raise EncodeError("cannot encode a masked array (the mask would be lost); send data and mask")
        dtype = array.dtype
        if dtype.str not in _DTYPES:
            raise EncodeError(f"cannot encode an array of dtype {dtype} (numeric and bool dtypes only)")
        if not array.flags.c_contiguous:
            array = array.copy(order="C")
        offset = 0
        if array.nbytes:
            offset = self.section.add(np.asarray(array).reshape(-1).view(np.uint8).data)
        header = msgpack.packb([dtype.str, list(array.shape), offset, array.nbytes])
        return msgpack.ExtType(EXT_ARRAY, header)


def _numpy_scalar(value: np.generic) -> Any:
    kind = value.dtype.kind
    if value.dtype.str not in _DTYPES:
        raise EncodeError(f"cannot encode a numpy scalar of dtype {value.dtype}")
    if kind == "b":
        return bool(value)
    if kind in "iu":
        return int(value)
    if kind == "f":
        return float(value)
    c = complex(value)
    return msgpack.ExtType(EXT_COMPLEX, _COMPLEX.pack(c.real, c.imag))


def _type_name(obj: object) -> str:
    kind = type(obj)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


_FAST_HOOK: Final = _Encoder(None, 0).default
_local = threading.local()


def _packer() -> msgpack.Packer:
    # one Packer per thread: reusing it saves building one per call, but it must not be shared
    # between threads (our hook is Python code, so another thread may run in the middle of a pack)
    try:
        packer: msgpack.Packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(default=_FAST_HOOK, use_bin_type=True, datetime=False)
    return packer


_ENCODE_FAILURES: Final = (TypeError, ValueError, OverflowError)  # EncodeError is both a TypeError


def encode_parts(obj: Any) -> list[bytes | memoryview]:
    """Encode ``obj`` as a list of buffers whose concatenation is ``encode(obj)``.

    Without arrays this is one ``bytes``. With arrays it is the header (preamble and msgpack
    document) followed by the arrays' own memory (as memoryviews, not copied) and padding, ready
    for a vectored write. The arrays must not change until the parts have been sent.
    """
    try:
        return [_packer().pack(obj)]
    except _NeedsDataSection:
        pass
    except _ENCODE_FAILURES as exc:
        raise _explain(obj, exc) from exc
    section = _DataSection()
    try:
        doc = msgpack.packb(obj, default=_Encoder(section, 0).default, use_bin_type=True, datetime=False)
    except _ENCODE_FAILURES as exc:
        raise _explain(obj, exc) from exc
    if len(doc) > 0xFFFFFFFF:
        raise EncodeError(f"message header of {len(doc)} bytes exceeds the 4 GiB limit")
    return section.frame(doc)


def encode(obj: Any) -> bytes:
    """Encode ``obj`` (None, bool, int, float, complex, str, bytes, list/tuple, dict, Hash,
    Timestamp, enum, numpy array or scalar, nested freely) to bytes. Raises EncodeError naming the
    offending type and where it sits."""
    try:
        return _packer().pack(obj)  # type: ignore[no-any-return]
    except _NeedsDataSection:
        return b"".join(encode_parts(obj))
    except _ENCODE_FAILURES as exc:
        raise _explain(obj, exc) from exc


# --- decoding -----------------------------------------------------------------------------------


class _Decoder:
    """msgpack's ``ext_hook``: builds our types from extension payloads. ``section`` is the
    read-only data section arrays point into, None when the message has none."""

    __slots__ = ("depth", "section")

    def __init__(self, section: memoryview | None, depth: int) -> None:
        self.section = section
        self.depth = depth

    def ext_hook(self, code: int, payload: bytes) -> Any:
        if code == EXT_HASH:
            return self._hash(payload)
        if code == EXT_TIMESTAMP:
            if len(payload) != _TIMESTAMP.size:
                raise DecodeError(f"timestamp extension of {len(payload)} bytes, expected {_TIMESTAMP.size}")
            try:
                return Timestamp(*_TIMESTAMP.unpack(payload))
            except ValueError as exc:
                raise DecodeError(f"bad timestamp: {exc}") from exc
        if code == EXT_ARRAY:
            return self._array(payload)
        if code == EXT_COMPLEX:
            if len(payload) != _COMPLEX.size:
                raise DecodeError(f"complex extension of {len(payload)} bytes, expected {_COMPLEX.size}")
            return complex(*_COMPLEX.unpack(payload))
        if code == EXT_FRAME:
            raise DecodeError("frame preamble found inside a message (only allowed at its start)")
        raise DecodeError(f"unknown extension type {code}")

    def _hash(self, payload: bytes) -> Hash:
        if self.depth >= MAX_HASH_DEPTH:
            raise DecodeError(f"Hashes nest deeper than {MAX_HASH_DEPTH} levels")
        inner = _Decoder(self.section, self.depth + 1)
        try:
            parts = msgpack.unpackb(payload, ext_hook=inner.ext_hook, raw=False, strict_map_key=False)
        except msgpack.ExtraData:
            raise DecodeError("trailing bytes inside a Hash extension") from None
        if type(parts) is not list or len(parts) != 2:
            raise DecodeError("Hash extension is not a [values, attributes] pair")
        data, attrs = parts
        if type(data) is not dict or type(attrs) is not dict:
            raise DecodeError("Hash extension's values and attributes must be maps")
        _check_hash_keys(data, "Hash key")
        if attrs:
            if not attrs.keys() <= data.keys():
                raise DecodeError(f"Hash attributes for missing keys {sorted(attrs.keys() - data.keys())}")
            _check_attributes(attrs)
        return Hash._from_trusted(data, attrs)

    def _array(self, payload: bytes) -> np.ndarray[Any, Any]:
        try:
            header = msgpack.unpackb(payload)
        except msgpack.ExtraData:
            raise DecodeError("trailing bytes inside an array header") from None
        if type(header) is not list or len(header) != 4:
            raise DecodeError("array header is not [dtype, shape, offset, nbytes]")
        dtype_str, shape, offset, nbytes = header
        dtype = _DTYPES.get(dtype_str) if type(dtype_str) is str else None
        if dtype is None:
            raise DecodeError(f"array header names an unsupported dtype {dtype_str!r}")
        if type(shape) is not list or len(shape) > 32 or not all(type(n) is int and n >= 0 for n in shape):
            raise DecodeError(f"array header has a bad shape {shape!r}")
        if type(offset) is not int or type(nbytes) is not int or offset < 0:
            raise DecodeError(f"array header has a bad offset {offset!r} or size {nbytes!r}")
        count = math.prod(shape)
        if count * dtype.itemsize != nbytes:
            raise DecodeError(f"array header: shape {shape} of {dtype_str} is not {nbytes} bytes")
        if nbytes == 0:
            empty = np.empty(shape, dtype)
            empty.flags.writeable = False
            return empty
        if self.section is None:
            raise DecodeError("array header in a message without a data section")
        if offset + nbytes > len(self.section):
            raise DecodeError(
                f"array bytes {offset}..{offset + nbytes} lie outside the data section of "
                f"{len(self.section)} bytes"
            )
        return np.frombuffer(self.section, dtype, count, offset).reshape(shape)


def _check_hash_keys(data: dict[Any, Any], what: str) -> None:
    # str.join checks in C that every key is a str; then one search finds any separator
    try:
        joined = "".join(data)
    except TypeError:
        bad = next(key for key in data if type(key) is not str)
        raise DecodeError(f"{what} {bad!r} is not a str") from None
    if "." in joined or "" in data:
        bad = next(key for key in data if not key or "." in key)
        raise DecodeError(f"{what} {bad!r} is empty or contains '.'")


def _check_attributes(attrs: dict[str, Any]) -> None:
    # every test here loops in C; the Python loops only run to name the culprit
    if set(map(type, attrs.values())) != {dict} or not all(attrs.values()):
        bad = next(key for key, names in attrs.items() if type(names) is not dict or not names)
        raise DecodeError(f"attributes of Hash key {bad!r} must be a non-empty map")
    names = list(chain.from_iterable(attrs.values()))
    try:
        "".join(names)
    except TypeError:
        bad = next(key for key, named in attrs.items() if any(type(name) is not str for name in named))
        raise DecodeError(f"attribute names of Hash key {bad!r} must be str") from None
    if "" in names:
        bad = next(key for key, named in attrs.items() if "" in named)
        raise DecodeError(f"empty attribute name on Hash key {bad!r}")


_PLAIN_HOOK: Final = _Decoder(None, 0).ext_hook
_DECODE_FAILURES: Final = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    msgpack.UnpackException,
)


def decode(data: bytes | bytearray | memoryview) -> Any:
    """Decode what :func:`encode` (or the concatenated :func:`encode_parts`) produced.

    Arrays come back as read-only numpy views into ``data``, which they keep alive. Anything
    undecodable raises :class:`~karabo_async.errors.DecodeError` saying what was wrong.
    """
    if type(data) is not bytes:
        data = _as_bytes_view(data)
    try:
        if data[:2] == _PREAMBLE_HEAD:
            return _decode_framed(data)
        result = msgpack.unpackb(data, ext_hook=_PLAIN_HOOK, raw=False, strict_map_key=False)
    except DecodeError:
        raise
    except msgpack.ExtraData as exc:
        raise DecodeError(f"{len(exc.extra)} bytes of trailing data after the message") from None
    except _DECODE_FAILURES as exc:
        raise DecodeError(f"undecodable message: {_describe(exc)}") from exc
    _reject_foreign_timestamps(data, result)
    return result


def _describe(exc: BaseException) -> str:
    if isinstance(exc, msgpack.FormatError):
        return "reserved or invalid msgpack type byte"
    if isinstance(exc, msgpack.StackError):
        return "containers nested deeper than msgpack allows"
    return str(exc) or type(exc).__name__


def _as_bytes_view(data: object) -> bytes | bytearray | memoryview:
    if isinstance(data, bytearray):
        return data
    if isinstance(data, memoryview):
        if data.format == "B" and data.ndim == 1 and data.c_contiguous:
            return data
        try:
            return data.cast("B")
        except TypeError as exc:
            raise DecodeError(f"cannot decode a non-contiguous buffer: {exc}") from exc
    raise DecodeError(f"decode needs bytes, bytearray or memoryview, got {_type_name(data)}")


def _decode_framed(data: bytes | bytearray | memoryview) -> Any:
    if len(data) < _PREAMBLE.size:
        raise DecodeError(f"frame preamble truncated: {len(data)} of {_PREAMBLE.size} bytes")
    _, _, version, reserved, doc_len, data_len = _PREAMBLE.unpack_from(data)
    if version != FRAME_VERSION or reserved:
        raise DecodeError(f"unsupported frame version {version} (reserved field {reserved})")
    start = _align(_PREAMBLE.size + doc_len)
    if start + data_len != len(data):
        raise DecodeError(
            f"frame announces {start + data_len} bytes (header {doc_len}, data {data_len}) "
            f"but the message has {len(data)}"
        )
    view = memoryview(data).toreadonly()
    doc = view[_PREAMBLE.size : _PREAMBLE.size + doc_len]
    decoder = _Decoder(view[start:], 0)
    try:
        result = msgpack.unpackb(doc, ext_hook=decoder.ext_hook, raw=False, strict_map_key=False)
    except msgpack.ExtraData as exc:
        raise DecodeError(f"{len(exc.extra)} bytes of trailing data inside the frame header") from None
    _reject_foreign_timestamps(doc.tobytes(), result)
    return result


def _reject_foreign_timestamps(data: bytes | bytearray | memoryview, result: Any) -> None:
    """msgpack decodes its own timestamp extension (type -1) without asking our hook, so it
    would slip through as a ``msgpack.Timestamp``. Its three encodings all contain a 0xff byte
    right after a fixext 4/8 or ext 8 marker; only when one appears is the result searched."""
    if isinstance(data, memoryview):
        data = data.tobytes()
    if b"\xff" not in data:
        return
    marked = b"\xd6\xff" in data or b"\xd7\xff" in data or b"\xc7\x0c\xff" in data
    if marked and _contains_foreign_timestamp(result):
        raise DecodeError("unknown extension type -1 (msgpack's own timestamp; use Timestamp)")


def _contains_foreign_timestamp(result: Any) -> bool:
    # iterative: a hostile message may nest lists a thousand deep
    pending = [result]
    while pending:
        value = pending.pop()
        if isinstance(value, msgpack.Timestamp):
            return True
        if isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, Hash):
            pending.extend(value.values())
            pending.extend(value._attrs.values())
    return False


# --- explaining encode failures -----------------------------------------------------------------


def _explain(obj: Any, exc: BaseException) -> EncodeError:
    """Find where in ``obj`` the unencodable value sits (only on failure, so speed is no concern)."""
    found = _find_unencodable(obj, "", 0)
    if found is None:
        return EncodeError(f"cannot encode message: {exc}")
    where, why = found
    return EncodeError(f"cannot encode {why} at {where or 'top level'}")


def _find_unencodable(value: Any, path: str, depth: int) -> tuple[str, str] | None:
    if depth > 500:
        return path, "a structure nested too deep (or containing itself)"
    if value is None or isinstance(value, bool | float | str | bytes | bytearray | memoryview | complex):
        return None
    if isinstance(value, int):
        if _INT64_MIN <= value <= _UINT64_MAX:
            return None
        return path, f"the int {value} (outside -2**63 .. 2**64-1)"
    if isinstance(value, Timestamp):
        return None
    if isinstance(value, np.ndarray | np.generic):
        if isinstance(value, np.ma.MaskedArray):
            return path, "a masked array"
        return None if value.dtype.str in _DTYPES else (path, f"numpy dtype {value.dtype}")
    if isinstance(value, enum.Enum):
        return _find_unencodable(value.value, path, depth + 1)
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _find_unencodable(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, Hash):
        if depth >= MAX_HASH_DEPTH:
            return path, f"a Hash nested deeper than {MAX_HASH_DEPTH} levels"
        for key, item in value.items():
            found = _find_unencodable(item, _join(path, key), depth + 1)
            if found:
                return found
        for key, attrs in value._attrs.items():
            for name, item in attrs.items():
                found = _find_unencodable(item, f"{_join(path, key)}@{name}", depth + 1)
                if found:
                    return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_unencodable(key, path, depth + 1) or _find_unencodable(
                item, _join(path, str(key)), depth + 1
            )
            if found:
                return found
        return None
    return path, f"a value of type {_type_name(value)}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


__all__ = ["ALIGNMENT", "MAX_HASH_DEPTH", "decode", "encode", "encode_parts"]
