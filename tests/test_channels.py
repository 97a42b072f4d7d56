"""Pipeline channels on devices: declarations, policies and counters as properties, lookup through the
broker, and devices streaming to each other in one server and across server processes over RabbitMQ.

The devices live in tests/pipeline_plugins/channel_devices.py, which the server processes load as a
plugin folder.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pipeline_plugins.channel_devices import Camera, Processor, SharedSink, Sink

from karabo_async import (
    ChannelMeta,
    DeviceInitializationError,
    DeviceServer,
    Hash,
    InputChannel,
    OutputChannel,
    PipelineError,
    RemoteError,
    SignalSlotable,
    State,
    Timestamp,
    schema_of,
)
from karabo_async.device import Device

PLUGINS = Path(__file__).parent / "pipeline_plugins"
REPO = Path(__file__).resolve().parent.parent


async def until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 10.0) -> None:
    """Poll an async condition (a property published by another process) until it holds."""
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.05)


async def get(client: SignalSlotable, device: str, path: str) -> Any:
    return await client.request(device, "get", path)


def prop_is(client: SignalSlotable, device: str, path: str, expected: Any) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await get(client, device, path) == expected)

    return check


# --- declarations ----------------------------------------------------------------------------------


def test_channels_are_schema_nodes_with_declared_defaults() -> None:
    schema = schema_of(Processor)
    props = schema.properties
    assert props["input"].kind == "node" and props["output"].kind == "node"
    assert props["input.connected_output_channels"].kind == "list"
    assert not props["input.connected_output_channels"].readonly
    assert not props["input.connected_output_channels"].init_only
    assert props["input.missing_connections"].readonly and props["input.queue_depth"].readonly
    assert props["output.dropped"].readonly and props["output.queue_depth"].readonly
    assert props["input.data_distribution"].init_only and props["input.data_distribution"].default == "copy"
    assert props["input.max_queue_length"].default == 2
    assert schema_of(SharedSink).properties["input.data_distribution"].default == "shared"
    assert set(props["output.no_shared_ready"].options or ()) == {"drop", "queue", "wait"}
    # The class attribute is the declaration; the schema document names the channel nodes too.
    assert isinstance(Processor.input, InputChannel) and isinstance(Processor.output, OutputChannel)
    assert "input.connected_output_channels" in str(schema.to_document())


def test_bad_declarations_are_refused_with_the_setting_named() -> None:
    with pytest.raises(PipelineError, match="on_slowness"):
        InputChannel(on_slowness="sometimes")  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match="no_shared_ready"):
        OutputChannel(no_shared_ready="later")  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match="instanceId:channelName"):
        InputChannel(connected_output_channels=["no-colon"])


# --- in one server ---------------------------------------------------------------------------------


class Recorder(Device):
    """Keeps the very objects it is handed, to prove the in-process path does not copy."""

    input = InputChannel(on_slowness="drop", credit_window=2)
    output = OutputChannel()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.items: list[tuple[Hash, ChannelMeta]] = []
        self.eos: list[ChannelMeta] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def on_initialization(self) -> None:
        self.state = State.ON

    @input.on_data
    async def handle(self, data: Hash, meta: ChannelMeta) -> None:
        await self.gate.wait()
        self.items.append((data, meta))

    @input.on_end_of_stream
    def eos_seen(self, meta: ChannelMeta) -> None:
        self.eos.append(meta)


@pytest.fixture
async def server(domain: str) -> AsyncIterator[tuple[DeviceServer, SignalSlotable]]:
    url = f"memory://{uuid.uuid4().hex}"
    classes = [Camera, Processor, Sink, SharedSink, Recorder]
    async with (
        DeviceServer("srv", classes=classes, broker=url, domain=domain, entry_points=False) as srv,
        SignalSlotable("client", broker=url, domain=domain) as client,
    ):
        yield srv, client


async def test_in_process_hand_over_is_the_very_object_with_meta_and_eos(
    server: tuple[DeviceServer, SignalSlotable],
) -> None:
    srv, client = server
    await srv.instantiate("Camera", "cam-1", {})
    await srv.instantiate("Recorder", "rec-1", {"input.connected_output_channels": ["cam-1:output"]})
    cam, rec = srv.devices["cam-1"], srv.devices["rec-1"]
    assert isinstance(cam, Camera) and isinstance(rec, Recorder)
    assert await rec.input.wait_connected("cam-1:output")
    item = Hash(image=np.arange(10), frame_id=1)
    stamp = Timestamp.now(train_id=4711)
    await cam.output.write(item, timestamp=stamp)
    await cam.output.write_end_of_stream()
    await until(lambda: _async(bool(rec.eos)), "end of stream")
    [(data, meta)] = rec.items
    assert data is item  # no serialisation, no copy
    assert meta == ChannelMeta("cam-1:output", stamp, 4711)
    assert len(rec.eos) == 1 and rec.eos[0].source == "cam-1:output"
    await until(prop_is(client, "rec-1", "input.connections", ["cam-1:output=local"]), "connections shown")


async def _async(value: bool) -> bool:
    return value


async def test_chain_in_one_server_through_slots_and_counters(
    server: tuple[DeviceServer, SignalSlotable],
) -> None:
    srv, client = server
    await srv.instantiate("Camera", "cam-1", {"frame_elements": 64})
    await srv.instantiate("Processor", "proc-1", {"input": {"connected_output_channels": ["cam-1:output"]}})
    await srv.instantiate("Sink", "sink-1", {"input.connected_output_channels": ["proc-1:output"]})
    proc, sink = srv.devices["proc-1"], srv.devices["sink-1"]
    assert isinstance(proc, Processor) and isinstance(sink, Sink)
    assert await proc.input.wait_connected("cam-1:output")
    assert await sink.input.wait_connected("proc-1:output")
    assert await client.request("cam-1", "send", 25) == 25  # a slot with an argument, as proxies call it
    await client.request("cam-1", "end_run")
    await until(prop_is(client, "sink-1", "eos_count", 1), "end of stream at the sink")
    assert await get(client, "sink-1", "frame_ids") == list(range(25))
    assert await get(client, "proc-1", "units") == ["counts"]  # Hash attributes of items
    assert await get(client, "sink-1", "bad_frames") == 0
    assert await get(client, "proc-1", "eos_sources") == ["cam-1:output"]
    await until(prop_is(client, "proc-1", "input.processed", 25), "counters published")
    config = await client.request("proc-1", "get_configuration")
    assert config["input.received"] == 25 and config["input.end_of_streams"] == 1
    assert config["output.items_written"] == 25 and config["output.connected_inputs"] == ["sink-1:input"]
    assert config["input.missing_connections"] == [] and config["output.dropped"] == 0


async def test_drop_policy_counts_drops_as_properties(server: tuple[DeviceServer, SignalSlotable]) -> None:
    srv, client = server
    await srv.instantiate("Camera", "cam-1", {"frame_elements": 4})
    await srv.instantiate("Recorder", "rec-1", {"input.connected_output_channels": ["cam-1:output"]})
    rec = srv.devices["rec-1"]
    assert isinstance(rec, Recorder)
    assert await rec.input.wait_connected("cam-1:output")
    rec.gate.clear()  # the handler blocks: credit runs out, then "drop" keeps only the newest
    await client.request("cam-1", "send", 10)
    await until(prop_is(client, "cam-1", "output.dropped", 7), "drops published")  # 2 credits + 1 waiting
    assert await get(client, "cam-1", "output.queue_depth") == 1
    rec.gate.set()
    await until(lambda: _async(len(rec.items) == 3), "the survivors")
    assert [int(d["frame_id"]) for d, _ in rec.items] == [0, 1, 9]  # the newest replaced the waiting one
    await until(prop_is(client, "cam-1", "output.queue_depth", 0), "queue drained")


async def test_configuration_of_connections_is_checked_and_reconfigurable(
    server: tuple[DeviceServer, SignalSlotable],
) -> None:
    srv, client = server
    with pytest.raises(DeviceInitializationError, match="instanceId:channelName"):
        await srv.instantiate("Sink", "bad-1", {"input.connected_output_channels": ["nocolon"]})
    assert "bad-1" not in srv.devices
    await srv.instantiate("Sink", "sink-1", {"input.on_slowness": "queue_drop", "input.transport": "local"})
    sink = srv.devices["sink-1"]
    assert isinstance(sink, Sink)
    assert sink.input.endpoint is not None and sink.input.endpoint.on_slowness == "queue_drop"
    with pytest.raises(RemoteError, match="instanceId:channelName"):
        await client.request("sink-1", "set", {"input.connected_output_channels": ["x"]})
    with pytest.raises(RemoteError, match="init"):
        await client.request("sink-1", "set", {"input.data_distribution": "shared"})
    # An output that is not there yet is shown missing and connected once its device starts.
    await client.request("sink-1", "set", {"input.connected_output_channels": ["cam-1:output"]})
    await until(prop_is(client, "sink-1", "input.missing_connections", ["cam-1:output"]), "missing shown")
    await srv.instantiate("Camera", "cam-1", {"frame_elements": 4})
    await until(prop_is(client, "sink-1", "input.missing_connections", []), "connected by itself")
    await client.request("cam-1", "send", 3)
    await until(prop_is(client, "sink-1", "frame_ids", [0, 1, 2]), "items")
    # Stopping the output's device tells the input; removing the connection is a reconfiguration.
    await srv.shutdown_device("cam-1")
    await until(prop_is(client, "sink-1", "input.missing_connections", ["cam-1:output"]), "output gone")
    await client.request("sink-1", "set", {"input.connected_output_channels": []})
    await until(prop_is(client, "sink-1", "input.missing_connections", []), "nothing wanted")
    assert sink.input.endpoint.connected_output_channels == []


# --- across server processes over RabbitMQ ------------------------------------------------------------


class ServerProcess:
    """``karabo-async server`` in a process of its own, with the test devices as plugins."""

    def __init__(self, server_id: str, broker: str, domain: str, env: dict[str, str], log: Path) -> None:
        self.server_id = server_id
        self.args = [
            sys.executable, "-m", "karabo_async", "--broker", broker, "--domain", domain,
            "server", "--id", server_id, "--plugin-dir", str(PLUGINS), "--heartbeat-interval", "1",
        ]  # fmt: skip
        self.env = env
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = self.log.open("ab")  # a local file, opened once per process start
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=log, cwd=REPO
            )
        finally:
            log.close()
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            while b"online with classes" not in await self.proc.stdout.readline():
                if self.proc.returncode is not None:
                    raise AssertionError(f"{self.server_id} exited; see {self.log}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    async def stop(self) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(15):
                return await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"{self.server_id} did not stop on SIGTERM") from None


class Cluster:
    def __init__(self, broker: str, domain: str, tmp: Path) -> None:
        self.broker, self.domain, self.tmp = broker, domain, tmp
        self.shm = tmp / "shm"
        self.shm.mkdir()
        self.env = {
            **os.environ,
            "KARABO_SHM_DIR": str(self.shm),
            "KARABO_SESSION": f"s{uuid.uuid4().hex[:8]}",
            "PYTHONPATH": str(REPO),
        }
        self.servers: dict[str, ServerProcess] = {}

    async def start(self, *server_ids: str) -> None:
        new = [
            ServerProcess(s, self.broker, self.domain, self.env, self.tmp / f"{s}.log") for s in server_ids
        ]
        self.servers.update({s.server_id: s for s in new})
        await asyncio.gather(*(s.start() for s in new))

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers.values()))


@pytest.fixture
async def cluster(
    broker_url: str, domain: str, tmp_path: Path
) -> AsyncIterator[tuple[Cluster, SignalSlotable]]:
    cluster = Cluster(broker_url, domain, tmp_path)
    try:
        async with SignalSlotable("client", broker=broker_url, domain=domain) as client:
            yield cluster, client
    finally:
        await cluster.stop()
    # Normal shutdown leaves nothing behind in the shared-memory directory.
    assert sorted(os.listdir(cluster.shm)) == []


async def instantiate(client: SignalSlotable, server: str, class_id: str, device: str, **config: Any) -> None:
    assert await client.request(server, "instantiate", class_id, device, config, timeout=15) == device


async def test_camera_to_processors_to_sink_across_processes(
    cluster: tuple[Cluster, SignalSlotable],
) -> None:
    c, client = cluster
    await c.start("srv-a", "srv-b")
    await instantiate(client, "srv-a", "Camera", "cam-1")  # 128 KiB images: shared memory
    out = ["cam-1:output"]
    await instantiate(client, "srv-b", "Processor", "proc-shm", **{"input.connected_output_channels": out})
    await instantiate(
        client, "srv-b", "Processor", "proc-tcp",
        **{"input.connected_output_channels": out, "input.transport": "tcp"},
    )  # fmt: skip
    await instantiate(
        client,
        "srv-a",
        "Sink",
        "sink-1",
        **{"input.connected_output_channels": ["proc-shm:output", "proc-tcp:output"]},
    )
    for dev in ("proc-shm", "proc-tcp", "sink-1"):
        await until(prop_is(client, dev, "input.missing_connections", []), f"{dev} connected")
    assert await get(client, "proc-shm", "input.connections") == ["cam-1:output=shm"]
    assert await get(client, "proc-tcp", "input.connections") == ["cam-1:output=tcp"]
    assert await client.request("cam-1", "send", 30, timeout=30) == 30
    await client.request("cam-1", "end_run")
    await until(prop_is(client, "sink-1", "eos_count", 1), "end of stream at the sink")
    for proc in ("proc-shm", "proc-tcp"):
        assert await get(client, proc, "frame_ids") == list(range(30))
        assert await get(client, proc, "bad_frames") == 0
        assert await get(client, proc, "units") == ["counts"]
        assert await get(client, proc, "eos_count") == 1
    ids = await get(client, "sink-1", "frame_ids")
    assert sorted(ids) == sorted(list(range(30)) * 2)
    assert await get(client, "sink-1", "bad_frames") == 0
    assert await get(client, "sink-1", "eos_count") == 1  # once, after both outputs ended
    await until(prop_is(client, "proc-shm", "input.processed", 30), "counters published")
    await until(prop_is(client, "cam-1", "output.items_written", 30), "camera counters published")
    config = await client.request("cam-1", "get_configuration")
    assert config["output.items_written"] == 30 and config["output.dropped"] == 0
    assert config["output.connected_inputs"] == ["proc-shm:input", "proc-tcp:input"]


async def test_shared_inputs_split_and_survivors_get_everything_when_one_dies(
    cluster: tuple[Cluster, SignalSlotable],
) -> None:
    c, client = cluster
    await c.start("srv-a", "srv-b", "srv-k")
    await instantiate(
        client, "srv-a", "Camera", "cam-1", frame_elements=1024, **{"output.no_shared_ready": "wait"}
    )
    out = {"input.connected_output_channels": ["cam-1:output"]}
    await instantiate(client, "srv-b", "SharedSink", "shared-1", **out)
    await instantiate(client, "srv-k", "SharedSink", "shared-2", **out)
    await instantiate(client, "srv-b", "Sink", "copy-1", **out)
    for dev in ("shared-1", "shared-2", "copy-1"):
        await until(prop_is(client, dev, "input.missing_connections", []), f"{dev} connected")
    await client.request("cam-1", "send", 40, timeout=30)
    await until(prop_is(client, "copy-1", "frame_ids", list(range(40))), "copy input got everything")

    async def both() -> tuple[list[int], list[int]]:
        return await get(client, "shared-1", "frame_ids"), await get(client, "shared-2", "frame_ids")

    async def split_complete() -> bool:
        one, two = await both()
        return len(one) + len(two) == 40

    await until(split_complete, "shared inputs to get 40 items between them")
    one, two = await both()
    assert sorted(one + two) == list(range(40)) and one and two  # each item once, both got a share
    # SIGKILL the process of one shared input: the other gets everything from now on.
    c.servers["srv-k"].kill()
    await until(
        prop_is(client, "cam-1", "output.connected_inputs", ["copy-1:input", "shared-1:input"]), "loss seen"
    )
    await client.request("cam-1", "send", 20, timeout=30)
    await client.request("cam-1", "end_run")
    await until(prop_is(client, "shared-1", "eos_count", 1), "end of stream")
    assert (await get(client, "shared-1", "frame_ids"))[len(one) :] == list(range(40, 60))
    await until(prop_is(client, "copy-1", "eos_count", 1), "end of stream at the copy input")
    assert await get(client, "copy-1", "frame_ids") == list(range(60))


async def test_inputs_reconnect_when_the_output_device_restarts_elsewhere(
    cluster: tuple[Cluster, SignalSlotable],
) -> None:
    c, client = cluster
    await c.start("srv-a", "srv-b")
    await instantiate(client, "srv-a", "Camera", "cam-1", frame_elements=1024)
    await instantiate(
        client, "srv-b", "Sink", "sink-1", **{"input.connected_output_channels": ["cam-1:output"]}
    )
    await until(prop_is(client, "sink-1", "input.missing_connections", []), "connected")
    await client.request("cam-1", "send", 5)
    await until(prop_is(client, "sink-1", "frame_ids", list(range(5))), "first run")
    await client.request("srv-a", "shutdown_device", "cam-1")
    await until(prop_is(client, "sink-1", "input.missing_connections", ["cam-1:output"]), "output missing")
    # The same device id comes back in another process: the input finds it by itself.
    await instantiate(client, "srv-b", "Camera", "cam-1", frame_elements=1024)
    await until(prop_is(client, "sink-1", "input.missing_connections", []), "reconnected")
    assert await get(client, "sink-1", "input.connections") == ["cam-1:output=local"]
    await client.request("cam-1", "send", 5)
    await until(prop_is(client, "sink-1", "frame_ids", list(range(5)) * 2), "second run")


# --- shared memory on the command line and at server start ---------------------------------------------


def _dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def stale_segment(tmp_path: Path) -> Iterator[tuple[Path, str, Path]]:
    """A shared-memory directory with a segment of a dead process in a session of this test."""
    shm = tmp_path / "shm"
    shm.mkdir()
    session = f"s{uuid.uuid4().hex[:8]}"
    stale = shm / f"karabo_{session}_{_dead_pid()}_0"
    stale.write_bytes(b"\0" * 4096)
    yield shm, session, stale


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "karabo_async", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def test_shm_monitor_cli_lists_and_cleans(stale_segment: tuple[Path, str, Path]) -> None:
    shm, session, stale = stale_segment
    other = shm / f"karabo_other_{_dead_pid()}_0"  # another session: never touched
    other.write_bytes(b"\0" * 4096)
    code, text = _cli("shm", "monitor", "--list", "--dir", str(shm), "--session", "nobody")
    assert code == 0, text
    assert session in text and "DEAD" in text and stale.exists()
    code, text = _cli(
        "shm", "monitor", "--cleanup", "--self-destruct", "--dir", str(shm), "--session", session
    )
    assert code == 0, text
    assert "removed 1 dead owner" in text
    assert not stale.exists() and other.exists()


async def test_server_start_cleans_its_session(
    stale_segment: tuple[Path, str, Path], broker_url: str, domain: str, tmp_path: Path
) -> None:
    shm, session, stale = stale_segment
    env = {**os.environ, "KARABO_SHM_DIR": str(shm), "KARABO_SESSION": session, "PYTHONPATH": str(REPO)}
    server = ServerProcess("srv-clean", broker_url, domain, env, tmp_path / "srv.log")
    await server.start()
    try:
        assert not stale.exists()
    finally:
        assert await server.stop() == 0
