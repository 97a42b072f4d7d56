"""The data logger end to end: device servers and the logger service as real processes over RabbitMQ,
the archive in SQLite (PostgreSQL in test_datalogger_postgres.py). Also the helpers the other
service tests share (``LoggerSetup``)."""

from __future__ import annotations

import asyncio
import csv
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from karabo_async import Timestamp
from karabo_async.archive import ArrayRef
from karabo_async.errors import (
    ArchiveTypeError,
    ArchiveValueError,
    BeforeDeviceExisted,
    InvalidTimeRange,
    ServiceNotFound,
    UnknownDevice,
    UnknownProperty,
)
from karabo_async.services import api
from karabo_async.services.datalogger import logger_queue
from karabo_async.signalslot import SignalSlotable, pop_default_instance, push_default_instance

PLUGIN = textwrap.dedent(
    '''
    """Devices for the data logger tests."""

    from __future__ import annotations

    import asyncio

    import numpy as np

    from karabo_async import Device, Node, Property, State, slot


    class Settings(Node):
        gain: float = Property(1.0, ge=0.0, le=100.0)
        label: str = Property("")


    class Sensor(Device):
        value: float = Property(0.0, warn_high=100.0, alarm_high=200.0)
        counter: int = Property(0)
        secret: str = Property("", archive=False)
        mode: str = Property("auto", allowed_states=[State.ON])
        settings: Settings = Property(description="a node")
        frame: np.ndarray = Property(np.zeros((4,)), dtype="float64")
        reading: float = Property(0.0, readonly=True)

        async def on_initialization(self) -> None:
            self.state = State.ON

        @slot
        async def count(self, first: int, last: int, pause: float = 0.0) -> int:
            """counter = first..last, one signal each (``pause`` s apart)."""
            for i in range(first, last + 1):
                self.counter = i
                await asyncio.sleep(pause)
            return last

        @slot
        async def big_frame(self) -> None:
            self.frame = np.arange(20000, dtype=np.float64)

        @slot
        async def extend(self) -> None:
            await self.add_properties({"extra": Property(42)})

        @slot
        def go_off(self) -> None:
            self.state = State.OFF
    '''
)

PYTHON = sys.executable
T_PAST = "2000-01-01T00:00:00"


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 20.0, what: str = "condition") -> None:
    """Poll an async condition (the archive offers no event to await); fail naming ``what``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if await check():
                return
        except (UnknownDevice, UnknownProperty, ServiceNotFound):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {seconds} s")
        await asyncio.sleep(0.1)


class LoggerSetup:
    """A device server (``Sensor`` devices) and a logger service, as subprocesses, and a client."""

    def __init__(self, broker: str, domain: str, tmp: Path, database: str | None = None) -> None:
        self.broker = broker
        self.domain = domain
        self.tmp = tmp
        self.database = database or f"sqlite:///{tmp / 'archive.db'}"
        self.plugins = tmp / "plugins"
        self.plugins.mkdir(exist_ok=True)
        (self.plugins / "sensors.py").write_text(PLUGIN)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.client = SignalSlotable(f"test-client-{os.getpid()}", broker=broker, domain=domain)
        self.service_id = "archive"
        self.servers: list[str] = []
        self.logger_args: list[str] = []

    def env(self) -> dict[str, str]:
        return {**os.environ, "KARABO_BROKER": self.broker, "KARABO_DOMAIN": self.domain}

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - the process owns it
        proc = subprocess.Popen(
            [PYTHON, "-m", "karabo_async", *args], env=self.env(), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.procs[name] = proc
        return proc

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [PYTHON, "-m", "karabo_async", *args], env=self.env(), capture_output=True, text=True, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"karabo-async {' '.join(args)} failed: {result.stderr}")
        return result

    async def start_server(self, server_id: str, devices: list[str]) -> None:
        self.servers.append(server_id)
        init = self.tmp / f"{server_id}.json"
        init.write_text(
            '{"devices": [' + ",".join(f'{{"id": "{d}", "class": "Sensor"}}' for d in devices) + "]}"
        )
        self.spawn(
            server_id, "server", "--id", server_id, "--plugin-dir", str(self.plugins), "--init", str(init)
        )
        for device in devices:
            await self.client.topology.wait_for(device, timeout=20)

    async def start_logger(self, *extra: str) -> None:
        self.logger_args = list(extra) or self.logger_args
        self.spawn(
            "logger", "logger", "--database", self.database, "--id", self.service_id,
            "--flush-interval", "0.2", *self.logger_args,
        )  # fmt: skip
        await self.client.topology.wait_for(f"{self.service_id}-manager", timeout=30)
        await self.client.topology.wait_for(f"{self.service_id}-configurations", timeout=30)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=20)

    @property
    def manager(self) -> str:
        return f"{self.service_id}-manager"

    def logger_of(self, server_id: str) -> str:
        return f"{self.service_id}-logger-{server_id}"

    async def flush(self, server_id: str) -> None:
        await self.client.request(self.logger_of(server_id), "flush")

    async def history(self, device: str, path: str, **kwargs: Any) -> api.PropertyHistory:
        return await api.get_property_history(device, path, T_PAST, None, **kwargs)

    async def wait_value(self, device: str, path: str, value: Any, seconds: float = 20.0) -> None:
        async def recorded() -> bool:
            points = await self.history(device, path, max_points=100_000)
            return bool(points) and points[-1][1] == value

        await until(recorded, seconds, f"{device}.{path} == {value!r} archived")

    async def __aenter__(self) -> LoggerSetup:
        await self.client.start()
        push_default_instance(self.client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        pop_default_instance(self.client)
        for name in list(self.procs):
            proc = self.procs.pop(name)
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # the loggers' durable queues outlive them by design: remove them from the shared broker
        for server_id in self.servers:
            queue = logger_queue(self.domain, self.logger_of(server_id))
            for name in (queue, f"{queue}.dropped"):
                await self.client.hub.transport.delete_queue(name)
        await self.client.stop()


@pytest.fixture
async def setup(broker_url: str, domain: str, tmp_path: Path) -> AsyncIterator[LoggerSetup]:
    async with LoggerSetup(broker_url, domain, tmp_path) as s:
        yield s


async def test_changes_history_and_past_configurations(setup: LoggerSetup) -> None:
    await setup.start_server("srvA", ["sensor-1"])
    await setup.start_logger("--exclude", "skip-*", "other-skip")
    c = setup.client
    await setup.wait_value("sensor-1", "counter", 0)

    # every change, in time order, each with its own stamp; one signal per change
    await c.request("sensor-1", "count", 1, 30)
    await setup.wait_value("sensor-1", "counter", 30)
    points = await setup.history("sensor-1", "counter")
    assert [v for _, v in points] == list(range(31)) and not points.reduced
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(points))
    t_mid = Timestamp.now()

    # reduction: the service says so, keeps first and last
    reduced = await setup.history("sensor-1", "counter", max_points=8)
    assert reduced.reduced and reduced.total == 31 and len(reduced) <= 8
    assert reduced[0][1] == 0 and reduced[-1][1] == 30

    # nodes by path, alarms, archive=False never recorded, big arrays as references
    await c.request("sensor-1", "set", {"value": 150.0, "secret": "hush", "settings": {"gain": 7.0}})
    await c.request("sensor-1", "big_frame")
    await setup.wait_value("sensor-1", "settings.gain", 7.0)
    await setup.wait_value("sensor-1", "value", 150.0)
    frame = await setup.history("sensor-1", "frame")
    assert isinstance(frame[-1][1], ArrayRef) and frame[-1][1].shape == (20000,)
    with pytest.raises(UnknownProperty, match="secret"):
        await setup.history("sensor-1", "secret")

    # the configuration as it was, with stamps, and as it is
    then = await api.get_configuration_from_past("sensor-1", t_mid.to_iso())
    assert then["counter"] == 30 and then["settings.gain"] == 1.0 and then["value"] == 0.0
    assert isinstance(then.get_attribute("counter", "timestamp"), Timestamp)
    assert "secret" not in then
    later = await api.get_configuration_from_past("sensor-1", Timestamp.now())
    assert isinstance(later["frame"], ArrayRef) and later["frame"].dtype == "<f8"
    now = await api.get_configuration_from_past("sensor-1", Timestamp.now().to_datetime())
    assert now["settings.gain"] == 7.0 and now["value"] == 150.0 and now["alarm_condition"] == "warn"

    # schema changes at run time: read with the schema in force then
    before_extend = Timestamp.now()
    await c.request("sensor-1", "extend")
    await setup.wait_value("sensor-1", "extra", 42)
    old = await api.get_schema_from_past("sensor-1", before_extend)
    new = await api.get_schema_from_past("sensor-1", Timestamp.now())
    assert old is not None and new is not None
    assert "extra" not in old["properties"] and "extra" in new["properties"]
    assert "extra" not in await api.get_configuration_from_past("sensor-1", before_extend)

    # devices appearing later are logged, excluded ones are not; new and gone are recorded
    await c.request("srvA", "instantiate", "Sensor", "sensor-late")
    await c.request("srvA", "instantiate", "Sensor", "skip-me")
    await setup.wait_value("sensor-late", "counter", 0)
    assignments = await c.request(setup.manager, "get_assignments")
    assert assignments["sensor-late"] == setup.logger_of("srvA") and "skip-me" not in assignments
    await c.request("srvA", "shutdown_device", "sensor-late")

    async def gone() -> bool:
        events = await c.request(setup.manager, "get_events", "sensor-late")
        return [e[1] for e in events] == ["new", "gone"]

    await until(gone, what="new and gone events of sensor-late")
    with pytest.raises(UnknownDevice):
        await setup.history("skip-me", "counter")


async def test_bad_queries_name_the_problem(setup: LoggerSetup) -> None:
    with pytest.raises(ServiceNotFound, match="DataLoggerManager"):
        await setup.history("sensor-1", "counter")
    await setup.start_server("srvB", ["sensor-1"])
    await setup.start_logger()
    await setup.wait_value("sensor-1", "counter", 0)
    with pytest.raises(UnknownDevice, match="nobody"):
        await setup.history("nobody", "counter")
    with pytest.raises(UnknownProperty, match="nothing"):
        await setup.history("sensor-1", "nothing")
    with pytest.raises(BeforeDeviceExisted, match="first record"):
        await api.get_configuration_from_past("sensor-1", "2001-01-01T00:00:00")
    with pytest.raises(InvalidTimeRange, match="after"):
        await api.get_property_history("sensor-1", "counter", "2030-01-01", "2020-01-01")
    with pytest.raises(ArchiveTypeError, match="since"):
        await api.get_property_history("sensor-1", "counter", [2020], None)
    with pytest.raises(ArchiveValueError, match="when"):
        await api.get_configuration_from_past("sensor-1", "yesterday-ish")
    with pytest.raises(ArchiveTypeError, match="max_points"):
        await api.get_property_history("sensor-1", "counter", T_PAST, None, max_points="many")  # type: ignore[arg-type]
    with pytest.raises(ArchiveTypeError, match="device_id"):
        await api.get_property_history(5, "counter", T_PAST)  # type: ignore[arg-type]


async def test_command_line_history_csv_plot_and_config_at(setup: LoggerSetup) -> None:
    await setup.start_server("srvC", ["sensor-1"])
    await setup.start_logger()
    await setup.wait_value("sensor-1", "counter", 0)
    await setup.client.request("sensor-1", "count", 1, 5)
    await setup.wait_value("sensor-1", "counter", 5)
    t = Timestamp.now().to_iso()
    await setup.client.request("sensor-1", "set", {"value": 3.5})
    await setup.wait_value("sensor-1", "value", 3.5)
    out_csv, out_png = setup.tmp / "h.csv", setup.tmp / "h.png"
    setup.cli(
        "history", "sensor-1", "counter", "--since", T_PAST, "--csv", str(out_csv), "--plot", str(out_png)
    )
    with out_csv.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["time", "train_id", "value"] and [r[2] for r in rows[1:]] == [str(i) for i in range(6)]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = setup.cli("history", "sensor-1", "counter", "--since", T_PAST).stdout
    assert len(table.splitlines()) == 7
    diff = setup.cli("config-at", "sensor-1", t, "--diff-now").stdout
    assert "value" in diff and "3.5" in diff and "counter" not in diff


async def test_stopped_logger_loses_nothing_the_broker_kept(setup: LoggerSetup) -> None:
    await setup.start_server("srvD", ["sensor-1"])
    await setup.start_logger()
    await setup.wait_value("sensor-1", "counter", 0)
    setup.stop("logger")  # SIGTERM: a clean stop; its durable queue stays bound
    await setup.client.topology.wait_for(setup.manager, timeout=20, gone=True)
    await setup.client.request("sensor-1", "count", 1, 300)
    await setup.start_logger()
    await until(lambda: _recorded_count(setup, 301), seconds=30, what="301 counter values archived")
    values = [v for _, v in await setup.history("sensor-1", "counter", max_points=10_000)]
    assert values == list(range(301))  # all of them, once each, in order


async def test_sigkill_loses_at_most_the_batch_in_flight(setup: LoggerSetup) -> None:
    await setup.start_server("srvE", ["sensor-1"])
    await setup.start_logger()
    await setup.wait_value("sensor-1", "counter", 0)
    count = 1500
    stream = asyncio.ensure_future(setup.client.request("sensor-1", "count", 1, count, 0.002, timeout=60))
    await until(lambda: _recorded_beyond(setup, 200), what="streaming started")
    setup.stop("logger", signal.SIGKILL)
    killed = Timestamp.now()
    await setup.client.topology.wait_for(setup.manager, timeout=20, gone=True)
    await stream
    await setup.start_logger()
    await setup.wait_value("sensor-1", "counter", count, seconds=30)
    points = await _settled_history(setup)
    values = [v for _, v in points]
    missing = sorted(set(range(count + 1)) - set(values))
    print(f"\nSIGKILL during a {count}-change stream lost {len(missing)} changes: {missing[:3]}...")
    assert len(values) == len(set(values))  # nothing written twice
    if missing:
        # one contiguous run, ending at the kill, no older than a flush interval and the ack delay
        assert missing == list(range(missing[0], missing[-1] + 1))
        before = next(t for t, v in points if v == missing[0] - 1)
        assert killed.time - before.time < 1.0, (
            f"lost back to {killed.time - before.time:.2f} s before the kill"
        )


async def _recorded_count(setup: LoggerSetup, n: int) -> bool:
    return len(await setup.history("sensor-1", "counter", max_points=100_000)) >= n


async def _settled_history(setup: LoggerSetup) -> api.PropertyHistory:
    """The counter history once the logger's backlog is drained: unchanged over a second."""
    previous = await setup.history("sensor-1", "counter", max_points=100_000)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        current = await setup.history("sensor-1", "counter", max_points=100_000)
        if len(current) == len(previous):
            return current
        previous = current
    raise AssertionError("the logger kept writing for 30 s")


async def _recorded_beyond(setup: LoggerSetup, n: int) -> bool:
    points = await setup.history("sensor-1", "counter", max_points=100_000)
    return bool(points) and points[-1][1] >= n


def test_unreachable_database_fails_fast(tmp_path: Path, broker_url: str, domain: str) -> None:
    env = {**os.environ, "KARABO_BROKER": broker_url, "KARABO_DOMAIN": domain}
    for url, words in [
        ("postgresql://postgres@127.0.0.1:1/nowhere", "unavailable"),
        (f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", "unavailable"),
    ]:
        start = time.monotonic()
        result = subprocess.run(
            [PYTHON, "-m", "karabo_async", "logger", "--database", url],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode != 0
        assert words in result.stderr and "ArchiveUnavailable" in result.stderr, result.stderr
        assert time.monotonic() - start < 15
