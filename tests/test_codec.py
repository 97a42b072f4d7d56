"""codec: exact round trips, zero-copy arrays, and clear errors for anything else."""

from __future__ import annotations

import enum
import math
import struct
import threading
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from karabo_async import Hash, Timestamp
from karabo_async.codec import ALIGNMENT, MAX_HASH_DEPTH, decode, encode, encode_parts
from karabo_async.errors import DecodeError, EncodeError

# --- exact comparison: stricter than ==, so a round trip that changes a type or a bit fails ------


def assert_same(expected: Any, got: Any, path: str = "") -> None:
    where = path or "top level"
    if isinstance(expected, tuple):
        expected = list(expected)
    if isinstance(expected, np.ndarray):
        assert isinstance(got, np.ndarray), where
        assert got.dtype == expected.dtype and got.dtype.str == expected.dtype.str, where
        assert got.shape == expected.shape, where
        assert got.tobytes() == np.ascontiguousarray(expected).tobytes(), where
        return
    assert type(got) is type(expected), f"{where}: {type(expected)} became {type(got)}"
    if isinstance(expected, float):
        assert struct.pack(">d", got) == struct.pack(">d", expected), where  # NaN and -0.0 too
    elif isinstance(expected, complex):
        assert struct.pack(">dd", got.real, got.imag) == struct.pack(">dd", expected.real, expected.imag)
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            assert_same(e, g, f"{path}[{i}]")
    elif isinstance(expected, dict):
        assert list(got) == list(expected), where
        for key in expected:
            assert_same(expected[key], got[key], f"{path}.{key}")
    elif isinstance(expected, Hash):
        assert list(got) == list(expected), f"{where}: key order"
        for key in expected:
            assert_same(expected[key], got[key], f"{path}.{key}")
            e_attrs, g_attrs = expected.get_attributes(key), got.get_attributes(key)
            assert list(g_attrs) == list(e_attrs), f"{path}.{key} attribute names"
            for name in e_attrs:
                assert_same(e_attrs[name], g_attrs[name], f"{path}.{key}@{name}")
    else:
        assert got == expected, where


# --- strategies -----------------------------------------------------------------------------------

dtypes = st.sampled_from(
    [
        "?",
        "i1",
        "u1",
        "<i2",
        ">i2",
        "<u2",
        "<i4",
        ">u4",
        "<i8",
        ">i8",
        "<u8",
        "<f2",
        ">f4",
        "<f8",
        ">f8",
        "<c8",
        ">c16",
        "<c16",
    ]
)
arrays = dtypes.flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
)
timestamps = st.builds(
    Timestamp, st.integers(-(2**63), 2**63 - 1), st.integers(0, 10**18 - 1), st.integers(0, 2**64 - 1)
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.complex_numbers()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | timestamps
)
keys = st.text(st.characters(blacklist_characters=".", blacklist_categories=["Cs"]), min_size=1, max_size=6)


@st.composite
def hashes(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> Hash:
    h = Hash()
    for key in draw(st.lists(keys, unique=True, max_size=5)):
        h[key] = draw(children)
        attributes = draw(st.dictionaries(keys, scalars | arrays, max_size=2))
        if attributes:
            h.set_attributes(key, attributes)
    return h


values = st.recursive(
    scalars | arrays,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(keys | st.integers(-5, 5), children, max_size=4)
        | hashes(children)
    ),
    max_leaves=12,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_round_trip_is_exact(value: Any) -> None:
    assert_same(value, decode(encode(value)))


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(hashes(values))
def test_round_trip_of_hashes_with_attributes_and_arrays(h: Hash) -> None:
    data = encode(h)
    back = decode(data)
    assert_same(h, back)
    assert b"".join(encode_parts(h)) == data
    assert decode(bytearray(data)) is not None and decode(memoryview(data)) is not None


def test_nested_hash_with_attributes_round_trip() -> None:
    h = Hash()
    h["detector.image"] = np.arange(12, dtype=">u2").reshape(3, 4)
    h["detector.mode"] = "fast"
    h["motor.position"] = 1.5
    h.set_attribute("motor.position", "unit", "mm")
    h.set_attribute("motor.position", "stamp", Timestamp(1714564800, 25, train_id=9))
    h.set_attribute("detector.image", "roi", np.array([0, 0, 2, 2]))
    h["runs"] = [Hash(id=1), Hash(id=2)]
    back = decode(encode(h))
    assert back == h
    assert back.paths() == h.paths()
    assert back.get_attribute("motor.position", "stamp").train_id == 9


# --- normalisations documented in the module ------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def test_documented_normalisations() -> None:
    assert decode(encode((1, (2, 3)))) == [1, [2, 3]]
    assert decode(encode(bytearray(b"ab"))) == b"ab"
    assert decode(encode(memoryview(b"ab"))) == b"ab"
    assert decode(encode([Colour.RED, Level.HIGH])) == ["red", 3]
    back = decode(encode([np.bool_(True), np.int8(-3), np.uint64(2**64 - 1), np.float32(1.5)]))
    assert back == [True, -3, 2**64 - 1, 1.5]
    assert [type(v) for v in back] == [bool, int, int, float]
    assert decode(encode(np.complex64(1 + 2j))) == 1 + 2j
    assert decode(encode({1: "int key", "s": "str key"})) == {1: "int key", "s": "str key"}


def test_int_range_limits() -> None:
    assert decode(encode([-(2**63), 2**64 - 1])) == [-(2**63), 2**64 - 1]
    for too_big in (2**64, -(2**63) - 1):
        with pytest.raises(EncodeError, match=r"outside -2\*\*63"):
            encode({"deep": [too_big]})


# --- arrays ---------------------------------------------------------------------------------------


def test_decoded_arrays_are_read_only_views_into_the_input() -> None:
    image = np.arange(1024 * 256, dtype=np.float64).reshape(256, 1024)
    data = bytearray(encode(Hash(image=image, other=np.arange(5, dtype=np.int16))))
    back = decode(data)
    decoded = back["image"]
    assert not decoded.flags.writeable
    assert np.shares_memory(decoded, np.frombuffer(data, np.uint8))
    start = decoded.__array_interface__["data"][0]
    base = np.frombuffer(data, np.uint8).__array_interface__["data"][0]
    assert base <= start and start + decoded.nbytes <= base + len(data)
    assert (start - base) % ALIGNMENT == 0
    data[start - base] ^= 0xFF  # the view sees the input buffer change: it is not a copy
    assert decoded[0, 0] != 0.0
    with pytest.raises(ValueError, match="read-only"):
        decoded[0, 0] = 1


def test_encode_parts_hands_out_array_memory_uncopied() -> None:
    big = np.ones(100_000)
    small = np.arange(3, dtype=np.uint8)
    parts = encode_parts({"a": big, "b": small})
    views = [p for p in parts if isinstance(p, memoryview)]
    assert len(views) == 2
    assert np.shares_memory(np.frombuffer(views[0], np.uint8), big)
    assert np.shares_memory(np.frombuffer(views[1], np.uint8), small)
    assert b"".join(parts) == encode({"a": big, "b": small})
    assert encode_parts({"x": 1}) == [encode({"x": 1})]


def test_array_shapes_orders_and_layouts() -> None:
    fortran = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    strided = np.arange(20, dtype=np.int32)[::3]
    cases = [
        np.array(5, dtype=">i8"),  # 0-d
        np.zeros((0, 3), dtype=np.float32),  # empty
        np.zeros((2, 0)),
        fortran,
        strided,
        np.arange(4, dtype=">f8"),
        np.array([True, False]),
        np.array([1 + 2j], dtype=np.complex64),
    ]
    back = decode(encode(cases))
    for original, decoded in zip(cases, back, strict=True):
        assert_same(original, decoded)
        assert not decoded.flags.writeable
    assert back[5].dtype.byteorder == ">"


@pytest.mark.parametrize(
    "value",
    [
        np.array(["text"]),
        np.array([object()]),
        np.zeros(2, dtype="M8[s]"),
        np.ma.masked_array([1, 2], [False, True]),
    ],
)
def test_unsupported_arrays_rejected(value: Any) -> None:
    with pytest.raises(EncodeError, match="items"):
        encode({"items": [value]})


# --- encode errors name what and where -----------------------------------------------------------


def test_unencodable_values_named_with_their_path() -> None:
    h = Hash()
    h["a.b"] = [1, {"c": {1, 2}}]
    with pytest.raises(EncodeError, match=r"type set at a\.b\[1\]\.c"):
        encode(h)
    h2 = Hash(x=1)
    h2.set_attribute("x", "bad", object())
    with pytest.raises(EncodeError, match="object at x@bad"):
        encode(h2)
    with pytest.raises(EncodeError, match="top level"):
        encode(object())
    with pytest.raises(EncodeError, match=r"datetime"):
        encode({"when": Timestamp(0).to_datetime()})


def test_self_reference_and_depth_limits() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodeError):
        encode(loop)
    deep = Hash()
    node = deep
    for _ in range(MAX_HASH_DEPTH + 1):
        node["n"] = Hash()
        node = node["n"]
    with pytest.raises(EncodeError, match="deeper"):
        encode(deep)


def test_encoder_recovers_after_a_failure() -> None:
    with pytest.raises(EncodeError):
        encode([1, 2, object()])
    assert decode(encode({"k": [1, 2]})) == {"k": [1, 2]}


def test_threads_encode_concurrently() -> None:
    value = Hash(a=[Hash(b=i) for i in range(50)], t=Timestamp(5, 6, 7))
    expected = encode(value)
    failures: list[bytes] = []

    def work() -> None:
        for _ in range(300):
            data = encode(value)
            if data != expected:
                failures.append(data)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


# --- decode errors: always DecodeError, naming the problem -----------------------------------------


def _frame(doc: bytes, data: bytes, *, version: int = 1) -> bytes:
    head = struct.pack(">BbHHIQ", 0xD8, 75, version, 0, len(doc), len(data))
    start = -(-(len(head) + len(doc)) // ALIGNMENT) * ALIGNMENT
    return head + doc + bytes(start - len(head) - len(doc)) + data


def _array_ext(dtype: Any, shape: Any, offset: Any, nbytes: Any) -> msgpack.ExtType:
    return msgpack.ExtType(3, msgpack.packb([dtype, shape, offset, nbytes]))


def _hash_ext(payload: Any) -> msgpack.ExtType:
    return msgpack.ExtType(1, msgpack.packb(payload))


BAD_INPUTS = [
    (b"", "incomplete"),
    (b"\xc1", "invalid msgpack"),
    (b"\x92\x01", "incomplete"),
    (b"\x01\x02", "trailing"),
    (b"\x91" * 5000, "nested deeper"),
    (msgpack.packb(msgpack.ExtType(42, b"")), "unknown extension type 42"),
    (msgpack.packb([msgpack.Timestamp(1, 2)]), "extension type -1"),
    (msgpack.packb({"k": msgpack.ExtType(2, b"short")}), "timestamp extension of 5 bytes"),
    (msgpack.packb(msgpack.ExtType(2, struct.pack(">qQQ", 0, 10**18, 0))), "bad timestamp"),
    (msgpack.packb(msgpack.ExtType(4, b"xx")), "complex extension"),
    (msgpack.packb(_hash_ext({"a": 1})), r"\[values, attributes\] pair"),
    (msgpack.packb(_hash_ext([{"a.b": 1}, {}])), "contains '.'"),
    (msgpack.packb(_hash_ext([{1: 1}, {}])), "not a str"),
    (msgpack.packb(_hash_ext([{"": 1}, {}])), "empty"),
    (msgpack.packb(_hash_ext([{"a": 1}, {"b": {"u": 1}}])), "missing keys"),
    (msgpack.packb(_hash_ext([{"a": 1}, {"a": 5}])), "non-empty map"),
    (msgpack.packb(_hash_ext([{"a": 1}, {"a": {1: 2}}])), "names of Hash key"),
    (msgpack.packb(msgpack.ExtType(1, msgpack.packb([{}, {}]) + b"\x00")), "trailing bytes inside a Hash"),
    (msgpack.packb(_array_ext("<f8", [1], 0, 8)), "without a data section"),
    (msgpack.packb(msgpack.ExtType(75, b"")), "preamble found inside"),
    (msgpack.packb({b"\x00": [1]})[:1] + msgpack.packb([1]) + msgpack.packb(1), "unhashable"),
    (b"\xa2\xff\xfe", "utf-8"),
    (_frame(msgpack.packb(_array_ext("<f8", [2], 0, 16)), bytes(8)), "outside the data section"),
    (_frame(msgpack.packb(_array_ext("<f8", [2], 0, 16)), bytes(16))[:-1], "announces"),
    (_frame(msgpack.packb(_array_ext("<f8", [2], 0, 16)), bytes(16)) + b"x", "announces"),
    (_frame(msgpack.packb(_array_ext("<f8", [2], 8, 16)), bytes(16)), "outside the data section"),
    (_frame(msgpack.packb(_array_ext("<f8", [3], 0, 16)), bytes(16)), "is not 16 bytes"),
    (_frame(msgpack.packb(_array_ext("|O", [2], 0, 16)), bytes(16)), "unsupported dtype"),
    (_frame(msgpack.packb(_array_ext("<i1", [2], 0, 2)), bytes(16)), "unsupported dtype"),
    (_frame(msgpack.packb(_array_ext("<f8", [-2], 0, 16)), bytes(16)), "bad shape"),
    (_frame(msgpack.packb(_array_ext("<f8", "ab", 0, 16)), bytes(16)), "bad shape"),
    (_frame(msgpack.packb(_array_ext("<f8", [2], -1, 16)), bytes(16)), "bad offset"),
    (_frame(msgpack.packb(msgpack.ExtType(3, msgpack.packb([1, 2]))), b""), "array header is not"),
    (_frame(msgpack.packb([1]), b"", version=2), "version"),
    (_frame(msgpack.packb([1]) + b"\x01", b""), "inside the frame header"),
    (_frame(msgpack.packb([1]), b"")[:10], "preamble truncated"),
]


@pytest.mark.parametrize(("data", "message"), BAD_INPUTS, ids=[message for _, message in BAD_INPUTS])
def test_bad_input_raises_decode_error_saying_why(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(data)


def test_hash_nesting_limit_on_decode() -> None:
    payload = msgpack.packb([{}, {}])
    for _ in range(MAX_HASH_DEPTH + 1):
        payload = msgpack.packb([{"n": msgpack.ExtType(1, payload)}, {}])
    with pytest.raises(DecodeError, match="deeper"):
        decode(msgpack.packb(msgpack.ExtType(1, payload)))


def test_wrong_argument_type() -> None:
    with pytest.raises(DecodeError, match="got str"):
        decode("text")  # type: ignore[arg-type]


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_decode_error(data: bytes) -> None:
    try:
        decode(data)
    except DecodeError:
        pass


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    value = draw(st.sampled_from(_SAMPLES))
    data = bytearray(encode(value))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if not data:
            break
        index = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[index] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[index:]
        elif action == "insert":
            data[index:index] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[index]
    return bytes(data)


def _sample_hash() -> Hash:
    h = Hash(image=np.arange(6, dtype="<f4").reshape(2, 3), stamp=Timestamp(1, 2, 3))
    h["a.b"] = [Hash(c=1j), {"d": b"x"}]
    h.set_attribute("a.b", "unit", "mm")
    return h


_SAMPLES = [_sample_hash(), {"k": [1, 2.5, "s", None, True]}, [np.zeros(3), np.ones((2, 2), ">i2")]]


@settings(max_examples=500)
@given(mutated_encodings())
def test_mutated_encodings_decode_or_raise_decode_error(data: bytes) -> None:
    try:
        decode(data)
    except DecodeError:
        pass


def test_nan_and_signed_zero_survive() -> None:
    back = decode(encode([math.nan, -0.0, np.array([np.nan, -0.0])]))
    assert math.isnan(back[0]) and math.copysign(1, back[1]) < 0
    assert np.isnan(back[2][0]) and np.signbit(back[2][1])


def test_examples_in_wire_format_doc() -> None:
    h = Hash(x=1)
    h.set_attribute("x", "unit", "mm")
    assert encode(h).hex(" ") == "c7 11 01 92 81 a1 78 01 81 a1 78 81 a4 75 6e 69 74 a2 6d 6d"
    stamp = encode(Timestamp(1714564800, 25 * 10**16, 7))
    assert stamp == bytes.fromhex("c718020000000066322ec003782dace9d900000000000000000007")
    assert encode(1 + 2j) == bytes.fromhex("d8043ff00000000000004000000000000000")
    framed = encode({"img": np.arange(2, dtype="<u2")})
    assert framed[:18] == bytes.fromhex("d84b00010000000000110000000000000004")
    assert framed[18:35] == bytes.fromhex("81a3696d67c7090394a33c753291020004")
    assert framed[35:64] == bytes(29) and framed[64:] == bytes.fromhex("00000100")
