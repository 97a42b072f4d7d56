"""Acceptance scenarios of issue 2 (messaging core), written from the issue's words.

Hash, Timestamp, the codec, SignalSlotable (on the in-process broker and on RabbitMQ), heartbeats and
topology across processes, faults and bad input, and the repository set-up.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import struct
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import numpy as np
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import karabo_async
from karabo_async import (
    DecodeError,
    Hash,
    InstanceIdInUse,
    NoSuchInstance,
    NoSuchSlot,
    RemoteError,
    RequestTimeout,
    SignalSlotable,
    Timestamp,
    codec,
)

REPO = Path(__file__).resolve().parents[2]


# ==================================================================================================
# helpers
# ==================================================================================================


@pytest.fixture(params=["memory", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> str:
    """The same scenario on the in-process broker and on real RabbitMQ."""
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return str(request.getfixturevalue("broker_url"))


async def until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


PEER = """
import asyncio, sys
from karabo_async import SignalSlotable

async def main() -> None:
    instance_id, broker, domain, interval = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    async with SignalSlotable(instance_id, broker=broker, domain=domain, heartbeat_interval=interval) as me:
        @me.slot
        def echo(value):
            return value

        @me.slot
        async def whoami():
            import os
            return os.getpid()

        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[..., Any]]:
    """Start SignalSlotable peers in processes of their own; killed at the end."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(
        instance_id: str, broker: str, domain: str, interval: float
    ) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PEER,
            instance_id,
            broker,
            domain,
            str(interval),
            stdout=subprocess.PIPE,
        )
        procs.append(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"ready", line
        return proc

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# ==================================================================================================
# Hash
# ==================================================================================================


def test_hash_nested_paths_and_attributes() -> None:
    h = Hash()
    h["a.b.c"] = 1
    assert h["a.b.c"] == 1
    assert isinstance(h["a"], Hash) and isinstance(h["a.b"], Hash)
    assert h["a"]["b"]["c"] == 1
    assert "a.b.c" in h and "a.x" not in h
    h.set_attribute("a.b", "unit", "mm")
    h.set_attribute("a.b.c", "unit", "mm")
    h.set_attribute("a.b.c", "min", 0)
    assert h.get_attributes("a.b") == {"unit": "mm"}
    assert h.get_attributes("a.b.c") == {"unit": "mm", "min": 0}
    assert h.get_attribute("a.b.c", "min") == 0
    with pytest.raises(KeyError, match=r"a\.nope"):
        h["a.nope"]
    with pytest.raises(KeyError):
        h.set_attribute("missing.path", "unit", "mm")


def test_hash_keeps_insertion_order_equality_and_dicts() -> None:
    h = Hash()
    for key in ["z", "a", "m", "b"]:
        h[key] = key.upper()
    assert list(h) == ["z", "a", "m", "b"]
    assert list(h.keys()) == ["z", "a", "m", "b"]
    assert list(h.values()) == ["Z", "A", "M", "B"]
    h["m"] = "changed"  # replacing keeps the position
    assert list(h) == ["z", "a", "m", "b"]

    plain = {"x": {"y": 1, "z": [1, 2]}, "s": "text"}
    from_plain = Hash.from_dict(plain)
    assert isinstance(from_plain["x"], Hash)
    assert from_plain["x.y"] == 1
    assert from_plain.to_dict() == plain
    assert type(from_plain.to_dict()["x"]) is dict

    other = Hash.from_dict({"x": {"y": 1, "z": [1, 2]}, "s": "text"})
    assert from_plain == other
    other.set_attribute("x.y", "unit", "mm")
    assert from_plain != other  # attributes count for equality
    other2 = Hash.from_dict({"x": {"y": 2, "z": [1, 2]}, "s": "text"})
    assert from_plain != other2


hash_keys = st.text(
    st.characters(blacklist_characters=".", blacklist_categories=("Cs",)), min_size=1, max_size=8
)
leaf_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.binary(max_size=10),
)


@st.composite
def hashes(draw: st.DrawFn, depth: int = 0) -> Hash:
    h = Hash()
    for key in draw(st.lists(hash_keys, max_size=4, unique=True)):
        if depth < 2 and draw(st.booleans()):
            h[key] = draw(hashes(depth + 1))
        else:
            h[key] = draw(leaf_values)
        attrs = draw(st.dictionaries(hash_keys, leaf_values, max_size=2))
        for name, value in attrs.items():
            h.set_attribute(key, name, value)
    return h


@given(hashes())
def test_hash_dict_round_trip_and_copy(h: Hash) -> None:
    assert Hash.from_dict(h.to_dict()).to_dict() == h.to_dict()
    assert h.copy() == h


# ==================================================================================================
# Timestamp
# ==================================================================================================


def test_timestamp_fields_ordering_now_and_datetime() -> None:
    ts = Timestamp(1_700_000_000, 250_000_000_000_000_000, 42)
    assert (ts.seconds, ts.fraction, ts.train_id) == (1_700_000_000, 250_000_000_000_000_000, 42)
    assert Timestamp(seconds=1, fraction=2, train_id=3).fraction == 2
    assert ts.to_datetime() == datetime(2023, 11, 14, 22, 13, 20, 250_000, tzinfo=UTC)
    earlier = Timestamp(1_700_000_000, 1)
    later = Timestamp(1_700_000_000, 2)
    assert earlier < later and later > earlier and earlier <= later and not later < earlier
    assert sorted([later, earlier]) == [earlier, later]
    before = datetime.now(UTC)
    now = Timestamp.now()
    after = datetime.now(UTC)
    assert isinstance(now, Timestamp)
    assert before.replace(microsecond=0) <= now.to_datetime() <= after
    assert 0 <= now.fraction < 10**18
    with pytest.raises(ValueError):
        Timestamp(0, 10**18)  # the fraction is less than one second in attoseconds


# ==================================================================================================
# Codec
# ==================================================================================================

numeric_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"),
)
arrays = hnp.arrays(numeric_dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
timestamps = st.builds(
    Timestamp, st.integers(-(2**63), 2**63 - 1), st.integers(0, 10**18 - 1), st.integers(0, 2**64 - 1)
)


@st.composite
def hash_with_any_values(draw: st.DrawFn, children: st.SearchStrategy[Any]) -> Hash:
    h = Hash()
    for key in draw(st.lists(hash_keys, max_size=3, unique=True)):
        h[key] = draw(children)
        for name, value in draw(st.dictionaries(hash_keys, children, max_size=2)).items():
            h.set_attribute(key, name, value)
    return h


codec_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(),
        st.binary(),
        timestamps,
        arrays,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=5), children, max_size=4),
        hash_with_any_values(children),
    ),
    max_leaves=12,
)


def same(a: Any, b: Any) -> bool:
    """Exact equality: the same types, float bits, array dtype/shape/bytes, Hash order and attributes."""
    if type(a) is not type(b):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and same_array(a, b)
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, np.ndarray):
        return same_array(a, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, Hash):
        return (
            list(a) == list(b)
            and all(same(a[k], b[k]) for k in a)
            and all(same(a.get_attributes(k), b.get_attributes(k)) for k in a)
        )
    return bool(a == b)


def same_array(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(codec_values)
def test_codec_round_trip_is_exact(value: Any) -> None:
    assert same(codec.decode(codec.encode(value)), value)


def test_codec_edge_values() -> None:
    for value in [
        None,
        True,
        False,
        0,
        -(2**63),
        2**63 - 1,
        2**63,
        2**64 - 1,
        -0.0,
        math.inf,
        "ünïcode",
        b"\x00\xff",
        [],
        {},
        Hash(),
    ]:
        out = codec.decode(codec.encode(value))
        assert same(out, value), value
    with pytest.raises(karabo_async.EncodeError):
        codec.encode(2**64)
    with pytest.raises(karabo_async.EncodeError):
        codec.encode(-(2**63) - 1)


@pytest.mark.parametrize(
    "dtype",
    ["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16", ">i4", ">f8", "?"],
)
def test_codec_arrays_of_every_numeric_dtype(dtype: str) -> None:
    array = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    out = codec.decode(codec.encode(array))
    assert out.dtype == array.dtype and out.shape == (2, 3, 4)
    assert np.array_equal(out, array)
    nested = codec.decode(codec.encode({"h": Hash({"img": array}), "list": [array[0], array.T]}))
    assert np.array_equal(nested["h"]["img"], array)
    assert np.array_equal(nested["list"][1], array.T)


def test_codec_decodes_arrays_without_copying() -> None:
    array = np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000)
    data = codec.encode(Hash({"image": array}))
    start = np.frombuffer(data, np.uint8).__array_interface__["data"][0]
    out = codec.decode(data)["image"]
    address = out.__array_interface__["data"][0]
    # the decoded array's payload lies inside the received bytes: a view, not a copy
    assert start <= address and address + out.nbytes <= start + len(data)
    assert np.array_equal(out, array)


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_codec_undecodable_bytes_raise_decode_error_only(data: bytes) -> None:
    try:
        codec.decode(data)
    except DecodeError as exc:
        assert str(exc)
    # any other exception type fails the test


@settings(max_examples=200)
@given(codec_values, st.data())
def test_codec_corrupted_messages_raise_decode_error_only(value: Any, data: st.DataObject) -> None:
    raw = bytearray(codec.encode(value))
    if not raw:
        return
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        try:
            codec.decode(candidate)
        except DecodeError as exc:
            assert str(exc)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"\xc1", "invalid"),
        (b"\x92\x01", ""),  # truncated list
        (b"\x01\x02", "trailing"),
        (b"\xd4\x63\x00", "extension"),  # unknown extension type 99
        (b"", ""),
    ],
)
def test_codec_decode_error_says_what_was_wrong(data: bytes, words: str) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(data)
    assert str(info.value)
    assert words in str(info.value).lower()


@pytest.mark.parametrize("thing", ["text", None, 12, [b"\x90"]])
def test_codec_decode_of_a_non_buffer_is_a_decode_error(thing: Any) -> None:
    with pytest.raises(DecodeError):
        codec.decode(thing)


# ==================================================================================================
# SignalSlotable: the issue's example, on both backends
# ==================================================================================================


async def test_the_issue_example(broker: str, domain: str) -> None:
    async with (
        SignalSlotable("bob", broker=broker, domain=domain, heartbeat_interval=5.0) as bob,
        SignalSlotable("alice", broker=broker, domain=domain, heartbeat_interval=5.0) as alice,
    ):
        greeted: asyncio.Queue[str] = asyncio.Queue()
        replies: asyncio.Queue[str] = asyncio.Queue()
        changes: asyncio.Queue[Any] = asyncio.Queue()
        pings: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

        @bob.slot
        async def greet(name: str) -> str:
            greeted.put_nowait(name)
            return f"hello {name}"

        @alice.slot
        def on_reply(text: str) -> None:
            replies.put_nowait(text)

        @alice.slot
        async def on_changed(value: Any) -> None:
            changes.put_nowait(value)

        @bob.slot("ping_all")
        def bob_ping(value: int) -> None:
            pings.put_nowait(("bob", value))

        @alice.slot("ping_all")
        def alice_ping(value: int) -> None:
            pings.put_nowait(("alice", value))

        reply = await alice.request("bob", "greet", "x", timeout=2.0)
        assert reply == "hello x"
        assert await greeted.get() == "x"

        assert await alice.call("bob", "greet", "y") is None
        assert await asyncio.wait_for(greeted.get(), 5) == "y"

        assert await alice.request_no_wait("bob", "greet", "z", reply_slot="on_reply") is None
        assert await asyncio.wait_for(replies.get(), 5) == "hello z"

        await alice.connect("bob", "changed", "on_changed")
        await bob.emit("changed", {"v": 1})
        assert await asyncio.wait_for(changes.get(), 5) == {"v": 1}

        await alice.disconnect("bob", "changed", "on_changed")
        await alice.connect("bob", "marker", "on_changed")
        await bob.emit("changed", {"v": 2})  # nobody connected any more
        await bob.emit("marker", "after")
        assert await asyncio.wait_for(changes.get(), 5) == "after"
        assert changes.empty()

        await alice.broadcast("ping_all", 1)
        got = {await asyncio.wait_for(pings.get(), 5), await asyncio.wait_for(pings.get(), 5)}
        assert got == {("alice", 1), ("bob", 1)}

        assert "bob" in alice.topology and "alice" in alice.topology
        assert alice.topology["bob"]["type"] == "client"
        assert dict(alice.topology)["bob"]["pid"] == os.getpid()


async def test_variations_positional_arguments_self_requests_and_early_connections(
    broker: str, domain: str
) -> None:
    async with SignalSlotable("alice", broker, domain, 5.0) as alice:  # positional, as the signature reads
        got: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

        @alice.slot
        def on_changed(*args: Any) -> None:
            got.put_nowait(args)

        @alice.slot
        async def double(x: int) -> int:
            return 2 * x

        assert await alice.request("alice", "double", 21, timeout=5) == 42  # an instance may call itself
        with pytest.raises(NoSuchSlot):
            await alice.request_no_wait("alice", "double", 1, reply_slot="no_such_reply_slot")
        # connecting to a signal of an instance that does not exist yet works once it comes
        await alice.connect("bob", "changed", "on_changed")
        async with SignalSlotable("bob", broker, domain) as bob:
            await bob.emit("changed")
            await bob.emit("changed", 1, "two", [3])
            assert await asyncio.wait_for(got.get(), 5) == ()
            assert await asyncio.wait_for(got.get(), 5) == (1, "two", [3])
            assert dict(alice.topology).keys() >= {"alice", "bob"}
            assert alice.topology == dict(alice.topology)


async def test_slot_decorator_forms(broker: str, domain: str) -> None:
    async with (
        SignalSlotable("bob", broker=broker, domain=domain) as bob,
        SignalSlotable("alice", broker=broker, domain=domain) as alice,
    ):

        @bob.slot
        def plain(a: int, b: int) -> int:
            return a + b

        @bob.slot("renamed")
        async def some_function(a: int) -> int:
            await asyncio.sleep(0)
            return -a

        @bob.slot()
        def empty_parentheses() -> str:
            return "ok"

        assert plain(1, 2) == 3  # the decorator returns the function itself
        assert await alice.request("bob", "plain", 2, 3, timeout=5) == 5
        assert await alice.request("bob", "renamed", 4, timeout=5) == -4
        assert await alice.request("bob", "empty_parentheses", timeout=5) == "ok"
        with pytest.raises(NoSuchSlot):
            await alice.request("bob", "some_function", 4, timeout=5)


async def test_values_of_every_kind_travel_through_slots(broker: str, domain: str) -> None:
    async with (
        SignalSlotable("bob", broker=broker, domain=domain) as bob,
        SignalSlotable("alice", broker=broker, domain=domain) as alice,
    ):

        @bob.slot
        def echo(value: Any) -> Any:
            return value

        h = Hash({"a": 1})
        h["b.c"] = np.arange(6, dtype=">u2").reshape(2, 3)
        h.set_attribute("b.c", "unit", "counts")
        stamp = Timestamp.now(train_id=7)
        for value in [None, True, 2**64 - 1, -(2**63), 1.5, "s", b"\x00", [1, [2]], {"k": 1}, h, stamp]:
            assert same(await alice.request("bob", "echo", value, timeout=5), value)
        out = await alice.request("bob", "echo", np.eye(3, dtype="c16"), timeout=5)
        assert out.dtype == np.dtype("c16") and np.array_equal(out, np.eye(3))


async def test_calls_from_one_sender_are_dispatched_in_order_async_slots_run_concurrently(
    broker: str, domain: str
) -> None:
    async with (
        SignalSlotable("bob", broker=broker, domain=domain) as bob,
        SignalSlotable("alice", broker=broker, domain=domain) as alice,
    ):
        order: list[int] = []
        done = asyncio.Event()
        gate = asyncio.Event()

        @bob.slot
        async def record(i: int) -> None:
            order.append(i)
            if i == 299:
                done.set()
            await asyncio.sleep(0.001 * (i % 3))

        @bob.slot
        async def wait_for_gate() -> str:
            await gate.wait()
            return "through"

        @bob.slot
        async def open_gate() -> None:
            gate.set()

        for i in range(300):
            await alice.call("bob", "record", i)
        await asyncio.wait_for(done.wait(), 10)
        assert order == list(range(300))

        # the first request can only finish when the second one has run: they run concurrently
        first = asyncio.ensure_future(alice.request("bob", "wait_for_gate", timeout=5))
        await alice.request("bob", "open_gate", timeout=5)
        assert await first == "through"


async def test_errors(broker: str, domain: str) -> None:
    async with (
        SignalSlotable("bob", broker=broker, domain=domain) as bob,
        SignalSlotable("alice", broker=broker, domain=domain) as alice,
    ):

        @bob.slot
        def fail(text: str) -> None:
            raise ValueError(f"bad {text}")

        release = asyncio.Event()

        @bob.slot
        async def hang() -> None:
            await release.wait()

        # NoSuchInstance at once, not after the timeout
        started = time.monotonic()
        with pytest.raises(NoSuchInstance) as no_instance:
            await alice.request("nobody", "greet", "x", timeout=30)
        assert time.monotonic() - started < 2
        assert "nobody" in str(no_instance.value)

        with pytest.raises(NoSuchSlot) as no_slot:
            await alice.request("bob", "no_such", timeout=5)
        assert "no_such" in str(no_slot.value) and "bob" in str(no_slot.value)

        started = time.monotonic()
        with pytest.raises(RequestTimeout) as timeout:
            await alice.request("bob", "hang", timeout=0.3)
        assert 0.25 < time.monotonic() - started < 3
        assert isinstance(timeout.value, TimeoutError)
        text = str(timeout.value)
        assert "bob" in text and "hang" in text and "0.3" in text
        release.set()

        with pytest.raises(RemoteError) as remote:
            await alice.request("bob", "fail", "input", timeout=5)
        err = remote.value
        assert err.exc_type == "ValueError"
        assert "bad input" in err.message
        assert "Traceback" in err.traceback and "ValueError" in err.traceback and "fail" in err.traceback
        assert "ValueError" in str(err) and "bad input" in str(err)

        # none of that disturbed bob
        assert await alice.request("bob", "ping", 1, timeout=5) == 1


async def test_request_deadline_default_is_configurable_and_expired_requests_are_not_executed(
    broker: str, domain: str
) -> None:
    async with (
        SignalSlotable("bob", broker=broker, domain=domain) as bob,
        SignalSlotable("alice", broker=broker, domain=domain, request_timeout=0.3) as alice,
    ):
        executed: list[str] = []

        @bob.slot
        def hog() -> None:
            time.sleep(0.8)  # a slow sync slot: bob's loop is busy, later requests wait in line

        @bob.slot
        def record(what: str) -> str:
            executed.append(what)
            return what

        await alice.call("bob", "hog")
        with pytest.raises(RequestTimeout) as info:
            await alice.request("bob", "record", "late")  # default deadline 0.3 s
        assert info.value.seconds == pytest.approx(0.3)
        # the next request is served; the expired one was never executed
        assert await alice.request("bob", "record", "fresh", timeout=5) == "fresh"
        assert executed == ["fresh"]


async def test_instance_id_in_use_fails_fast_and_leaves_the_first_alone(broker: str, domain: str) -> None:
    async with (
        SignalSlotable("bob", broker=broker, domain=domain) as bob,
        SignalSlotable("alice", broker=broker, domain=domain) as alice,
    ):
        bob.register_slot(lambda: "first", "who")
        started = time.monotonic()
        with pytest.raises(InstanceIdInUse) as info:
            async with SignalSlotable("bob", broker=broker, domain=domain):
                pass
        assert time.monotonic() - started < 5
        assert "bob" in str(info.value)
        assert await alice.request("bob", "who", timeout=5) == "first"
        assert "bob" in alice.topology
        assert "bob" in bob.topology

    # at the same moment, exactly one of two wins
    contenders = [SignalSlotable("carol", broker=broker, domain=domain) for _ in range(2)]
    results = await asyncio.gather(*(c.start() for c in contenders), return_exceptions=True)
    try:
        assert sum(r is None for r in results) == 1
        assert sum(isinstance(r, InstanceIdInUse) for r in results) == 1
    finally:
        for c in contenders:
            await c.stop()


@pytest.mark.parametrize("good", ["a", "Bob_1", "lab/motor-2", "X-Y_z/0"])
def test_valid_instance_ids(good: str) -> None:
    assert SignalSlotable(good, broker="memory://ids").instance_id == good


@pytest.mark.parametrize("bad", ["a.b", "a b", "a*", "a#", "", "ä", "a:b", "a\n"])
def test_invalid_instance_ids_are_refused_clearly(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        SignalSlotable(bad, broker="memory://ids")
    assert isinstance(info.value, karabo_async.InvalidInstanceId)
    assert repr(bad) in str(info.value) or bad in str(info.value)


async def test_auto_generated_ids() -> None:
    import socket

    host = socket.gethostname().split(".")[0]
    pid = os.getpid()
    from karabo_async import Device, DeviceServer

    server = DeviceServer(broker="memory://autoid", entry_points=False)
    assert server.server_id == f"{host}_Server_{pid}"

    class AutoNamed(Device):
        pass

    first = AutoNamed(broker="memory://autoid")
    second = AutoNamed(broker="memory://autoid")
    pattern = rf"{re.escape(host)}-{pid}_AutoNamed_(\d+)"
    m1 = re.fullmatch(pattern, first.device_id)
    m2 = re.fullmatch(pattern, second.device_id)
    assert m1 and m2 and m1.group(1) != m2.group(1)
    assert SignalSlotable(broker="memory://autoid").instance_id.startswith(f"{host}-{pid}_")


async def test_broker_and_domain_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KARABO_BROKER", raising=False)
    monkeypatch.delenv("KARABO_DOMAIN", raising=False)
    plain = SignalSlotable("x")
    assert plain.broker == "amqp://guest:guest@localhost:5672/"
    assert plain.domain == "karabo"

    url = f"memory://{uuid.uuid4().hex}"
    monkeypatch.setenv("KARABO_BROKER", url)
    monkeypatch.setenv("KARABO_DOMAIN", "envdomain")
    async with SignalSlotable("bob") as bob, SignalSlotable("alice", broker=url, domain="envdomain") as alice:
        assert bob.broker == url and bob.domain == "envdomain"
        bob.register_slot(lambda: "env", "where")
        assert await alice.request("bob", "where", timeout=2) == "env"


async def test_domains_never_see_each_other(broker: str, domain: str) -> None:
    other = f"{domain}x"
    async with (
        SignalSlotable("bob", broker=broker, domain=domain) as bob,
        SignalSlotable("bob", broker=broker, domain=other) as other_bob,  # same id, other domain: fine
        SignalSlotable("alice", broker=broker, domain=domain) as alice,
    ):
        heard: list[str] = []
        bob.register_slot(lambda v: heard.append(f"bob:{v}"), "hello")
        other_bob.register_slot(lambda v: heard.append(f"other:{v}"), "hello")
        bob.register_slot(lambda: domain, "which")
        other_bob.register_slot(lambda: other, "which")
        assert await alice.request("bob", "which", timeout=5) == domain
        assert "alice" not in other_bob.topology and "bob" in alice.topology
        assert set(other_bob.topology) == {"bob"}
        await alice.broadcast("hello", 1)
        await until(lambda: heard == ["bob:1"])
        await alice.request("bob", "ping", timeout=5)  # the broadcast had time to reach the other domain
        assert heard == ["bob:1"]


async def test_memory_broker_has_bounded_queues_and_returns() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    async with (
        SignalSlotable("bob", broker=url, domain="d", queue_max_length=10) as bob,
        SignalSlotable("alice", broker=url, domain="d") as alice,
    ):
        bob.register_slot(lambda i: None, "record")
        for i in range(50):  # no await yields to the loop in between: bob's queue overflows
            await alice.call("bob", "record", i)
        await until(lambda: alice.returned_calls == 40)
        await alice.call("nobody", "record", 1)
        await until(lambda: alice.returned_calls == 41)


async def test_no_slot_exception_ever_stops_an_instance(broker: str, domain: str) -> None:
    async with (
        SignalSlotable("bob", broker=broker, domain=domain) as bob,
        SignalSlotable("alice", broker=broker, domain=domain) as alice,
    ):
        raised: list[str] = []

        def boom(*args: Any) -> None:
            raised.append("sync")
            raise RuntimeError("boom")

        async def aboom(*args: Any) -> None:
            raised.append("async")
            raise KeyError("aboom")

        bob.register_slot(boom, "boom")
        bob.register_slot(aboom, "aboom")
        bob.register_slot(boom, "on_sig")
        bob.register_slot(aboom, "on_asig")
        alice.register_slot(boom, "bad_reply_slot")
        await bob.connect("alice", "sig", "on_sig")
        await bob.connect("alice", "sig", "on_asig")
        await alice.call("bob", "boom")
        await alice.call("bob", "aboom")
        await alice.emit("sig", 1)
        await alice.broadcast("boom", 1)
        await alice.request_no_wait("bob", "ping", 3, reply_slot="bad_reply_slot")
        await alice.call("bob", "boom", "wrong", "number", "of", "args", "for", "ping")
        await alice.call("bob", "ping", 1, 2, 3)
        for slot in ("boom", "aboom"):
            with pytest.raises(RemoteError):
                await alice.request("bob", slot, timeout=5)
        await until(lambda: len(raised) >= 9)
        with pytest.raises(RemoteError) as info:
            await alice.request("bob", "boom", "too", "many", timeout=5)
        assert info.value.exc_type == "RuntimeError"

        def leave() -> None:
            sys.exit(3)  # one slot's exit must not end the process that hosts the instance

        bob.register_slot(leave, "leave")
        await alice.call("bob", "leave")
        with pytest.raises(RemoteError) as info:
            await alice.request("bob", "leave", timeout=5)
        assert info.value.exc_type == "SystemExit"
        assert await alice.request("bob", "ping", "still here", timeout=5) == "still here"
        assert await bob.request("alice", "ping", "me too", timeout=5) == "me too"


# ==================================================================================================
# Heartbeats and topology
# ==================================================================================================


async def test_topology_events_as_callbacks_and_async_iterator(broker: str, domain: str) -> None:
    async with SignalSlotable("alice", broker=broker, domain=domain, heartbeat_interval=30) as alice:
        seen: list[tuple[str, str]] = []
        alice.on_instance_new(lambda iid, info: seen.append(("instance_new", iid)))
        alice.on_instance_updated(lambda iid, info: seen.append(("instance_updated", iid)))
        alice.on_instance_gone(lambda iid, info: seen.append(("instance_gone", iid)))
        events = alice.topology_events()
        bob = SignalSlotable("bob", broker=broker, domain=domain, heartbeat_interval=30)
        async with bob:
            event = await asyncio.wait_for(anext(events), 5)
            assert (event.kind, event.instance_id) == ("instance_new", "bob")
            assert event.info["type"] == "client"
            await bob.update_info(status="busy")
            event = await asyncio.wait_for(anext(events), 5)
            assert (event.kind, event.instance_id) == ("instance_updated", "bob")
            assert alice.topology["bob"]["status"] == "busy"
        # a clean shutdown is reported at once (heartbeats are 30 s apart)
        event = await asyncio.wait_for(anext(events), 5)
        assert (event.kind, event.instance_id) == ("instance_gone", "bob")
        assert "bob" not in alice.topology
        assert seen == [("instance_new", "bob"), ("instance_updated", "bob"), ("instance_gone", "bob")]
        await events.aclose()


async def test_newcomer_learns_topology_at_start_and_info_fields(broker: str, domain: str) -> None:
    async with (
        SignalSlotable("bob", broker=broker, domain=domain, heartbeat_interval=60) as bob,
        SignalSlotable("alice", broker=broker, domain=domain, heartbeat_interval=60) as alice,
    ):
        # alice starts once bob is online; no heartbeat of bob's is due for a minute: she asked at start
        assert "bob" in alice.topology
        info = alice.topology["bob"]
        for field in ("type", "class", "server", "host", "pid", "status", "heartbeat_interval", "version"):
            assert field in info, field
        assert info["type"] == "client"
        assert info["pid"] == os.getpid()
        assert info["heartbeat_interval"] == 60
        assert info["version"] == karabo_async.__version__
        await until(lambda: "alice" in bob.topology)


def test_default_heartbeat_interval_is_5_seconds() -> None:
    ss = SignalSlotable("x", broker="memory://hb")
    assert ss.instance_info()["heartbeat_interval"] == 5.0


@pytest.mark.rabbitmq
async def test_heartbeats_on_their_exchange_at_the_configured_interval(broker_url: str, domain: str) -> None:
    async with SignalSlotable("alice", broker=broker_url, domain=domain, heartbeat_interval=0.2):
        connection = await aio_pika.connect(broker_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(f"{domain}.heartbeats", "heartbeat.*")
            stamps: list[float] = []
            async with queue.iterator() as it:
                async for message in it:
                    await message.ack()
                    assert message.type == "heartbeat"
                    assert message.content_type == "application/msgpack"
                    assert message.headers["sender"] == "alice"
                    body = codec.decode(message.body)
                    assert body["interval"] == 0.2
                    stamps.append(time.monotonic())
                    if len(stamps) == 6:
                        break
    period = (stamps[-1] - stamps[0]) / 5
    assert 0.1 < period < 0.5


@pytest.mark.rabbitmq
async def test_processes_find_each_other_and_sigkill_is_noticed_within_three_intervals(
    broker_url: str, domain: str, spawn: Callable[..., Any]
) -> None:
    interval = 1.0
    async with SignalSlotable("watcher", broker=broker_url, domain=domain, heartbeat_interval=interval) as me:
        proc = await spawn("victim", broker_url, domain, interval)
        await me.topology.wait_for("victim", timeout=10)
        assert me.topology["victim"]["pid"] == proc.pid
        assert await me.request("victim", "whoami", timeout=5) == proc.pid
        # a second process with a live id fails fast; the first is undisturbed
        with pytest.raises(InstanceIdInUse):
            await SignalSlotable("victim", broker=broker_url, domain=domain).start()
        assert await me.request("victim", "echo", [1, "two"], timeout=5) == [1, "two"]

        gone = asyncio.Event()
        me.on_instance_gone(lambda iid, info: gone.set() if iid == "victim" else None)
        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(gone.wait(), 10)
        assert time.monotonic() - killed < 3 * interval
        with pytest.raises(NoSuchInstance):
            await me.request("victim", "echo", 1, timeout=10)


@pytest.mark.rabbitmq
async def test_heartbeats_handled_ahead_of_5000_slow_slot_calls(
    broker_url: str, domain: str, spawn: Callable[..., Any]
) -> None:
    interval = 0.3
    async with (
        SignalSlotable("tracker", broker=broker_url, domain=domain, heartbeat_interval=interval) as tracker,
        SignalSlotable("flooder", broker=broker_url, domain=domain, heartbeat_interval=30) as flooder,
    ):
        await spawn("alive", broker_url, domain, interval)
        await tracker.topology.wait_for("alive", timeout=10)
        gone: list[str] = []
        tracker.on_instance_gone(lambda iid, info: gone.append(iid))
        handled = 0
        done = asyncio.Event()

        @tracker.slot
        def slow(i: int) -> None:
            nonlocal handled
            time.sleep(0.0003)  # slow, blocking slot work: 5,000 of them take 1.5 s or more
            handled += 1
            if handled == 5000:
                done.set()

        started = time.monotonic()
        for i in range(5000):
            await flooder.call("tracker", "slow", i)
        await asyncio.wait_for(done.wait(), 60)
        assert time.monotonic() - started > 4 * interval  # the flood outlasted the liveness limit
        assert gone == []
        assert "alive" in tracker.topology
        assert await tracker.request("alive", "echo", 1, timeout=5) == 1


# ==================================================================================================
# Readable messages on RabbitMQ
# ==================================================================================================


@pytest.mark.rabbitmq
async def test_messages_carry_readable_properties_and_headers(broker_url: str, domain: str) -> None:
    async with (
        SignalSlotable("bob", broker=broker_url, domain=domain) as bob,
        SignalSlotable("alice", broker=broker_url, domain=domain) as alice,
    ):
        bob.register_slot(lambda name: f"hello {name}", "greet")
        connection = await aio_pika.connect(broker_url)
        async with connection:
            channel = await connection.channel()
            spy = await channel.declare_queue(exclusive=True, auto_delete=True)
            await spy.bind(f"{domain}.slots", "bob.#")  # harmless while bob lives
            await spy.bind(f"{domain}.replies", "#")
            await spy.bind(f"{domain}.signals", "#")
            await spy.bind(f"{domain}.broadcast", "#")
            got: dict[str, aio_pika.abc.AbstractIncomingMessage] = {}
            assert await alice.request("bob", "greet", "x", timeout=5) == "hello x"
            await alice.call("bob", "greet", "y")
            await bob.emit("changed", 1)
            await alice.broadcast("ping_all", 2)
            async with spy.iterator() as it:
                async for message in it:
                    await message.ack()
                    assert message.type is not None
                    got[message.type] = message
                    if len(got) == 5:
                        break
        assert set(got) == {"request", "reply", "call", "signal", "broadcast"}
        for message in got.values():
            assert message.content_type == "application/msgpack"
            assert message.timestamp is not None
            assert message.headers["user"]
            assert message.headers["sender"] in ("alice", "bob")
        request, reply = got["request"], got["reply"]
        assert request.headers["sender"] == "alice" and request.headers["target"] == "bob"
        assert request.headers["slot"] == "greet"
        assert request.correlation_id and request.reply_to == "alice"
        assert codec.decode(request.body) == ["x"]
        assert reply.correlation_id == request.correlation_id
        assert reply.headers["sender"] == "bob" and reply.headers["target"] == "alice"
        assert codec.decode(reply.body) == "hello x"
        assert got["call"].headers["slot"] == "greet" and codec.decode(got["call"].body) == ["y"]
        assert got["signal"].headers["signal"] == "changed" and got["signal"].headers["sender"] == "bob"
        assert got["broadcast"].headers["slot"] == "ping_all"
        assert abs(request.timestamp.timestamp() - time.time()) < 60  # type: ignore[union-attr]


# ==================================================================================================
# Faults and bad input
# ==================================================================================================


@pytest.mark.rabbitmq
async def test_garbage_in_an_instance_queue_is_logged_and_dropped(broker_url: str, domain: str) -> None:
    async with (
        SignalSlotable("bob", broker=broker_url, domain=domain) as bob,
        SignalSlotable("alice", broker=broker_url, domain=domain) as alice,
    ):
        bob.register_slot(lambda v: v, "echo")
        bob.hub.transport.max_message_size = 100_000
        headers = {"kind": "request", "sender": "mallory", "target": "bob", "slot": "echo"}
        bad = [
            aio_pika.Message(b"\x00\xff\xfe garbage"),  # no headers
            aio_pika.Message(
                b"\x91\x01", headers={"kind": "teleport", "sender": "m", "target": "bob", "slot": "echo"}
            ),
            aio_pika.Message(b"\x91\x01", headers={"kind": "call"}),  # missing headers
            aio_pika.Message(b"\x91\x01", headers={**headers, "sender": 12}),  # wrong type
            aio_pika.Message(b"\xc1\xc1\xc1", headers=headers, correlation_id="c1", reply_to="mallory"),
            aio_pika.Message(b"\x01", headers=headers),  # arguments that are not a list
            aio_pika.Message(b"\x91\x01", headers={**headers, "deadline": "tomorrow"}),
            aio_pika.Message(b"\x90" * 200_000, headers=headers),  # oversize
            aio_pika.Message(b"\x91\x01", headers={**headers, "kind": "reply"}, correlation_id="unknown"),
        ]
        with structlog.testing.capture_logs() as logs:
            connection = await aio_pika.connect(broker_url)
            async with connection:
                channel = await connection.channel()
                for message in bad:
                    await channel.default_exchange.publish(message, routing_key=f"{domain}.instance.bob")
                # bob keeps serving
                assert await alice.request("bob", "echo", 42, timeout=5) == 42
        text = " ".join(str(entry) for entry in logs)
        assert "malformed" in text and "oversize" in text
        assert len([e for e in logs if e.get("log_level") in ("warning", "error", "info")]) >= 5


@pytest.mark.slow
@pytest.mark.rabbitmq
async def test_broker_restart_needs_no_process_restart(private_broker: Any, domain: str) -> None:
    url = private_broker.url
    async with (
        SignalSlotable("bob", broker=url, domain=domain, heartbeat_interval=0.5) as bob,
        SignalSlotable("alice", broker=url, domain=domain, heartbeat_interval=0.5) as alice,
    ):
        bob.register_slot(lambda v: v, "echo")
        signals: asyncio.Queue[Any] = asyncio.Queue()
        alice.register_slot(signals.put_nowait, "on_changed")
        await alice.connect("bob", "changed", "on_changed")
        entered = asyncio.Event()
        release = asyncio.Event()

        @bob.slot
        async def hang() -> None:
            entered.set()
            await release.wait()

        in_flight = asyncio.ensure_future(alice.request("bob", "hang", timeout=120))
        await asyncio.wait_for(entered.wait(), 5)
        await asyncio.to_thread(private_broker.stop_app)
        # the request in flight fails with a clear error, it does not hang until its 120 s deadline
        with pytest.raises(karabo_async.BrokerUnavailable) as info:
            await asyncio.wait_for(in_flight, 15)
        assert "broker" in str(info.value).lower()
        release.set()
        await asyncio.to_thread(private_broker.start_app)
        back = time.monotonic()
        while True:
            try:
                assert await alice.request("bob", "echo", 1, timeout=1) == 1
                break
            except (karabo_async.BrokerUnavailable, TimeoutError, NoSuchInstance):
                assert time.monotonic() - back < 10, "calls did not work again within 10 s"
                await asyncio.sleep(0.1)
        await bob.emit("changed", "again")
        assert await asyncio.wait_for(signals.get(), 10) == "again"
        await alice.topology.wait_for("bob", timeout=10)
        await bob.topology.wait_for("alice", timeout=10)
        # heartbeats flow again: nobody is declared gone over several intervals
        gone: list[str] = []
        alice.on_instance_gone(lambda iid, info: gone.append(iid))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            await alice.request("bob", "echo", 1, timeout=2)
            await asyncio.sleep(0.2)
        assert gone == []


@pytest.mark.rabbitmq
async def test_instance_queues_are_bounded_and_configurable(private_broker: Any, domain: str) -> None:
    url = private_broker.url
    async with (
        SignalSlotable("bob", broker=url, domain=domain, queue_max_length=77, queue_ttl=9),
        SignalSlotable("carol", broker=url, domain=domain),
    ):
        out = await asyncio.to_thread(private_broker.ctl, "list_queues", "name", "arguments")
    bob = next(row for row in out.splitlines() if row.startswith(f"{domain}.instance.bob"))
    assert "x-max-length" in bob and "77" in bob
    assert "x-message-ttl" in bob and "9000" in bob
    carol = next(row for row in out.splitlines() if row.startswith(f"{domain}.instance.carol"))
    assert "x-max-length" in carol and "x-message-ttl" in carol  # bounded by default too


# ==================================================================================================
# Repository and set-up
# ==================================================================================================


def test_pyproject_declares_the_package_and_its_extras() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    meta = project["project"]
    assert meta["name"] == "karabo-async"
    assert ">=3.11" in meta["requires-python"]
    deps = " ".join(meta["dependencies"]).lower()
    for name in ("aio-pika", "msgpack", "pydantic", "structlog", "uvloop"):
        assert name in deps, name
    dev = " ".join(meta["optional-dependencies"]["dev"]).lower()
    for name in ("pytest", "pytest-asyncio", "pytest-timeout", "hypothesis", "ruff", "mypy", "import-linter"):
        assert name in dev, name
    contracts = project["tool"]["importlinter"]["contracts"]
    assert any(c["type"] == "layers" for c in contracts)
    for folder in ("karabo_async", "broker", "tests", "bench", "docs"):
        assert (REPO / folder).is_dir(), folder
    assert (REPO / "Makefile").is_file()


def test_readme_quick_start_make_targets_and_ci() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    test_recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "pytest" in test_recipe
    assert "check" in test_recipe  # ruff, mypy and import-linter run before the tests
    check_recipe = makefile.split("\ncheck:", 1)[1].split("\n\n", 1)[0]
    assert "ruff" in check_recipe and "mypy" in check_recipe and "lint-imports" in check_recipe
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci


def test_broker_folder_has_plugins_definitions_and_start_script() -> None:
    plugins = (REPO / "broker" / "enabled_plugins").read_text()
    assert "rabbitmq_management" in plugins
    import json

    definitions = json.loads((REPO / "broker" / "definitions.json").read_text())
    for key in ("vhosts", "users", "permissions", "policies"):
        assert definitions[key], key
    assert any("instance" in p["pattern"] for p in definitions["policies"])
    script = REPO / "broker" / "local_node.py"
    result = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0
    assert "ensure" in result.stdout and "start" in result.stdout
    # the test suite starts its private node with the same script
    import broker_support

    assert Path(broker_support.local_node.__file__).resolve() == script.resolve()


def test_protocol_doc_matches_the_code() -> None:
    from karabo_async.wire import CONTENT_TYPE, Kind, Names

    doc = (REPO / "docs" / "protocol.md").read_text()
    n = Names("lab")
    for exchange in (n.slots, n.signals, n.broadcast, n.replies, n.heartbeats, n.returns):
        assert "`<domain>." + exchange.split(".", 1)[1] + "`" in doc, exchange
    for kind in Kind:
        assert f"`{kind.value}`" in doc, kind
    assert CONTENT_TYPE in doc
    for header in ("kind", "sender", "target", "slot", "signal", "user", "deadline", "error"):
        assert f"`{header}`" in doc, header
    for prop in ("content_type", "correlation_id", "reply_to", "timestamp"):
        assert f"`{prop}`" in doc, prop
    assert "<domain>.instance.<id>" in doc
    assert Names.call_key("<target>", "<slot>", "<sender>") in doc
