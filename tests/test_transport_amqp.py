"""The AMQP transport against real RabbitMQ: restarts, cut links, raw garbage, bounded queues."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest
from broker_support import TcpProxy

from karabo_async import BrokerUnavailable, SignalSlotable
from karabo_async.transport.amqp import _redact


async def until_answers(ss: SignalSlotable, target: str, seconds: float) -> float:
    """Retry a request until it works again; returns how long that took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        try:
            assert await ss.request(target, "echo", 1, timeout=1) == 1
            return loop.time() - start
        except (BrokerUnavailable, TimeoutError):
            if loop.time() - start > seconds:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_broker_restart_recovers_everything(private_broker, domain: str) -> None:  # type: ignore[no-untyped-def]
    url = private_broker.url
    async with (
        SignalSlotable("bob", broker=url, domain=domain, heartbeat_interval=0.5) as bob,
        SignalSlotable("alice", broker=url, domain=domain, heartbeat_interval=0.5) as alice,
    ):
        bob.register_slot(lambda v: v, "echo")
        got: asyncio.Queue[int] = asyncio.Queue()
        alice.register_slot(got.put_nowait, "on_changed")
        await alice.connect("bob", "changed", "on_changed")
        release = asyncio.Event()

        async def hang() -> None:
            await release.wait()

        bob.register_slot(hang, "hang")
        in_flight = asyncio.ensure_future(alice.request("bob", "hang", timeout=60))
        await asyncio.sleep(0.2)  # let the request reach bob before the broker goes

        await asyncio.to_thread(private_broker.restart)
        # the request in flight fails with a clear error instead of hanging for 60 s
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(in_flight, 20)
        release.set()
        # calls work again within 10 s of the broker being back, with no process restart
        assert await until_answers(alice, "bob", 10) < 10
        # the signal connection came back too
        await bob.emit("changed", 7)
        assert await asyncio.wait_for(got.get(), 10) == 7
        # and heartbeats/topology: both still see each other
        await alice.topology.wait_for("bob", timeout=10)
        assert "alice" in bob.topology


async def test_cut_link_recovers(broker_url: str, tcp_proxy: TcpProxy, domain: str) -> None:
    async with (
        SignalSlotable("bob", broker=broker_url, domain=domain, heartbeat_interval=1) as bob,
        SignalSlotable(
            "alice", broker=tcp_proxy.url(broker_url), domain=domain, heartbeat_interval=1
        ) as alice,
    ):
        bob.register_slot(lambda v: v, "echo")
        assert await alice.request("bob", "echo", 1, timeout=5) == 1
        await tcp_proxy.cut()
        tcp_proxy.restore()
        assert await until_answers(alice, "bob", 15) < 15
        # bob still knows alice (she announced herself again after reconnecting)
        await bob.topology.wait_for("alice", timeout=10)


async def test_raw_garbage_into_instance_queue_is_dropped(broker_url: str, domain: str) -> None:
    async with (
        SignalSlotable("bob", broker=broker_url, domain=domain) as bob,
        SignalSlotable("alice", broker=broker_url, domain=domain) as alice,
    ):
        bob.register_slot(lambda v: v, "echo")
        bob.hub.transport.max_message_size = 10_000
        queue = f"{domain}.instance.bob"
        connection = await aio_pika.connect(broker_url)
        async with connection:
            channel = await connection.channel()
            bad: list[aio_pika.Message] = [
                aio_pika.Message(b"\x00\xff garbage"),  # no headers at all
                aio_pika.Message(
                    b"x", headers={"kind": "teleport", "sender": "a", "target": "bob", "slot": "s"}
                ),
                aio_pika.Message(
                    b"x", headers={"kind": "call", "sender": 5, "target": "bob", "slot": "echo"}
                ),
                aio_pika.Message(
                    b"\xc1\xc1", headers={"kind": "call", "sender": "a", "target": "bob", "slot": "echo"}
                ),
                aio_pika.Message(
                    b"\x91\x01",
                    headers={
                        "kind": "request",
                        "sender": "a",
                        "target": "bob",
                        "slot": "echo",
                        "deadline": "soon",
                    },
                ),
                aio_pika.Message(
                    b"\x90" * 20_000, headers={"kind": "call", "sender": "a", "target": "bob", "slot": "echo"}
                ),
                aio_pika.Message(
                    b"\x92\x01\x02", headers={"kind": "reply", "sender": "a", "target": "bob", "slot": "echo"}
                ),
            ]
            for message in bad:
                await channel.default_exchange.publish(message, routing_key=queue)
        assert await alice.request("bob", "echo", 42, timeout=5) == 42


async def test_instance_queues_are_bounded(private_broker, domain: str) -> None:  # type: ignore[no-untyped-def]
    """Length and time to live of instance queues are set, and configurable."""
    url = private_broker.url
    async with SignalSlotable("bob", broker=url, domain=domain, queue_max_length=123, queue_ttl=7):
        out = await asyncio.to_thread(private_broker.ctl, "list_queues", "name", "arguments")
        line = next(row for row in out.splitlines() if row.startswith(f"{domain}.instance.bob"))
        assert "x-max-length" in line and "123" in line
        assert "x-message-ttl" in line and "7000" in line
        assert "x-dead-letter-exchange" in line and f"{domain}.returns" in line


def test_password_never_printed() -> None:
    assert _redact("amqp://user:secret@host:5672/") == "amqp://user@host:5672/"


async def test_unreachable_broker_fails_fast_with_clear_error(domain: str) -> None:
    port = 1  # nothing listens there
    with pytest.raises(BrokerUnavailable, match="cannot connect"):
        async with SignalSlotable(
            f"x{uuid.uuid4().hex[:6]}", broker=f"amqp://guest:guest@127.0.0.1:{port}/", domain=domain
        ):
            pass
