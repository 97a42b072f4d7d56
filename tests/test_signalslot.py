"""SignalSlotable on both backends: the same tests against the in-process broker and real RabbitMQ."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from karabo_async import (
    InstanceIdInUse,
    InvalidInstanceId,
    NoSuchInstance,
    NoSuchSlot,
    RemoteError,
    RequestTimeout,
    SignalSlotable,
)
from karabo_async.signalslot import generate_instance_id


@pytest.fixture(params=["memory", "amqp"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return str(request.getfixturevalue("broker_url"))


def make(url: str, domain: str, instance_id: str, **kw: object) -> SignalSlotable:
    return SignalSlotable(instance_id, broker=url, domain=domain, heartbeat_interval=kw.pop("hb", 1.0), **kw)  # type: ignore[arg-type]


async def test_request_reply_sync_and_async_slots(url: str, domain: str) -> None:
    async with make(url, domain, "bob") as bob, make(url, domain, "alice") as alice:

        @bob.slot
        async def greet(name: str) -> str:
            await asyncio.sleep(0)
            return f"hello {name}"

        @bob.slot("add")
        def add_numbers(a: int, b: int) -> int:
            return a + b

        assert await alice.request("bob", "greet", "x", timeout=5) == "hello x"
        assert await alice.request("bob", "add", 2, 3, timeout=5) == 5
        assert await alice.request("bob", "ping", 7, timeout=5) == 7


async def test_call_is_one_way_and_ordered(url: str, domain: str) -> None:
    async with make(url, domain, "bob") as bob, make(url, domain, "alice") as alice:
        seen: list[int] = []
        done = asyncio.Event()

        @bob.slot
        def record(i: int) -> None:
            seen.append(i)
            if i == 199:
                done.set()

        for i in range(200):
            await alice.call("bob", "record", i)
        await asyncio.wait_for(done.wait(), 10)
        assert seen == list(range(200))


async def test_async_slots_start_in_order_and_run_concurrently(url: str, domain: str) -> None:
    async with make(url, domain, "bob") as bob, make(url, domain, "alice") as alice:
        started: list[int] = []
        gate = asyncio.Event()

        @bob.slot
        async def work(i: int) -> int:
            started.append(i)
            if len(started) == 5:
                gate.set()
            await gate.wait()  # only returns once all five run at the same time
            return i

        results = await asyncio.gather(*(alice.request("bob", "work", i, timeout=5) for i in range(5)))
        assert results == list(range(5))
        assert started == list(range(5))


async def test_no_such_instance_is_immediate(url: str, domain: str) -> None:
    async with make(url, domain, "alice") as alice:
        start = time.monotonic()
        with pytest.raises(NoSuchInstance, match="nobody"):
            await alice.request("nobody", "greet", timeout=30)
        assert time.monotonic() - start < 5  # long before the 30 s timeout


async def test_no_such_slot_names_slot_and_instance(url: str, domain: str) -> None:
    async with make(url, domain, "bob"), make(url, domain, "alice") as alice:
        with pytest.raises(NoSuchSlot) as info:
            await alice.request("bob", "missing", timeout=5)
        assert "missing" in str(info.value) and "bob" in str(info.value)


async def test_remote_error_carries_type_message_traceback(url: str, domain: str) -> None:
    async with make(url, domain, "bob") as bob, make(url, domain, "alice") as alice:

        @bob.slot
        def fail() -> None:
            raise ValueError("bad value 42")

        with pytest.raises(RemoteError) as info:
            await alice.request("bob", "fail", timeout=5)
        assert info.value.exc_type == "ValueError"
        assert info.value.message == "bad value 42"
        assert "raise ValueError" in info.value.traceback
        # the instance keeps serving after a slot raised
        assert await alice.request("bob", "ping", 1, timeout=5) == 1


async def test_request_timeout_and_expired_request_not_executed(url: str, domain: str) -> None:
    async with make(url, domain, "bob") as bob, make(url, domain, "alice") as alice:
        ran: list[str] = []
        release = asyncio.Event()

        @bob.slot
        def block() -> None:
            ran.append("block")

        @bob.slot
        async def slow() -> None:
            await release.wait()

        with pytest.raises(RequestTimeout) as info:
            await alice.request("bob", "slow", timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        assert "bob" in str(info.value) and "slow" in str(info.value) and "0.2" in str(info.value)
        release.set()

        # a request whose deadline passed before it is dispatched is not executed
        from karabo_async.wire import Kind, Names

        msg = alice._message(Kind.REQUEST, "bob", "block", ())
        msg.correlation_id, msg.reply_to, msg.deadline = "x1", "alice", time.time() - 1
        await alice.hub.transport.publish(alice.names.slots, Names.call_key("bob", "block", "alice"), msg)
        assert await alice.request("bob", "ping", 3, timeout=5) == 3  # processed after the expired one
        assert ran == []


async def test_request_no_wait_reply_to_local_slot(url: str, domain: str) -> None:
    async with make(url, domain, "bob") as bob, make(url, domain, "alice") as alice:
        got: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        @bob.slot
        def greet(name: str) -> str:
            return f"hi {name}"

        @alice.slot
        def on_reply(value: str) -> None:
            got.set_result(value)

        await alice.request_no_wait("bob", "greet", "x", reply_slot="on_reply")
        assert await asyncio.wait_for(got, 5) == "hi x"


async def test_signals_connect_disconnect(url: str, domain: str) -> None:
    async with make(url, domain, "bob") as bob, make(url, domain, "alice") as alice:
        got: asyncio.Queue[dict[str, int]] = asyncio.Queue()

        @alice.slot
        def on_changed(value: dict[str, int]) -> None:
            got.put_nowait(value)

        await alice.connect("bob", "changed", "on_changed")
        await bob.emit("changed", {"v": 1})
        assert await asyncio.wait_for(got.get(), 5) == {"v": 1}
        await alice.disconnect("bob", "changed", "on_changed")
        await bob.emit("changed", {"v": 2})
        # a marker through the same path proves the second signal was not delivered before it
        await alice.connect("bob", "marker", "on_changed")
        await bob.emit("marker", {"v": 3})
        assert await asyncio.wait_for(got.get(), 5) == {"v": 3}
        assert got.empty()


async def test_connect_unknown_local_slot_raises(url: str, domain: str) -> None:
    async with make(url, domain, "alice") as alice:
        with pytest.raises(NoSuchSlot):
            await alice.connect("bob", "changed", "nothing_here")


async def test_broadcast_reaches_every_instance(url: str, domain: str) -> None:
    async with make(url, domain, "a") as a, make(url, domain, "b") as b, make(url, domain, "c") as c:
        got: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        for inst in (a, b):

            def make_slot(name: str) -> object:
                def ping_all(v: int) -> None:
                    got.put_nowait((name, v))

                return ping_all

            inst.register_slot(make_slot(inst.instance_id), "ping_all")  # type: ignore[arg-type]
        await c.broadcast("ping_all", 1)
        results = {await asyncio.wait_for(got.get(), 5), await asyncio.wait_for(got.get(), 5)}
        assert results == {("a", 1), ("b", 1)}


async def test_instance_id_in_use_fails_fast_first_undisturbed(url: str, domain: str) -> None:
    async with make(url, domain, "bob") as bob, make(url, domain, "alice") as alice:

        @bob.slot
        def who() -> str:
            return "first"

        with pytest.raises(InstanceIdInUse):
            await make(url, domain, "bob").start()
        assert await alice.request("bob", "who", timeout=5) == "first"


@pytest.mark.parametrize("bad", ["a b", "a.b", "", "x*", "é", "a#"])
def test_invalid_instance_ids_refused(bad: str) -> None:
    with pytest.raises(InvalidInstanceId):
        SignalSlotable(bad, broker="memory://")


def test_generated_ids() -> None:
    import os

    server = generate_instance_id("server")
    device = generate_instance_id("device", "Motor")
    assert server.endswith(f"_Server_{os.getpid()}")
    assert f"-{os.getpid()}_Motor_" in device


async def test_domains_are_isolated(url: str, domain: str) -> None:
    async with make(url, domain, "bob"), make(url, domain + "x", "alice") as alice:
        with pytest.raises(NoSuchInstance):
            await alice.request("bob", "ping", timeout=5)
        assert "bob" not in alice.topology


async def test_topology_discover_new_gone(url: str, domain: str) -> None:
    async with make(url, domain, "bob") as bob:
        async with make(url, domain, "alice") as alice:
            # learned at start, without waiting for a heartbeat
            assert "bob" in alice.topology
            info = alice.topology["bob"]
            for key in ("type", "class", "server", "host", "pid", "status", "heartbeat_interval", "version"):
                assert key in info
            gone: asyncio.Queue[str] = asyncio.Queue()
            new: asyncio.Queue[str] = asyncio.Queue()
            alice.on_instance_gone(lambda iid, info: gone.put_nowait(iid))
            alice.on_instance_new(lambda iid, info: new.put_nowait(iid))
            async with make(url, domain, "carol"):
                assert await asyncio.wait_for(new.get(), 5) == "carol"
            assert await asyncio.wait_for(gone.get(), 5) == "carol"  # clean stop: reported at once
            assert "carol" not in alice.topology
        assert "alice" not in bob.topology or await _gone(bob, "alice")


async def _gone(ss: SignalSlotable, iid: str) -> bool:
    await ss.topology.wait_for(iid, timeout=5, gone=True)
    return True


async def test_topology_events_async_iterator(url: str, domain: str) -> None:
    async with make(url, domain, "alice") as alice:
        events = alice.topology_events()
        nxt = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0)
        async with make(url, domain, "dave"):
            event = await asyncio.wait_for(nxt, 5)
            assert (event.kind, event.instance_id) == ("instance_new", "dave")
        await events.aclose()


async def test_malformed_messages_are_dropped_instance_keeps_serving(url: str, domain: str) -> None:
    from karabo_async.wire import Kind, Message, Names

    async with make(url, domain, "bob") as bob, make(url, domain, "alice") as alice:

        @bob.slot
        def echo(x: int) -> int:
            return x

        key = Names.call_key("bob", "echo", "alice")
        t = alice.hub.transport
        # garbage body, a body that is not an argument list, an unknown slot by call
        for body in (b"\xc1\xff\x00garbage", b"\x81\xa1a\x01"):
            await t.publish(alice.names.slots, key, Message(Kind.CALL, "alice", "bob", "echo", body=body))
        await t.publish(alice.names.slots, key, Message(Kind.REQUEST, "alice", "bob", "echo", body=b"\xc1"))
        await alice.call("bob", "nothing", 1)
        assert await alice.request("bob", "echo", 5, timeout=5) == 5
