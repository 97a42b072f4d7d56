"""Acceptance scenarios of issue 6 (data logger and configuration manager), written from the issue's
words: the client API exactly as its example shows, the ``karabo-async logger/history/config-at/config``
commands as subprocesses, real RabbitMQ, SQLite and PostgreSQL.

One device server (two SimulatedMotors from devices/) and one logger service run for the whole
module; tests that need more start it themselves and leave the shared processes as they found them.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
import yaml

import karabo_async as ka
from karabo_async.services.datalogger import logger_queue

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
SERVICE = "acc"  # --id of the module's logger service
MANAGER = f"{SERVICE}-manager"
PG_ADMIN = os.environ.get("KARABO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1/postgres")

INIT = """
devices:
  - id: motor-1
    class: SimulatedMotor
    config: {velocity: 2.0, serial_number: "SM-0001"}
  - id: motor-2
    class: SimulatedMotor
    config: {velocity: 5.0, serial_number: "SM-0002", low_limit: -50.0, high_limit: 50.0}
"""


# --- the processes of the module --------------------------------------------------------------------


class Stack:
    """Subprocesses of one domain: device servers and logger services, started with the real CLI."""

    def __init__(self, broker: str, domain: str, tmp: Path) -> None:
        self.broker, self.domain, self.tmp = broker, domain, tmp
        self.database = f"sqlite:///{tmp / 'archive.db'}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.queues: set[str] = set()

    def env(self) -> dict[str, str]:
        return {**os.environ, "KARABO_BROKER": self.broker, "KARABO_DOMAIN": self.domain}

    def spawn(self, name: str, *args: str) -> None:
        with open(self.tmp / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                [PYTHON, "-m", "karabo_async", *args], env=self.env(), stdout=out, stderr=subprocess.STDOUT
            )

    def start_logger(
        self, name: str = "logger", service: str = SERVICE, database: str | None = None, *exclude: str
    ) -> None:
        self.spawn(
            name, "logger", "--database", database or self.database, "--id", service,
            *(exclude or ("--exclude", "sim-*", "ignored-*")), "--flush-interval", "0.2",
        )  # fmt: skip

    def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        return proc.wait(timeout=20)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``karabo-async ARGS`` as a user types it (the console script of the venv)."""
        exe = str(Path(PYTHON).parent / "karabo-async")
        result = subprocess.run([exe, *args], env=self.env(), capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"karabo-async {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def close(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        asyncio.run(_cleanup_broker(self.broker, self.domain, self.queues))


async def _cleanup_broker(url: str, domain: str, queues: set[str]) -> None:
    """Loggers' durable queues outlive them by design: remove them, and the domain's exchanges."""
    connection = await aio_pika.connect(url, timeout=5)
    async with connection:
        channel = await connection.channel()
        for queue in queues:
            for name in (queue, f"{queue}.dropped"):
                await channel.queue_delete(name)
        for kind in ("slots", "signals", "broadcast", "replies", "heartbeats", "returns"):
            await channel.exchange_delete(f"{domain}.{kind}")


@pytest.fixture(scope="module")
def stack(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("issue6")
    s = Stack(broker_url, f"t_{uuid.uuid4().hex[:12]}", tmp)
    init = tmp / "motion.yaml"
    init.write_text(INIT)
    s.spawn("motion", "server", "--id", "motion", "--plugin-dir", str(REPO / "devices"), "--init", str(init))
    s.start_logger()
    s.queues.add(logger_queue(s.domain, f"{SERVICE}-logger-motion"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[ka.SignalSlotable]:
    """A client as a script opens one (``ka.connect``), once the module's services are up."""
    async with ka.connect(stack.broker, stack.domain) as c:
        for instance in ("motor-1", "motor-2", MANAGER, f"{SERVICE}-configurations"):
            await c.topology.wait_for(instance, timeout=30)
        await until(lambda: _archived("motor-2", "velocity"), what="the motors archived")
        yield c


async def until(check: Callable[[], Awaitable[Any]], seconds: float = 20.0, what: str = "condition") -> Any:
    """Poll the archive (it offers no event to await) until ``check()`` is truthy."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = await check()
        except (ka.UnknownDevice, ka.UnknownProperty, ka.ServiceNotFound):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {seconds} s")
        await asyncio.sleep(0.1)


async def _archived(device: str, prop: str, value: Any = None, manager: str | None = None) -> bool:
    kwargs = {} if manager is None else {"manager": manager}
    points = await ka.get_property_history(device, prop, "2000-01-01", None, max_points=100_000, **kwargs)
    return bool(points) and (value is None or points[-1][1] == value)


async def move(motor: str, target: float) -> None:
    """Move a SimulatedMotor and wait until the archive shows it arrived (and ON again)."""
    await ka.set_wait(motor, target_position=target)
    await ka.execute(motor, "move")
    await until(lambda: _archived(motor, "position", target), what=f"{motor} at {target} archived")
    await until(lambda: _archived(motor, "state", "ON"), what=f"{motor} ON archived")


async def drive_into_error(motor: str) -> None:
    """A move beyond a soft limit just ahead: the motor stops there in ERROR."""
    position = (await ka.get_configuration(motor))["position"]
    await ka.set_wait(motor, high_limit=position + 0.1, target_position=position + 0.5)
    await ka.execute(motor, "move")
    await until(lambda: _archived(motor, "state", "ERROR"), what=f"{motor} in ERROR archived")


async def recover(motor: str, high_limit: float) -> None:
    await ka.execute(motor, "reset")
    await ka.set_wait(motor, high_limit=high_limit)


# --- the client API, as the issue's example shows it ---------------------------------------------------


async def test_issue_example_property_history(client: ka.SignalSlotable) -> None:
    since = datetime.now(UTC)
    await move("motor-1", 1.0)
    await move("motor-1", 0.0)
    until_ = datetime.now(UTC)

    points = await ka.get_property_history("motor-1", "position", since, until_, max_points=1000)
    assert isinstance(points, list) and len(points) > 10
    assert all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], ka.Timestamp) for p in points)
    stamps = [t for t, _ in points]
    assert stamps == sorted(stamps)
    values = [v for _, v in points]
    assert max(values) == 1.0 and values[-1] == 0.0
    assert not points.reduced and points.total == len(points)

    # the same range as Timestamps, ISO strings and naive (UTC) datetimes gives the same points
    for low, high in [
        (ka.Timestamp.from_datetime(since), ka.Timestamp.from_datetime(until_)),
        (since.isoformat(), until_.isoformat()),
        (since.replace(tzinfo=None), until_.replace(tzinfo=None)),
    ]:
        again = await ka.get_property_history("motor-1", "position", low, high, max_points=1000)
        assert list(again) == list(points), (low, high)

    # more points than max_points: reduced per time bucket keeping first, min, max and last, and said so
    reduced = await ka.get_property_history("motor-1", "position", since, until_, max_points=8)
    assert reduced.reduced and reduced.total == len(points) and len(reduced) <= 8
    kept = [v for _, v in reduced]
    assert kept[0] == values[0] and kept[-1] == 0.0 and 1.0 in kept and min(values) in kept
    assert set(reduced) <= set(points)  # real stored points, not averages


async def test_configuration_and_schema_from_past(client: ka.SignalSlotable) -> None:
    await ka.set_wait("motor-2", velocity=3.0)
    await until(lambda: _archived("motor-2", "velocity", 3.0), what="velocity 3.0 archived")
    when = datetime.now(UTC)
    await ka.set_wait("motor-2", velocity=7.5)
    await until(lambda: _archived("motor-2", "velocity", 7.5), what="velocity 7.5 archived")

    for when_like in (when, ka.Timestamp.from_datetime(when), when.isoformat(), when.replace(tzinfo=None)):
        config = await ka.get_configuration_from_past("motor-2", when_like)
        assert isinstance(config, ka.Hash)
        assert (
            config["velocity"] == 3.0
            and config["low_limit"] == -50.0
            and config["serial_number"] == "SM-0002"
        )
        stamp = config.get_attribute("velocity", "timestamp")
        assert isinstance(stamp, ka.Timestamp) and stamp <= ka.Timestamp.from_datetime(when)
    now = await ka.get_configuration_from_past("motor-2", datetime.now(UTC))
    assert now["velocity"] == 7.5

    schema = await ka.get_schema_from_past("motor-2", when)
    assert schema is not None and "position" in schema["properties"] and "velocity" in schema["properties"]
    assert await ka.get_schema_from_past("motor-2", when.isoformat()) == schema


async def test_errors_name_the_problem(client: ka.SignalSlotable) -> None:
    t0, t1 = "2020-01-01T00:00:00", datetime.now(UTC)
    with pytest.raises(ka.UnknownDevice, match="no-such-motor"):
        await ka.get_property_history("no-such-motor", "position", t0, t1)
    with pytest.raises(ka.UnknownProperty, match="no_such_property"):
        await ka.get_property_history("motor-1", "no_such_property", t0, t1)
    with pytest.raises(ka.BeforeDeviceExisted, match="motor-1"):
        await ka.get_configuration_from_past("motor-1", datetime(2001, 1, 1, tzinfo=UTC))
    with pytest.raises(ka.BeforeDeviceExisted):
        await ka.get_schema_from_past("motor-1", "2001-01-01T00:00:00")
    with pytest.raises(ka.BeforeDeviceExisted):
        await ka.get_property_history("motor-1", "position", "2001-01-01", "2001-01-02")
    with pytest.raises(ka.UnknownDevice, match="no-such-motor"):
        await ka.get_configuration_from_past("no-such-motor", t1)
    # reversed range, wrong types, unreadable times: clear errors, also as the built-in kinds
    with pytest.raises(ka.InvalidTimeRange):
        await ka.get_property_history("motor-1", "position", t1, t0)
    with pytest.raises(ValueError, match=r"since|until|after"):
        await ka.get_property_history("motor-1", "position", t1, t0)
    with pytest.raises(TypeError, match="since"):
        await ka.get_property_history("motor-1", "position", [2020], t1)  # type: ignore[arg-type]
    with pytest.raises(ka.ArchiveTypeError, match="when"):
        await ka.get_configuration_from_past("motor-1", object())  # type: ignore[arg-type]
    with pytest.raises(ka.ArchiveValueError, match="when"):
        await ka.get_schema_from_past("motor-1", "last tuesday")
    with pytest.raises(TypeError, match="max_points"):
        await ka.get_property_history("motor-1", "position", t0, t1, max_points="lots")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="device_id"):
        await ka.get_property_history(1, "position", t0, t1)  # type: ignore[arg-type]


# --- the logger service ---------------------------------------------------------------------------


async def test_later_devices_archived_excluded_ones_not_one_logger_per_server(
    stack: Stack, client: ka.SignalSlotable
) -> None:
    stack.spawn("aux", "server", "--id", "aux", "--plugin-dir", str(REPO / "devices"))
    stack.queues.add(logger_queue(stack.domain, f"{SERVICE}-logger-aux"))
    try:
        await client.topology.wait_for("aux", timeout=30)
        # the classes are offered to any server
        assert {"DataLoggerManager", "DataLogger", "ConfigurationManager"} <= set(await ka.get_classes("aux"))
        for device in ("late-motor", "sim-9", "ignored-motor"):
            await ka.instantiate("aux", "SimulatedMotor", device, {"velocity": 4.0})
        await move("late-motor", 0.5)
        # one logger per device server
        loggers = {
            d for d, info in client.topology.of_type("device").items() if info.get("class") == "DataLogger"
        }
        assert loggers == {f"{SERVICE}-logger-motion", f"{SERVICE}-logger-aux"}
        # both --exclude patterns apply: nothing of those devices is archived
        for device in ("sim-9", "ignored-motor"):
            with pytest.raises(ka.UnknownDevice, match=device):
                await ka.get_property_history(device, "position", "2000-01-01", None)
    finally:
        assert stack.stop("aux") == 0


async def test_logger_queue_survives_a_logger_restart(stack: Stack, client: ka.SignalSlotable) -> None:
    logger = f"{SERVICE}-logger-motion"
    await until(lambda: _archived("motor-2", "velocity"), what="motor-2 archived")
    assert stack.stop("logger") == 0  # SIGTERM: a clean stop
    await client.topology.wait_for(MANAGER, timeout=20, gone=True)
    with pytest.raises(ka.ServiceNotFound, match="DataLoggerManager"):
        await ka.get_property_history("motor-2", "velocity", "2000-01-01", None)

    velocities = [1.25, 1.5, 1.75, 2.25, 2.5]
    for v in velocities:
        await ka.set_wait("motor-2", velocity=v)
    # the named queue keeps collecting while nobody consumes it
    connection = await aio_pika.connect(stack.broker, timeout=5)
    async with connection:
        channel = await connection.channel()

        async def kept() -> bool:
            queue = await channel.declare_queue(logger_queue(stack.domain, logger), passive=True)
            return (queue.declaration_result.message_count or 0) >= len(velocities)

        await until(kept, 10, "the changes waiting in the logger's queue")

    stack.start_logger()
    await client.topology.wait_for(MANAGER, timeout=30)

    async def all_there() -> bool:
        points = await ka.get_property_history("motor-2", "velocity", "2000-01-01", None, max_points=10_000)
        return [v for _, v in points][-len(velocities) :] == velocities

    await until(all_there, what="every velocity set while the logger was stopped archived")
    dropped = await client.request(logger, "get", "broker_dropped")  # the visible count of drops
    assert dropped == 0


async def test_postgresql_database(stack: Stack, client: ka.SignalSlotable) -> None:
    name = f"test_issue6_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    service = "pgarchive"
    stack.queues.add(logger_queue(stack.domain, f"{service}-logger-motion"))
    try:
        url = f"postgresql://postgres@127.0.0.1/{name}"
        stack.start_logger("pglogger", service, url, "--exclude", "sim-*", "--exclude", "ignored-*")
        manager = f"{service}-manager"
        await client.topology.wait_for(manager, timeout=30)
        assert await client.request(manager, "get", "exclude") == ["sim-*", "ignored-*"]
        await ka.set_wait("motor-1", velocity=4.25)
        await until(lambda: _archived("motor-1", "velocity", 4.25, manager), what="velocity in PostgreSQL")
        config = await ka.get_configuration_from_past("motor-1", ka.Timestamp.now(), manager=manager)
        assert config["velocity"] == 4.25 and config["serial_number"] == "SM-0001"
        # the schema was created on first start, versioned
        db = await asyncpg.connect(f"postgresql://postgres@127.0.0.1/{name}")
        try:
            assert await db.fetchval("SELECT count(*) FROM changes") > 0
        finally:
            await db.close()
    finally:
        if "pglogger" in stack.procs:
            assert stack.stop("pglogger") == 0
            await client.topology.wait_for(f"{service}-manager", timeout=20, gone=True)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def test_unreachable_database_fails_fast(stack: Stack, tmp_path: Path) -> None:
    for url in ("postgresql://postgres@127.0.0.1:1/nowhere", f"sqlite:///{tmp_path}/missing/dir/a.db"):
        start = time.monotonic()
        result = stack.cli("logger", "--database", url, "--id", "never", check=False)
        assert result.returncode != 0 and time.monotonic() - start < 15
        assert "unavailable" in result.stderr and "Traceback" not in result.stderr, result.stderr


# --- command line ------------------------------------------------------------------------------------


async def test_cli_history_and_config_at(stack: Stack, client: ka.SignalSlotable) -> None:
    since = ka.Timestamp.now().to_iso()
    await move("motor-1", 0.4)
    middle = ka.Timestamp.now().to_iso()
    await ka.set_wait("motor-1", velocity=1.5)
    await until(lambda: _archived("motor-1", "velocity", 1.5), what="velocity 1.5 archived")
    until_ = ka.Timestamp.now().to_iso()
    expected = await ka.get_property_history("motor-1", "position", since, until_)

    table = stack.cli("history", "motor-1", "position", "--since", since, "--until", until_).stdout
    assert "0.4" in table and len([line for line in table.splitlines() if line.strip()]) >= len(expected)

    out_csv, out_png = stack.tmp / "position.csv", stack.tmp / "position.png"
    as_json = stack.cli(
        "history", "motor-1", "position", "--since", since, "--until", until_,
        "--csv", str(out_csv), "--plot", str(out_png), "--json",
    ).stdout  # fmt: skip
    doc = json.loads(as_json)
    assert [p["value"] for p in doc["points"]] == [v for _, v in expected] and doc["reduced"] is False
    with out_csv.open() as f:
        rows = list(csv.reader(f))
    assert len(rows) == len(expected) + 1  # a header, then every point
    assert [float(r[-1]) for r in rows[1:]] == [v for _, v in expected]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    past = stack.cli("config-at", "motor-1", middle).stdout
    assert "velocity" in past and "position" in past and "SM-0001" in past
    diff = stack.cli("config-at", "motor-1", middle, "--diff-now").stdout
    assert "velocity" in diff and "1.5" in diff and "serial_number" not in diff

    bad = stack.cli("history", "no-such-motor", "position", "--since", since, check=False)
    assert bad.returncode != 0 and "no-such-motor" in bad.stderr and "Traceback" not in bad.stderr


# --- configuration manager ------------------------------------------------------------------------------


async def test_configuration_manager_api(client: ka.SignalSlotable) -> None:
    await ka.set_wait("motor-1", velocity=2.5, low_limit=-20.0)
    await ka.set_wait("motor-2", velocity=6.0)
    before = ka.Timestamp.now()
    await ka.save_configuration("beamtime", ["motor-1", "motor-2"], description="aligned for beam")
    await ka.save_configuration("motor-1-only", ["motor-1"])  # description defaults to ""

    infos = await ka.list_configurations("motor-1")
    assert {i.name for i in infos} == {"beamtime", "motor-1-only"}
    beam = next(i for i in infos if i.name == "beamtime")
    assert beam.description == "aligned for beam" and beam.user and beam.timestamp >= before
    assert [i.name for i in await ka.list_configurations("motor-2")] == ["beamtime"]

    saved = await ka.get_saved_configuration("beamtime", "motor-1")
    assert saved.config["velocity"] == 2.5 and saved.config["low_limit"] == -20.0
    with pytest.raises(ka.ConfigurationExists, match="beamtime"):
        await ka.save_configuration("beamtime", ["motor-2"])
    with pytest.raises(ka.UnknownConfiguration, match="never-saved"):
        await ka.get_saved_configuration("never-saved", "motor-1")

    # drift, then restore everything saved under the name: only reconfigurable properties are applied
    await ka.set_wait("motor-1", velocity=9.0, low_limit=-30.0)
    await ka.set_wait("motor-2", velocity=1.0)
    results = await ka.apply_configuration("beamtime")
    assert set(results) == {"motor-1", "motor-2"}
    assert (
        results["motor-1"].applied == {"velocity": 2.5, "low_limit": -20.0} and not results["motor-1"].refused
    )
    assert results["motor-2"].applied == {"velocity": 6.0}
    assert "position" in results["motor-1"].skipped and "serial_number" in results["motor-1"].skipped
    live = await ka.get_configuration("motor-1")
    assert live["velocity"] == 2.5 and live["low_limit"] == -20.0

    # refused by the device's validation: reported, and nothing of that device changes (atomic)
    await ka.set_wait("motor-1", velocity=9.0, low_limit=-30.0)
    await drive_into_error("motor-1")  # ERROR: target_position may not change now
    results = await ka.apply_configuration("beamtime", ["motor-1"])
    assert set(results) == {"motor-1"}
    r = results["motor-1"]
    assert "target_position" in r.refused and "velocity" in r.refused and not r.applied
    live = await ka.get_configuration("motor-1")
    assert live["velocity"] == 9.0 and live["low_limit"] == -30.0
    await recover("motor-1", 95.0)

    with pytest.raises(TypeError, match="device_ids"):
        await ka.save_configuration("x", 42)  # type: ignore[arg-type]


async def test_config_command_line(stack: Stack, client: ka.SignalSlotable) -> None:
    await ka.set_wait("motor-2", velocity=4.5)
    out = stack.cli("config", "save", "cli-saved", "motor-2", "--description", "saved from the shell").stdout
    assert "cli-saved" in out
    listed = stack.cli("config", "list", "motor-2").stdout
    assert "cli-saved" in listed and "saved from the shell" in listed
    shown = stack.cli("config", "show", "cli-saved", "motor-2").stdout
    assert "velocity" in shown and "4.5" in shown
    await ka.set_wait("motor-2", velocity=8.0)
    diff = stack.cli("config", "show", "cli-saved", "motor-2", "--diff-now").stdout
    assert "velocity" in diff and "8.0" in diff and "serial_number" not in diff
    await ka.save_configuration("cli-fast", ["motor-2"], "velocity 8")
    two = stack.cli("config", "show", "cli-saved", "motor-2", "--diff", "cli-fast").stdout
    velocity = next(line for line in two.splitlines() if line.startswith("velocity"))
    assert "4.5" in velocity and "8.0" in velocity and "serial_number" not in two
    applied = stack.cli("config", "apply", "cli-saved")
    assert "velocity" in applied.stdout
    assert (await ka.get_configuration("motor-2"))["velocity"] == 4.5
    # a refusal: exit code 1, the reason printed, nothing of the device changed
    await ka.set_wait("motor-2", velocity=8.0)
    await drive_into_error("motor-2")
    refused = stack.cli("config", "apply", "cli-saved", "motor-2", check=False)
    assert refused.returncode == 1 and "refused" in refused.stdout and "target_position" in refused.stdout
    listed_json = json.loads(stack.cli("config", "list", "motor-2", "--json").stdout)
    assert {c["name"] for c in listed_json} >= {"cli-saved"}
    assert (await ka.get_configuration("motor-2"))["velocity"] == 8.0
    await recover("motor-2", 50.0)

    taken = stack.cli("config", "save", "cli-saved", "motor-2", check=False)
    assert taken.returncode != 0 and "cli-saved" in taken.stderr


async def test_the_classes_run_on_any_server_in_process(tmp_path: Path) -> None:
    """DataLoggerManager and ConfigurationManager instantiated on an ordinary server (in-process broker)."""
    from karabo_async.server import DeviceServer
    from karabo_async.services.confmanager import ConfigurationManager
    from karabo_async.services.datalogger import DataLogger, DataLoggerManager

    class Axis(ka.Device):
        position: float = ka.Property(0.0)

    url, database = f"memory://{uuid.uuid4().hex}", f"sqlite:///{tmp_path / 'inproc.db'}"
    classes = [Axis, DataLoggerManager, DataLogger, ConfigurationManager]
    async with (
        DeviceServer("srv", classes=classes, broker=url, domain="inproc", entry_points=False),
        ka.connect(url, "inproc"),
    ):
        await ka.instantiate("srv", "Axis", "axis-1")
        await ka.instantiate("srv", "DataLoggerManager", "dlm", {"database": database, "flush_interval": 0.1})
        await ka.instantiate("srv", "ConfigurationManager", "cfg", {"database": database})
        await until(lambda: _archived("axis-1", "position", 0.0), what="axis-1 archived")
        for value in (1.0, 2.0, 3.0):
            await ka.set_wait("axis-1", position=value)
        await until(lambda: _archived("axis-1", "position", 3.0), what="axis-1 changes archived")
        points = await ka.get_property_history("axis-1", "position", "2000-01-01", datetime.now(UTC))
        assert [v for _, v in points] == [0.0, 1.0, 2.0, 3.0]
        await ka.save_configuration("three", "axis-1")
        await ka.set_wait("axis-1", position=7.0)
        assert (await ka.apply_configuration("three"))["axis-1"].applied == {"position": 3.0}


# --- deployment -----------------------------------------------------------------------------------------


def test_docker_compose_has_the_logger_and_postgresql() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    postgres = [n for n, s in services.items() if str(s.get("image", "")).startswith("postgres")]
    assert postgres, "no PostgreSQL service"
    loggers = [n for n, s in services.items() if "logger" in [str(a) for a in s.get("command", [])]]
    assert loggers, "no logger service"
    command = [str(a) for a in services[loggers[0]]["command"]]
    database = command[command.index("--database") + 1]
    assert database.startswith("postgresql://") and postgres[0] in database
    assert postgres[0] in services[loggers[0]].get("depends_on", {})
