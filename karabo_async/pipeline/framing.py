"""Pipeline frames, sans I/O: bytes in, frames out; items in, buffers out.

A frame is ``prefix | n x u64 buffer lengths | msgpack header | raw buffers``. The prefix carries a
magic, the header length and the buffer count, so a reader knows every length before any payload and
can receive each array straight into its final, preallocated memory (no copy after the socket).

Items are mappings (usually :class:`Hash`); numpy arrays inside them never enter msgpack: the
header holds a small placeholder (an msgpack ext type) naming either a raw buffer of the frame or a
region of the sender's shared-memory slot. A Hash travels as an ext type of its own (values and
attributes, so attributes survive); other values msgpack cannot carry (Timestamp, complex, enums)
travel as :mod:`karabo_async.codec` documents inside an ext type.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import numpy as np

from .. import codec
from ..errors import DecodeError, EncodeError
from ..hash import Hash

MAGIC: Final = b"KAp1"
_PREFIX: Final = struct.Struct("<4sII")
_LENGTH: Final = struct.Struct("<Q")
_EXT_INLINE: Final = 1
_EXT_SHM: Final = 2
_EXT_HASH: Final = 3
_EXT_VALUE: Final = 4
MAX_DEPTH: Final = 32
"""Hashes nest at most this deep in an item (each level is one recursive msgpack call)."""
SHM_ALIGN: Final = 64
_COALESCE: Final = 16 * 1024

Buffer = bytes | bytearray | memoryview


@dataclass(slots=True)
class Frame:
    """One received frame: its header (still packed) and its raw buffers."""

    header: bytes
    buffers: list[np.ndarray]


def frame_parts(header: Mapping[str, Any] | bytes, buffers: Iterable[Buffer] = ()) -> list[Buffer]:
    """The pieces to write, in order, for a frame (the buffers themselves are not copied)."""
    packed = header if isinstance(header, bytes) else pack(header)
    bufs = [memoryview(b) for b in buffers]
    head = bytearray(_PREFIX.pack(MAGIC, len(packed), len(bufs)))
    for b in bufs:
        head += _LENGTH.pack(b.nbytes)
    head += packed
    # Small leading buffers are cheaper copied than written with a system call of their own.
    parts: list[Buffer] = []
    for i, b in enumerate(bufs):
        if b.nbytes > _COALESCE:
            parts = [bytes(head), *bufs[i:]]
            break
        head += b
    return parts or [bytes(head)]


def pack(value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"cannot pack pipeline header: {exc}") from exc


# --- items -> header tree + buffers ----------------------------------------------------------------


def _array_buffer(arr: np.ndarray) -> memoryview:
    if arr.dtype.hasobject or arr.dtype.fields is not None:
        raise EncodeError(f"pipeline arrays must have a plain numeric dtype; got {arr.dtype}")
    return np.ascontiguousarray(arr).data.cast("B")


class ItemEncoder:
    """Packs one item; arrays go to ``buffers`` or, if big enough and there is room, into ``slot``.

    ``slot`` is a writable view of a shared-memory slot that starts ``base`` bytes into its segment
    (placeholders name segment offsets); ``offset`` tells how much of the slot is used.
    """

    def __init__(self, slot: memoryview | None = None, threshold: int = 0, base: int = 0) -> None:
        self.buffers: list[memoryview] = []
        self.slot = slot
        self.threshold = threshold
        self.base = base
        self.offset = 0
        self._depth = 0

    def encode(self, data: Mapping[str, Any]) -> Any:
        """Return an msgpack-ready tree whose arrays are ext placeholders."""
        if not isinstance(data, Mapping):
            raise EncodeError(f"a pipeline item must be a mapping; got {type(data).__name__}")
        return self._default(data)

    def _default(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return self._place(obj)
        if isinstance(obj, Hash):
            return self._hash(obj)
        if isinstance(obj, Mapping):
            return {_key(k): self._walk(v) for k, v in obj.items()}
        if isinstance(obj, np.generic):
            return obj.item()
        # Timestamps, complex numbers, enums...: the message codec knows them (or names the problem).
        try:
            return msgpack.ExtType(_EXT_VALUE, codec.encode(obj))
        except EncodeError as exc:
            raise EncodeError(f"a pipeline item cannot carry a {type(obj).__name__}: {exc}") from None

    def _hash(self, h: Hash) -> msgpack.ExtType:
        if self._depth >= MAX_DEPTH:
            raise EncodeError(f"Hashes nest deeper than {MAX_DEPTH} levels in a pipeline item")
        self._depth += 1
        try:
            values = {k: self._walk(v) for k, v in h.items()}
            # Only keys with attributes are in _attrs (read directly, as the codec does: hot path).
            attrs = {k: {n: self._walk(a) for n, a in at.items()} for k, at in h._attrs.items()}
        finally:
            self._depth -= 1
        return msgpack.ExtType(_EXT_HASH, pack([values, attrs]))

    def _walk(self, v: Any) -> Any:
        if isinstance(v, str | int | float | bool | bytes | None):
            return v
        if isinstance(v, list | tuple):
            return [self._walk(x) for x in v]
        return self._default(v)

    def _place(self, arr: np.ndarray) -> msgpack.ExtType:
        buf = _array_buffer(arr)
        shape = list(arr.shape)
        slot = self.slot
        if slot is not None and buf.nbytes >= self.threshold:
            start = -(-self.offset // SHM_ALIGN) * SHM_ALIGN
            if start + buf.nbytes <= slot.nbytes:
                slot[start : start + buf.nbytes] = buf
                self.offset = start + buf.nbytes
                return msgpack.ExtType(_EXT_SHM, pack([self.base + start, buf.nbytes, arr.dtype.str, shape]))
        self.buffers.append(buf)
        return msgpack.ExtType(_EXT_INLINE, pack([len(self.buffers) - 1, arr.dtype.str, shape]))


def _key(k: Any) -> str:
    if not isinstance(k, str):
        raise EncodeError(f"pipeline item keys must be strings; got {k!r}")
    return k


def shm_bytes_needed(data: Mapping[str, Any], threshold: int) -> int:
    """Bytes (with alignment) the arrays of at least ``threshold`` bytes would take in a slot."""
    total = 0
    stack: list[Any] = [data]
    while stack:
        v = stack.pop()
        if isinstance(v, np.ndarray):
            if v.nbytes >= threshold:
                total += -(-v.nbytes // SHM_ALIGN) * SHM_ALIGN
        elif isinstance(v, Mapping):
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return total


# --- header tree + buffers -> item -----------------------------------------------------------------


def unpack_header(frame: Frame, segment: mmap.mmap | None = None) -> dict[str, Any]:
    """Unpack a frame's header; array placeholders become numpy views of its buffers or ``segment``.

    Raises DecodeError for anything malformed (the caller drops that connection).
    """
    try:
        header = msgpack.unpackb(frame.header, ext_hook=_ext_hook(frame.buffers, segment), raw=False)
    except DecodeError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"malformed pipeline header: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(header.get("k"), str):
        raise DecodeError(f"pipeline header must be a map with a kind 'k'; got {header!r:.100}")
    return header


def _ext_hook(buffers: list[np.ndarray], segment: mmap.mmap | None) -> Callable[[int, bytes], Any]:
    depth = 0

    def hook(code: int, payload: bytes) -> Any:
        nonlocal depth
        if code == _EXT_HASH:
            if depth >= MAX_DEPTH:
                raise DecodeError(f"Hashes nest deeper than {MAX_DEPTH} levels in a pipeline item")
            depth += 1
            try:
                return _hash_from(msgpack.unpackb(payload, ext_hook=hook, raw=False))
            except DecodeError:
                raise
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                raise DecodeError(f"malformed Hash in a pipeline item: {exc}") from exc
            finally:
                depth -= 1
        if code == _EXT_VALUE:
            return codec.decode(payload)
        if code not in (_EXT_INLINE, _EXT_SHM):
            raise DecodeError(f"unknown ext type {code} in pipeline header")
        try:
            fields = msgpack.unpackb(payload, raw=False)
            if code == _EXT_INLINE:
                index, dtype, shape = fields
                return _view(buffers[index], 0, None, dtype, shape)
            if code == _EXT_SHM:
                if segment is None:
                    raise DecodeError("shared-memory array on a connection without a segment")
                offset, nbytes, dtype, shape = fields
                if not 0 <= offset <= offset + nbytes <= len(segment):
                    raise DecodeError(f"shared-memory array [{offset}, +{nbytes}] outside the segment")
                return _view(segment, offset, nbytes, dtype, shape)
        except DecodeError:
            raise
        except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
            raise DecodeError(f"malformed array placeholder: {exc}") from exc
        raise DecodeError(f"unknown ext type {code} in pipeline header")

    return hook


def _hash_from(parts: Any) -> Hash:
    if type(parts) is not list or len(parts) != 2 or type(parts[0]) is not dict or type(parts[1]) is not dict:
        raise DecodeError("a Hash in a pipeline item must be [values map, attributes map]")
    values, attrs = parts
    h = Hash()
    try:
        for key, value in values.items():
            if type(key) is not str or "." in key:  # a dotted key would silently nest
                raise DecodeError(f"bad Hash key {key!r} in a pipeline item")
            h[key] = value
        for key, at in attrs.items():
            if key not in values or type(at) is not dict:
                raise DecodeError(f"bad attributes for Hash key {key!r} in a pipeline item")
            h.set_attributes(key, at)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"bad Hash in a pipeline item: {exc}") from exc
    return h


def _view(buf: Any, offset: int, nbytes: int | None, dtype: str, shape: list[int]) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise DecodeError(f"object dtype {dtype!r} is not allowed in a pipeline item")
    count = 1
    for n in shape:
        if not isinstance(n, int) or n < 0:
            raise DecodeError(f"bad array shape {shape!r}")
        count *= n
    size = count * dt.itemsize
    if nbytes is None:
        nbytes = memoryview(buf).nbytes
    if size != nbytes:
        raise DecodeError(f"array of shape {shape} and dtype {dtype} needs {size} bytes, got {nbytes}")
    return np.frombuffer(buf, dtype=dt, count=count, offset=offset).reshape(shape)


# --- the incremental reader ------------------------------------------------------------------------


class FrameReader:
    """Turns a byte stream into frames, giving out the memory to receive into (BufferedProtocol style).

    Small pieces land in a scratch buffer and are parsed from there; once a large buffer is
    underway, ``get_buffer`` hands out the rest of that buffer's own array so the socket writes
    straight into it.
    """

    def __init__(
        self,
        *,
        scratch_size: int = 256 * 1024,
        max_header: int = 64 * 1024 * 1024,
        max_buffers: int = 65536,
        max_frame: int = 4 * 1024**3,
    ) -> None:
        self._scratch = bytearray(scratch_size)
        self._start = 0
        self._end = 0
        self._max_header = max_header
        self._max_buffers = max_buffers
        self._max_frame = max_frame
        self._header: bytes | None = None
        self._lengths: list[int] = []
        self._buffers: list[np.ndarray] = []
        self._target: np.ndarray | None = None
        self._target_pos = 0

    def get_buffer(self) -> memoryview:
        target = self._target
        if target is not None:
            return target.data[self._target_pos :]
        if self._end == len(self._scratch):
            self._compact()
        return memoryview(self._scratch)[self._end :]

    def buffer_updated(self, nbytes: int) -> list[Frame]:
        """Account for ``nbytes`` received into the last buffer given; return the frames completed."""
        frames: list[Frame] = []
        if self._target is not None:
            self._target_pos += nbytes
            if self._target_pos < self._target.nbytes:
                return frames
            self._buffers.append(self._target)
            self._target = None
        else:
            self._end += nbytes
        self._parse(frames)
        return frames

    def _compact(self) -> None:
        pending = self._end - self._start
        if self._start:
            self._scratch[:pending] = self._scratch[self._start : self._end]
            self._start, self._end = 0, pending
        if self._end == len(self._scratch):
            self._grow(2 * len(self._scratch))

    def _grow(self, size: int) -> None:
        # A new buffer, not extend(): the transport may still hold a view of the old one.
        new = bytearray(size)
        new[: self._end - self._start] = self._scratch[self._start : self._end]
        self._scratch, self._start, self._end = new, 0, self._end - self._start

    def _parse(self, frames: list[Frame]) -> None:
        while True:
            if self._header is None and not self._parse_head():
                return
            if not self._fill_buffers():
                return
            assert self._header is not None
            frames.append(Frame(self._header, self._buffers))
            self._header, self._lengths, self._buffers = None, [], []

    def _parse_head(self) -> bool:
        avail = self._end - self._start
        if avail < _PREFIX.size:
            self._make_room(_PREFIX.size)
            return False
        magic, hlen, nbuf = _PREFIX.unpack_from(self._scratch, self._start)
        if magic != MAGIC:
            raise DecodeError(f"not a pipeline frame (magic {bytes(magic)!r})")
        if hlen > self._max_header or nbuf > self._max_buffers:
            raise DecodeError(f"pipeline frame too large: header {hlen} bytes, {nbuf} buffers")
        need = _PREFIX.size + nbuf * _LENGTH.size + hlen
        if avail < need:
            self._make_room(need)
            return False
        pos = self._start + _PREFIX.size
        lengths = [_LENGTH.unpack_from(self._scratch, pos + i * _LENGTH.size)[0] for i in range(nbuf)]
        if sum(lengths) > self._max_frame:
            raise DecodeError(f"pipeline frame too large: {sum(lengths)} bytes of buffers")
        pos += nbuf * _LENGTH.size
        self._header = bytes(self._scratch[pos : pos + hlen])
        self._lengths = lengths
        self._start += need
        return True

    def _make_room(self, need: int) -> None:
        # A partial head must fit into the scratch from its start; move it to the front or grow.
        if self._start + need > len(self._scratch):
            pending = self._end - self._start
            self._scratch[:pending] = self._scratch[self._start : self._end]
            self._start, self._end = 0, pending
            if need > len(self._scratch):
                self._grow(need)
        if self._start == self._end:
            self._start = self._end = 0

    def _fill_buffers(self) -> bool:
        while len(self._buffers) < len(self._lengths):
            size = self._lengths[len(self._buffers)]
            arr = np.empty(size, dtype=np.uint8)
            take = min(size, self._end - self._start)
            if take:
                arr[:take] = np.frombuffer(self._scratch, np.uint8, take, self._start)
                self._start += take
            if self._start == self._end:
                self._start = self._end = 0
            if take < size:
                self._target, self._target_pos = arr, take
                return False
            self._buffers.append(arr)
        return True
