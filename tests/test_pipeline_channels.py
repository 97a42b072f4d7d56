"""Output and input endpoints over each path: delivery, distribution, slowness policies, end of stream,
reconnection, malformed peers. The shm path here has both ends in one process (forced); the
multi-process faults are in test_pipeline_shm.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pytest
from shm_support import private_shm_dir
from structlog.testing import capture_logs

from karabo_async.errors import PipelineError
from karabo_async.pipeline import InputEndpoint, ItemMeta, OutputEndpoint, Transport
from karabo_async.pipeline.identity import host_id
from karabo_async.pipeline.input import _StreamLink

PATHS: list[Transport] = ["local", "shm", "tcp"]


@pytest.fixture(autouse=True)
def shm_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private shm directory and session per test; the test fails if anything is left in it."""
    yield from private_shm_dir(monkeypatch, "pipeline left files in the shm directory")


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


class Sink:
    """Collects what an input receives; ``gate`` (if cleared) holds on_data to simulate slowness."""

    def __init__(self) -> None:
        self.items: list[tuple[Mapping[str, Any], ItemMeta]] = []
        self.eos = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = 0

    async def on_data(self, data: Mapping[str, Any], meta: ItemMeta) -> None:
        self.entered += 1
        await self.gate.wait()
        self.items.append((data, meta))

    def on_eos(self) -> None:
        self.eos += 1

    @property
    def numbers(self) -> list[int]:
        return [d["n"] for d, _ in self.items]


@pytest.fixture
async def output() -> AsyncIterator[OutputEndpoint]:
    out = OutputEndpoint("source", "output", tcp_host="127.0.0.1")
    await out.start()
    yield out
    await out.close()


Factory = Callable[..., Awaitable[tuple[InputEndpoint, Sink]]]


@pytest.fixture
async def make_input(output: OutputEndpoint) -> AsyncIterator[Factory]:
    made: list[InputEndpoint] = []

    async def make(
        name: str = "in", *, transport: Transport = "local", **kw: Any
    ) -> tuple[InputEndpoint, Sink]:
        sink = Sink()
        inp = InputEndpoint(
            "sink", name, transport=transport, on_data=sink.on_data, on_end_of_stream=sink.on_eos, **kw
        )
        made.append(inp)
        assert await inp.connect(output.channel_id, output.address_info()), inp.stats
        return inp, sink

    yield make
    for inp in made:
        await inp.close()


def item(n: int, size: int = 16) -> dict[str, Any]:
    return {
        "n": n,
        "image": np.full(size, n, dtype=np.float32),
        "nested": {"name": f"item {n}", "v": [1, 2.5]},
    }


@pytest.mark.parametrize("path", PATHS)
async def test_items_arrive_intact_with_meta(path: str, output: OutputEndpoint, make_input: Factory) -> None:
    inp, sink = await make_input(transport=path)
    assert inp.stats["connections"][output.channel_id]["transport"] == path
    sent = [item(n, size=100_000) for n in range(5)]
    for n, one in enumerate(sent):
        await output.write(one, ItemMeta("source:output", 1000.0 + n, 42 + n))
    await until(lambda: len(sink.items) == 5)
    for n, (data, meta) in enumerate(sink.items):
        assert meta == ItemMeta("source:output", 1000.0 + n, 42 + n)
        assert data["n"] == n and data["nested"] == {"name": f"item {n}", "v": [1, 2.5]}
        np.testing.assert_array_equal(data["image"], sent[n]["image"])
    image = sink.items[0][0]["image"]
    if path == "local":
        assert sink.items[0][0] is sent[0]  # handed over, not copied
    if path == "shm":
        assert not image.flags.writeable  # a read-only view of the sender's slot


@pytest.mark.parametrize("path", PATHS)
async def test_copy_inputs_each_get_every_item(
    path: str, output: OutputEndpoint, make_input: Factory
) -> None:
    _, a = await make_input("a", transport=path)
    _, b = await make_input("b", transport=path)
    for n in range(20):
        await output.write(item(n))
    await until(lambda: len(a.items) == 20 and len(b.items) == 20)
    assert a.numbers == b.numbers == list(range(20))


@pytest.mark.parametrize("path", PATHS)
async def test_shared_inputs_split_items_exactly_once(
    path: str, output: OutputEndpoint, make_input: Factory
) -> None:
    output.no_shared_ready = "wait"
    _, a = await make_input("a", transport=path, data_distribution="shared")
    _, b = await make_input("b", transport=path, data_distribution="shared")
    for n in range(40):
        await output.write(item(n))
    await until(lambda: len(a.items) + len(b.items) == 40)
    assert sorted(a.numbers + b.numbers) == list(range(40))
    assert a.numbers and b.numbers  # balanced between ready inputs, not all to one


async def test_when_a_shared_input_goes_the_others_get_everything(
    output: OutputEndpoint, make_input: Factory
) -> None:
    output.no_shared_ready = "wait"
    a_in, a = await make_input("a", transport="tcp", data_distribution="shared")
    _, b = await make_input("b", transport="tcp", data_distribution="shared")
    await a_in.close()
    await until(lambda: output.inputs == ["sink:b"])
    for n in range(10):
        await output.write(item(n))
    await until(lambda: len(b.items) == 10)
    assert a.items == []


async def test_items_waiting_for_a_shared_input_that_dies_go_to_the_others(
    output: OutputEndpoint, make_input: Factory
) -> None:
    output.no_shared_ready = "queue"
    a_in, a = await make_input("a", transport="local", data_distribution="shared", credit_window=1)
    _, b = await make_input("b", transport="local", data_distribution="shared", credit_window=1)
    a.gate.clear()
    b.gate.clear()
    for n in range(6):
        await output.write(item(n))
    assert output.stats["shared_queue_depth"] == 4  # two in flight, four waiting for credit
    await a_in.close()
    b.gate.set()
    await until(lambda: len(b.items) == 5)
    assert b.numbers[0] in (0, 1) and sorted(b.numbers[1:]) == [2, 3, 4, 5]


@pytest.mark.parametrize("path", PATHS)
async def test_drop_keeps_only_the_newest_waiting_item(
    path: str, output: OutputEndpoint, make_input: Factory
) -> None:
    inp, sink = await make_input(transport=path, on_slowness="drop", credit_window=1)
    sink.gate.clear()
    for n in range(5):
        await output.write(item(n))
    stats = output.stats["inputs"][inp.channel_id]
    assert stats["dropped"] == 3 and stats["queue_depth"] == 1
    sink.gate.set()
    await until(lambda: len(sink.items) == 2)
    assert sink.numbers == [0, 4]


@pytest.mark.parametrize("path", PATHS)
async def test_queue_drop_drops_the_oldest_beyond_the_queue_length(
    path: str, output: OutputEndpoint, make_input: Factory
) -> None:
    inp, sink = await make_input(
        transport=path, on_slowness="queue_drop", max_queue_length=2, credit_window=1
    )
    sink.gate.clear()
    for n in range(6):
        await output.write(item(n))
    stats = output.stats["inputs"][inp.channel_id]
    assert stats["dropped"] == 3 and stats["queue_depth"] == 2
    sink.gate.set()
    await until(lambda: len(sink.items) == 3)
    assert sink.numbers == [0, 4, 5]


@pytest.mark.parametrize("path", PATHS)
async def test_wait_makes_the_writer_wait_for_credit(
    path: str, output: OutputEndpoint, make_input: Factory
) -> None:
    inp, sink = await make_input(transport=path, on_slowness="wait", credit_window=2)
    sink.gate.clear()
    for n in range(2):
        await output.write(item(n))
    blocked = asyncio.create_task(output.write(item(2)))
    done, _ = await asyncio.wait({blocked}, timeout=0.2)
    assert not done, "write should wait while the input has no credit"
    sink.gate.set()
    await blocked
    await until(lambda: len(sink.items) == 3)
    assert sink.numbers == [0, 1, 2]
    assert output.stats["inputs"][inp.channel_id]["dropped"] == 0


async def test_credit_window_lets_several_items_be_in_flight(
    output: OutputEndpoint, make_input: Factory
) -> None:
    inp, sink = await make_input(transport="tcp", on_slowness="drop", credit_window=4)
    sink.gate.clear()
    for n in range(4):
        await output.write(item(n))
    await until(lambda: inp.stats["received"] == 4)
    assert output.stats["inputs"][inp.channel_id]["dropped"] == 0
    assert inp.stats["queue_depth"] == 3  # one inside on_data, three waiting at the input
    sink.gate.set()
    await until(lambda: len(sink.items) == 4)


async def test_no_shared_ready_drop_counts(output: OutputEndpoint, make_input: Factory) -> None:
    _, sink = await make_input(transport="local", data_distribution="shared", credit_window=1)
    sink.gate.clear()
    for n in range(4):
        await output.write(item(n))
    assert output.stats["dropped_no_shared_ready"] == 3
    sink.gate.set()
    await until(lambda: len(sink.items) == 1)


async def test_no_shared_ready_queue_delivers_later_and_bounds_the_queue(
    output: OutputEndpoint, make_input: Factory
) -> None:
    output.no_shared_ready = "queue"
    output.shared_queue_length = 3
    _, sink = await make_input(transport="tcp", data_distribution="shared", credit_window=1)
    sink.gate.clear()
    for n in range(6):
        await output.write(item(n))
    assert output.stats["shared_queue_depth"] == 3
    assert output.stats["dropped_no_shared_ready"] == 2
    sink.gate.set()
    await until(lambda: len(sink.items) == 4)
    assert sink.numbers == [0, 3, 4, 5]


@pytest.mark.parametrize("path", PATHS)
async def test_end_of_stream_reaches_every_input_once_after_the_data(
    path: str, output: OutputEndpoint, make_input: Factory
) -> None:
    output.no_shared_ready = "wait"
    _, copy = await make_input("copy", transport=path)
    _, s1 = await make_input("s1", transport=path, data_distribution="shared")
    _, s2 = await make_input("s2", transport=path, data_distribution="shared")
    for n in range(10):
        await output.write(item(n))
    await output.write_end_of_stream()
    await until(lambda: copy.eos == 1 and s1.eos == 1 and s2.eos == 1)
    assert len(copy.items) == 10 and len(s1.items) + len(s2.items) == 10
    await output.write(item(10))
    await until(lambda: len(copy.items) == 11)
    assert copy.eos == s1.eos == s2.eos == 1


async def test_end_of_stream_of_two_outputs_calls_the_handler_once(output: OutputEndpoint) -> None:
    async with OutputEndpoint("source2", "output", tcp_host="127.0.0.1") as other:
        sink = Sink()
        inp = InputEndpoint("sink", "in", on_data=sink.on_data, on_end_of_stream=sink.on_eos, transport="tcp")
        assert await inp.connect(output.channel_id, output.address_info())
        assert await inp.connect(other.channel_id, other.address_info())
        assert inp.connected_output_channels == ["source:output", "source2:output"]
        await output.write_end_of_stream()
        await until(lambda: inp.stats["eos_received"] == 1)
        assert sink.eos == 0
        await other.write_end_of_stream()
        await until(lambda: sink.eos == 1)
        await inp.close()


@pytest.mark.parametrize("path", PATHS)
async def test_closing_the_output_tells_inputs_and_they_reconnect_when_it_returns(path: Transport) -> None:
    addresses: dict[str, Mapping[str, Any]] = {}

    async def resolve(output_id: str) -> Mapping[str, Any]:
        if output_id not in addresses:
            raise LookupError(f"{output_id} not online")
        return addresses[output_id]

    sink = Sink()
    inp = InputEndpoint(
        "sink", "in", transport=path, on_data=sink.on_data, resolve=resolve, reconnect_delay=(0.01, 0.05)
    )
    first = OutputEndpoint("source", "output", tcp_host="127.0.0.1")
    await first.start()
    addresses["source:output"] = first.address_info()
    assert await inp.connect("source:output")
    await first.write(item(0))
    await until(lambda: len(sink.items) == 1)
    del addresses["source:output"]
    await first.close()
    await until(lambda: inp.missing_connections == ["source:output"])
    assert inp.connected == []

    async with OutputEndpoint("source", "output", tcp_host="127.0.0.1") as second:
        addresses["source:output"] = second.address_info()
        assert await inp.wait_connected("source:output")
        assert inp.stats["connections"]["source:output"]["reconnects"] >= 1
        await second.write(item(1))
        await until(lambda: len(sink.items) == 2)
    await inp.close()


async def test_a_malformed_peer_loses_its_connection_only(
    output: OutputEndpoint, make_input: Factory
) -> None:
    _, sink = await make_input(transport="tcp")
    info = output.address_info()
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection(info["tcp_host"], info["tcp_port"])
        writer.write(b"this is not a pipeline frame at all")
        assert await reader.read() == b""  # the output closed this connection
        writer.close()
        await writer.wait_closed()
    assert any("malformed pipeline frame" in e["event"] for e in logs), logs
    await output.write(item(7))
    await until(lambda: sink.numbers == [7])


async def test_a_peer_sending_data_before_hello_is_dropped(output: OutputEndpoint) -> None:
    from karabo_async.pipeline.framing import frame_parts

    info = output.address_info()
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection(info["tcp_host"], info["tcp_port"])
        for part in frame_parts({"k": "c", "n": 5, "r": []}):
            writer.write(part)
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
    assert any("first frame must be 'hello'" in e.get("error", "") for e in logs), logs
    assert output.inputs == []


async def test_an_input_with_a_bad_policy_in_hello_is_refused(output: OutputEndpoint) -> None:
    from karabo_async.pipeline.framing import frame_parts

    info = output.address_info()
    hello = {"k": "hello", "input": "x:y", "dist": "broadcast", "slow": "drop", "qlen": 1, "credits": 1}
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection(info["tcp_host"], info["tcp_port"])
        for part in frame_parts(hello):
            writer.write(part)
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
    assert any("data_distribution must be one of" in e.get("error", "") for e in logs), logs


async def test_on_data_errors_are_logged_counted_and_do_not_stop_the_input(output: OutputEndpoint) -> None:
    seen: list[int] = []

    def on_data(data: Mapping[str, Any], meta: ItemMeta) -> None:
        if data["n"] == 1:
            raise ValueError("bad item")
        seen.append(data["n"])

    inp = InputEndpoint("sink", "in", on_data=on_data)
    assert await inp.connect(output.channel_id, output.address_info())
    with capture_logs() as logs:
        for n in range(3):
            await output.write(item(n))
        await until(lambda: inp.stats["processed"] == 3)
    assert seen == [0, 2] and inp.stats["on_data_errors"] == 1
    assert any(e["event"].startswith("on_data raised") for e in logs)
    await inp.close()


async def test_address_info_and_automatic_path_choice(output: OutputEndpoint) -> None:
    info = output.address_info()
    assert info["channel_id"] == "source:output" and info["pid"] == os.getpid()
    assert info["host_id"] == host_id() and info["tcp_port"] > 0 and info["unix_path"].startswith("@karabo_")
    assert info["shm"] and info["local"] and info["session"] == os.environ["KARABO_SESSION"]
    inp = InputEndpoint("sink", "in")
    assert inp.choose_path("source:output", info) == "local"
    assert inp.choose_path("source:output", info | {"pid": 1}) == "shm"
    assert inp.choose_path("source:output", info | {"pid": 1, "host_id": "elsewhere"}) == "tcp"
    forced = InputEndpoint("sink", "in", transport="local")
    with pytest.raises(PipelineError, match="cannot reach output source:output by transport 'local'"):
        await forced.connect("source:output", info | {"pid": 1})


async def test_output_limited_to_tcp_offers_nothing_else() -> None:
    async with OutputEndpoint("source", "tcponly", transport="tcp", tcp_host="127.0.0.1") as out:
        info = out.address_info()
        assert not info["shm"] and not info["local"] and info["unix_path"] is None
        assert InputEndpoint("sink", "in").choose_path(out.channel_id, info) == "tcp"


def test_bad_configuration_is_refused_with_the_setting_named() -> None:
    with pytest.raises(PipelineError, match="on_slowness must be one of drop, queue_drop, wait; got 'later'"):
        InputEndpoint("a", "b", on_slowness="later")  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match="no_shared_ready must be one of"):
        OutputEndpoint("a", "b", no_shared_ready="queue_drop")  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match="max_queue_length must be a positive integer"):
        InputEndpoint("a", "b", max_queue_length=0)
    with pytest.raises(PipelineError, match="instanceId:channelName"):
        InputEndpoint("", "b")


async def test_writing_to_a_closed_output_raises() -> None:
    out = OutputEndpoint("a", "b")
    with pytest.raises(PipelineError, match="not started"):
        await out.write({"x": 1})
    await out.start()
    await out.close()
    with pytest.raises(PipelineError, match="closed"):
        await out.write({"x": 1})


async def test_two_outputs_of_one_id_in_one_process_are_refused(output: OutputEndpoint) -> None:
    with pytest.raises(PipelineError, match="already running"):
        await OutputEndpoint("source", "output").start()


async def test_an_input_dropping_mid_stream_costs_the_writer_nothing(
    output: OutputEndpoint, make_input: Factory
) -> None:
    inp, sink = await make_input(transport="tcp", on_slowness="drop")
    link = inp._connections[output.channel_id].link
    assert isinstance(link, _StreamLink) and link.protocol is not None
    link.protocol.abort()  # the connection breaks, as when a process vanishes
    for n in range(20):
        await output.write(item(n))  # never raises for a lost input
    await until(
        lambda: (
            inp.stats["connections"][output.channel_id]["reconnects"] >= 1
            and inp.connected == [output.channel_id]
        )
    )  # back by itself
    await until(lambda: output.stats["inputs"]["sink:in"]["credits"] == 8)  # the new connection
    await output.write(item(99))
    await until(lambda: 99 in sink.numbers)
