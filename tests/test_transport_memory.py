"""The in-process broker keeps RabbitMQ's routing semantics."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from karabo_async.errors import BrokerUnavailable, QueueLocked
from karabo_async.transport.memory import MemoryTransport, topic_matches
from karabo_async.wire import Kind, Message

words = st.sampled_from(["a", "b", "c", "dd"])


@pytest.mark.parametrize(
    ("binding", "key", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("#.c", "a.b.c", True),
        ("#.c", "c", True),
        ("#.c", "a.b", False),
        ("*.b.#", "a.b", True),
        ("*", "a.b", False),
        ("#", "", True),
        ("a.#.c", "a.c", True),
        ("a.#.c", "a.x.y.c", True),
    ],
)
def test_topic_matching(binding: str, key: str, expected: bool) -> None:
    assert topic_matches(binding, key) is expected


@given(st.lists(words, min_size=1, max_size=5))
def test_exact_binding_and_hash_always_match(parts: list[str]) -> None:
    key = ".".join(parts)
    assert topic_matches(key, key)
    assert topic_matches("#", key)
    assert topic_matches(parts[0] + ".#", key)
    assert topic_matches("#." + parts[-1], key)
    assert topic_matches(".".join("*" for _ in parts), key)
    assert not topic_matches(".".join("*" for _ in parts) + ".*", key)


def msg(name: str = "s", deadline: float | None = None) -> Message:
    return Message(Kind.CALL, "alice", "bob", name, body=b"\x90", deadline=deadline)


async def transport() -> MemoryTransport:
    t = MemoryTransport(f"memory://{uuid.uuid4().hex}", name="t")
    await t.connect()
    return t


async def test_exclusive_queue_locked_for_other_connections_and_freed_on_close() -> None:
    a = await transport()
    b = MemoryTransport(a.url, name="b")
    await b.connect()
    await a.declare_queue("q", exclusive=True)
    with pytest.raises(QueueLocked):
        await b.declare_queue("q", exclusive=True)
    await a.close()
    await b.declare_queue("q", exclusive=True)  # the owner's close released it


async def test_alternate_exchange_gets_unroutable() -> None:
    t = await transport()
    await t.declare_exchange("ret")
    await t.declare_exchange("x", alternate="ret")
    await t.declare_queue("back")
    await t.bind("back", "ret", "#")
    got: asyncio.Queue[Message] = asyncio.Queue()
    await t.consume("back", got.put_nowait)
    await t.publish("x", "nobody.s.alice", msg())
    returned = await asyncio.wait_for(got.get(), 1)
    assert returned.routing_key == "nobody.s.alice"


async def test_bounded_queue_dead_letters_oldest_and_expired() -> None:
    t = await transport()
    await t.declare_exchange("dlx")
    await t.declare_exchange("x")
    await t.declare_queue("q", max_length=2, dead_letter_exchange="dlx")
    await t.bind("q", "x", "#")
    await t.declare_queue("dead")
    await t.bind("dead", "dlx", "#")
    dead: asyncio.Queue[Message] = asyncio.Queue()
    await t.consume("dead", dead.put_nowait)
    for name in ("m1", "m2", "m3"):
        await t.publish("x", "k", msg(name))
    first = await asyncio.wait_for(dead.get(), 1)
    assert (first.name, first.death_reason) == ("m1", "maxlen")
    live: asyncio.Queue[Message] = asyncio.Queue()
    await t.publish("x", "k", msg("old", deadline=time.time() - 1))  # pushes m2 out, and is expired itself
    await t.consume("q", live.put_nowait)
    names = [(await asyncio.wait_for(live.get(), 1)).name for _ in range(1)]
    assert names == ["m3"]
    reasons = {(m.name, m.death_reason) for m in [await dead.get(), await dead.get()]}
    assert reasons == {("m2", "maxlen"), ("old", "expired")}


async def test_closed_transport_refuses_publish() -> None:
    t = await transport()
    await t.declare_exchange("x")
    await t.close()
    with pytest.raises(BrokerUnavailable):
        await t.publish("x", "k", msg())
