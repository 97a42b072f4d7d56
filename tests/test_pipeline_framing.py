"""Pipeline frames: round trips through the incremental reader, arrays out of band, bad input refused."""

from __future__ import annotations

import mmap
import struct
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from karabo_async import codec
from karabo_async.errors import DecodeError, EncodeError
from karabo_async.hash import Hash
from karabo_async.pipeline import ItemMeta
from karabo_async.pipeline.framing import (
    MAGIC,
    Frame,
    FrameReader,
    ItemEncoder,
    frame_parts,
    shm_bytes_needed,
    unpack_header,
)
from karabo_async.timestamp import Timestamp

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=50),
)
arrays = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.int16, np.int64, np.float32, np.float64, np.complex128, np.bool_]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=40),
)
values = st.recursive(
    st.one_of(scalars, arrays),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
items = st.dictionaries(st.text(max_size=10), values, max_size=6)


def feed(reader: FrameReader, data: bytes, chunks: list[int]) -> list[Frame]:
    """Push ``data`` through the reader as a socket would, in pieces of the given sizes."""
    frames: list[Frame] = []
    pos, i = 0, 0
    while pos < len(data):
        buf = reader.get_buffer()
        want = chunks[i % len(chunks)] if chunks else len(data)
        n = min(len(buf), want, len(data) - pos)
        buf[:n] = data[pos : pos + n]
        pos += n
        i += 1
        frames.extend(reader.buffer_updated(n))
    return frames


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


@settings(max_examples=60, deadline=None)
@given(batch=st.lists(items, min_size=1, max_size=4), chunks=st.lists(st.integers(1, 5000), max_size=5))
def test_items_round_trip_through_reader_in_any_chunking(
    batch: list[dict[str, Any]], chunks: list[int]
) -> None:
    wire = b""
    for item in batch:
        enc = ItemEncoder()
        tree = enc.encode(item)
        wire += b"".join(bytes(p) for p in frame_parts({"k": "d", "d": tree}, enc.buffers))
    reader = FrameReader(scratch_size=64)
    frames = feed(reader, wire, chunks)
    assert len(frames) == len(batch)
    for item, frame in zip(batch, frames, strict=True):
        assert_same(item, unpack_header(frame)["d"])


def test_large_array_is_received_into_its_own_buffer_not_copied_afterwards() -> None:
    arr = np.arange(1_000_000, dtype=np.float64)
    enc = ItemEncoder()
    parts = frame_parts({"k": "d", "d": enc.encode({"a": arr})}, enc.buffers)
    assert len(parts) == 2 and parts[1].nbytes == arr.nbytes  # type: ignore[union-attr]
    reader = FrameReader()
    frames = feed(reader, b"".join(bytes(p) for p in parts), [65536])
    out = unpack_header(frames[0])["d"]["a"]
    np.testing.assert_array_equal(out, arr)
    assert out.base is not None and np.shares_memory(out, frames[0].buffers[0])


def test_small_buffers_are_coalesced_into_the_header_write() -> None:
    enc = ItemEncoder()
    tree = enc.encode({"a": np.ones(10), "b": np.ones(100_000)})
    parts = frame_parts({"k": "d", "d": tree}, enc.buffers)
    assert len(parts) == 2  # head (with the small array) + the big array


def test_shm_encoder_places_big_arrays_in_the_slot_with_segment_offsets() -> None:
    segment = mmap.mmap(-1, 4 * 1024 * 1024)
    base = 1024 * 1024
    slot = memoryview(segment)[base : base + 1024 * 1024]
    big = np.arange(100_000, dtype=np.int32)
    small = np.arange(10, dtype=np.int32)
    enc = ItemEncoder(slot, threshold=65536, base=base)
    tree = enc.encode({"big": big, "small": small})
    slot.release()
    assert len(enc.buffers) == 1
    assert shm_bytes_needed({"big": big, "small": small}, 65536) == big.nbytes
    wire = b"".join(bytes(p) for p in frame_parts({"k": "d", "d": tree}, enc.buffers))
    frames = feed(FrameReader(), wire, [])
    out = unpack_header(frames[0], segment)["d"]
    np.testing.assert_array_equal(out["big"], big)
    np.testing.assert_array_equal(out["small"], small)


def test_array_too_big_for_the_slot_goes_inline() -> None:
    slot = memoryview(bytearray(1000))
    enc = ItemEncoder(slot, threshold=10)
    enc.encode({"a": np.ones(2000, np.uint8)})
    assert len(enc.buffers) == 1 and enc.offset == 0


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"a": np.array([object()])}, "plain numeric dtype"),
        ({1: 2}, "keys must be strings"),
        ({"a": {1, 2}}, "cannot carry a set"),
    ],
)
def test_unencodable_items_raise_encode_error(item: Any, message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        ItemEncoder().encode(item)


def test_item_must_be_a_mapping() -> None:
    with pytest.raises(EncodeError, match="must be a mapping"):
        ItemEncoder().encode([1, 2])  # type: ignore[arg-type]


def _frame(header: bytes, nbuf: int = 0, lengths: tuple[int, ...] = ()) -> bytes:
    return (
        struct.pack("<4sII", MAGIC, len(header), nbuf)
        + b"".join(struct.pack("<Q", n) for n in lengths)
        + header
    )


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "not a pipeline frame"),
        (struct.pack("<4sII", MAGIC, 2**31, 0), "too large"),
        (_frame(b"\xc1"), "malformed pipeline header"),
        (_frame(msgpack.packb([1, 2])), "must be a map"),
        (
            _frame(msgpack.packb({"k": "d", "d": msgpack.ExtType(1, msgpack.packb([0, "<f8", [2]]))})),
            "placeholder",
        ),
        (
            _frame(
                msgpack.packb({"k": "d", "d": msgpack.ExtType(1, msgpack.packb([0, "<f8", [3]]))}), 1, (8,)
            )
            + b"x" * 8,
            "needs 24 bytes",
        ),
        (
            _frame(msgpack.packb({"k": "d", "d": msgpack.ExtType(2, msgpack.packb([0, 8, "<f8", [1]]))})),
            "without a segment",
        ),
        (_frame(msgpack.packb({"k": "d", "d": msgpack.ExtType(9, b"")})), "unknown ext type"),
        (
            _frame(msgpack.packb({"k": "d", "d": msgpack.ExtType(1, msgpack.packb([0, "|O", [1]]))}), 1, (8,))
            + b"x" * 8,
            "object",
        ),
    ],
)
def test_malformed_frames_raise_decode_error(wire: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        for frame in feed(FrameReader(), wire, [7]):
            unpack_header(frame)


def test_shm_placeholder_outside_the_segment_is_refused() -> None:
    segment = mmap.mmap(-1, 4096)
    header = msgpack.packb({"k": "d", "d": msgpack.ExtType(2, msgpack.packb([4000, 800, "<f8", [100]]))})
    with pytest.raises(DecodeError, match="outside the segment"):
        unpack_header(Frame(header, []), segment)


def _round_trip(item: Any, slot_size: int = 0, segment: mmap.mmap | None = None) -> Any:
    segment = segment or mmap.mmap(-1, max(slot_size, 4096))
    slot = memoryview(segment)[:slot_size] if slot_size else None
    enc = ItemEncoder(slot, threshold=65536 if slot_size else 0)
    tree = enc.encode(item)
    if slot is not None:
        slot.release()
    wire = b"".join(bytes(p) for p in frame_parts({"k": "d", "d": tree}, enc.buffers))
    return unpack_header(feed(FrameReader(), wire, [])[0], segment)["d"]


hash_keys = st.text(
    st.characters(blacklist_characters=".", blacklist_categories=("Cs",)), min_size=1, max_size=6
)
attr_values = st.one_of(
    scalars, arrays, st.builds(Timestamp, st.integers(0, 2**40), st.integers(0, 10**18 - 1))
)
hash_values = st.recursive(
    st.one_of(scalars, arrays, st.complex_numbers(allow_nan=False)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(hash_keys, inner, max_size=3).map(Hash),
    ),
    max_leaves=10,
)


@st.composite
def hashes(draw: st.DrawFn) -> Hash:
    h = Hash(draw(st.dictionaries(hash_keys, hash_values, max_size=5)))
    for key in list(h):
        for name, value in draw(st.dictionaries(hash_keys, attr_values, max_size=2)).items():
            h.set_attribute(key, name, value)
    return h


@settings(max_examples=80, deadline=None)
@given(item=hashes())
def test_hash_items_keep_attributes_and_nesting(item: Hash) -> None:
    out = _round_trip(item)
    assert isinstance(out, Hash)
    # The codec's bytes compare order, types, attributes and array contents (NaN included).
    assert codec.encode(out) == codec.encode(item)


def test_hash_item_with_attributes_and_big_array_through_shared_memory() -> None:
    item = Hash(image=np.arange(100_000, dtype=np.uint16), frame_id=7, stamp=Timestamp(5, 6, 7))
    item.set_attribute("image", "unit", "counts")
    item.set_attribute("frame_id", "gain", np.arange(3))
    item["nested.value"] = 1 + 2j
    segment = mmap.mmap(-1, 1024 * 1024)
    out = _round_trip(item, slot_size=1024 * 1024, segment=segment)
    assert out == item and out.get_attribute("image", "unit") == "counts"
    start = np.frombuffer(segment, np.uint8).ctypes.data
    assert start <= out["image"].ctypes.data < start + len(segment)  # a view of the segment, no copy


def _hash_ext(values: Any, attrs: Any) -> msgpack.ExtType:
    return msgpack.ExtType(3, msgpack.packb([values, attrs]))


@pytest.mark.parametrize(
    ("ext", "message"),
    [
        (msgpack.ExtType(3, msgpack.packb([1])), "values map, attributes map"),
        (_hash_ext({"a.b": 1}, {}), "bad Hash key"),
        (_hash_ext({"a": 1}, {"b": {"x": 1}}), "attributes for Hash key 'b'"),
        (_hash_ext({"a": 1}, {"a": 5}), "attributes for Hash key 'a'"),
        (msgpack.ExtType(3, b"\xc1"), "malformed Hash"),
        (msgpack.ExtType(4, b"\xc1"), "."),
    ],
)
def test_malformed_hashes_in_items_raise_decode_error(ext: msgpack.ExtType, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        unpack_header(Frame(msgpack.packb({"k": "d", "d": ext}), []))


def test_hashes_nested_too_deep_are_refused_both_ways() -> None:
    deep = Hash(leaf=1)
    for _ in range(40):
        deep = Hash(inner=deep)
    with pytest.raises(EncodeError, match="nest deeper"):
        ItemEncoder().encode(deep)
    ext = _hash_ext({"leaf": 1}, {})
    for _ in range(40):
        ext = _hash_ext({"inner": ext}, {})
    with pytest.raises(DecodeError, match="nest deeper"):
        unpack_header(Frame(msgpack.packb({"k": "d", "d": ext}), []))


@given(seconds=st.integers(0, 2**40), fraction=st.integers(0, 10**18 - 1), train=st.integers(0, 2**63 - 1))
def test_item_meta_keeps_exact_timestamps(seconds: int, fraction: int, train: int) -> None:
    meta = ItemMeta("cam:output", Timestamp(seconds, fraction, train), train)
    back = ItemMeta.from_wire(msgpack.unpackb(msgpack.packb(meta.to_wire())))
    assert back == meta and isinstance(back.timestamp, Timestamp) and back.timestamp.train_id == train
    assert ItemMeta.from_wire(["a:b", 1.5, 3]) == ItemMeta("a:b", 1.5, 3)
    with pytest.raises(DecodeError, match="attoseconds"):
        ItemMeta.from_wire(["a:b", [1, 2, 3], 3])
