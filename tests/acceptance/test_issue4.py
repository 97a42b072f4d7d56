"""Acceptance scenarios of issue 4, written from the issue's words: client API, proxies, macros, the
macro server, the command line, the shell, the demo and the pytest harness for device authors.

In-process scenarios use the in-process broker (a fresh ``memory://`` per test); anything that crosses
processes (the command line, a server subprocess, the verbatim client example) uses RabbitMQ.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker_support import TcpProxy

import karabo_async as ka
from karabo_async import (
    AlarmCondition,
    Device,
    DeviceServer,
    Macro,
    Property,
    State,
    connect_device,
    set_wait,
    slot,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]


def _load_plugin(name: str) -> Any:
    """A module of devices/ (a plugin folder, not a package), loaded by path."""
    spec = importlib.util.spec_from_file_location(f"acc4_devices_{name}", REPO / "devices" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


SimulatedMotor = _load_plugin("motor").SimulatedMotor

# --- helpers --------------------------------------------------------------------------------------


def memory() -> str:
    return f"memory://acc4-{uuid.uuid4().hex[:10]}"


def cli_env(broker: str, domain: str) -> dict[str, str]:
    return {**os.environ, "KARABO_BROKER": broker, "KARABO_DOMAIN": domain, "COLUMNS": "200"}


def karabo(
    env: dict[str, str], *args: str, timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``karabo-async ARGS`` through its console script, as an operator types it."""
    exe = REPO / ".venv" / "bin" / "karabo-async"
    return subprocess.run(
        [str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO, input=stdin
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def start_server(env: dict[str, str], server_id: str, log: Path, *extra: str) -> subprocess.Popen[str]:
    """``karabo-async server`` with the simulated devices of devices/, returned once it is online."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "karabo_async", "server", "--id", server_id, "--plugin-dir", "devices",
             "--heartbeat-interval", "0.5", *extra],
            env=env, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO,
        )  # fmt: skip
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        if "online" in line:
            return proc
        if time.monotonic() > deadline:
            break
    stop_process(proc)
    raise AssertionError(f"server did not start: {log.read_text()}")


def stop_process(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


class Gauge(Device):
    """A device for the proxy scenarios: typed properties, options, readonly, state-bound, alarms."""

    gain: float = Property(1.0, ge=0.0, le=10.0)
    count: int = Property(0, ge=0, le=100)
    mode: str = Property("fast", options=["fast", "slow"])
    label: str = Property("x")
    reading: float = Property(0.0, readonly=True, warn_high=50.0, alarm_high=80.0)
    armed_value: float = Property(0.0, allowed_states=[State.ON])
    sets: list[str] = Property([], readonly=True)

    async def on_initialization(self) -> None:
        self.state = State.ON

    def on_reconfigure(self, changes: dict[str, Any]) -> None:
        self.sets = [*self.sets, ",".join(sorted(changes))]  # one entry per `set` message

    @slot
    def read(self, value: float) -> float:
        self.reading = value
        return value

    @slot(allowed_states=[State.ON])
    def disarm(self) -> None:
        self.state = State.OFF

    @slot
    def arm(self) -> None:
        self.state = State.ON

    @slot
    def whoami(self) -> str:
        from karabo_async.signalslot import current_message

        message = current_message.get()
        return message.sender if message is not None else ""


@pytest.fixture
async def sim() -> AsyncIterator[tuple[str, str]]:
    """An in-process server ``sim`` offering the simulated devices of devices/ and Gauge."""
    broker, domain = memory(), "acc4"
    server = DeviceServer(
        "sim", plugin_dirs=[REPO / "devices"], classes=[Gauge], broker=broker, domain=domain,
        heartbeat_interval=0.5, entry_points=False,
    )  # fmt: skip
    async with server:
        yield broker, domain


# --- the client API: the example ---------------------------------------------------------

CLIENT_EXAMPLE = """
import karabo_async as ka
from karabo_async import connect_device, set_wait, wait_until, State

async def main():
    async with ka.connect(broker=None, domain=None):          # a client instance for this process
        async with connect_device("motor-1") as motor:          # live proxy, kept up to date by signals
            await set_wait(motor, target_position=5.0)          # returns when the device has applied it
            await motor.move()                                  # slot call, awaits the reply
            await wait_until(lambda: motor.state == State.ON, timeout=30)
            print(motor.position, motor.position.timestamp)     # values carry their timestamp
ka.run(main())                                                  # runs on uvloop when available
"""


@pytest.fixture(scope="module")
def rabbit_server(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One server subprocess with devices/ on RabbitMQ for this module's cross-process scenarios (a
    domain of its own); yields the environment that points commands at it."""
    env = cli_env(broker_url, f"t_acc4_{uuid.uuid4().hex[:10]}")
    proc = start_server(env, "sim", tmp_path_factory.mktemp("server") / "server.log")
    try:
        yield env
    finally:
        stop_process(proc)
        threading.Thread(
            target=asyncio.run, args=(delete_exchanges(broker_url, env["KARABO_DOMAIN"]),)
        ).start()


async def delete_exchanges(url: str, domain: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(url, timeout=5)
    async with connection:
        for kind in ("slots", "signals", "broadcast", "replies", "heartbeats", "returns"):
            channel = await connection.channel()
            await channel.exchange_delete(f"{domain}.{kind}")


@pytest.fixture
def rabbit_motor(rabbit_server: dict[str, str]) -> Iterator[dict[str, str]]:
    """A fast ``motor-1`` at 0 on the module's server, shut down afterwards; yields the environment."""
    broker, domain = rabbit_server["KARABO_BROKER"], rabbit_server["KARABO_DOMAIN"]

    async def instantiate() -> None:
        async with ka.connect(broker, domain):
            await ka.instantiate("sim", "SimulatedMotor", "motor-1", {"velocity": 10.0})

    async def shutdown() -> None:
        async with ka.connect(broker, domain):
            if "motor-1" in ka.get_devices():
                await ka.shutdown("motor-1")

    asyncio.run(instantiate())
    try:
        yield rabbit_server
    finally:
        asyncio.run(shutdown())


@pytest.mark.rabbitmq
def test_client_example_verbatim_against_a_server_process(
    rabbit_motor: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "client_example.py"
    script.write_text(CLIENT_EXAMPLE)
    result = subprocess.run(
        [sys.executable, str(script)], env=rabbit_motor, capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    position, stamp = result.stdout.split(None, 1)
    assert float(position) == 5.0  # the move was over when wait_until returned: the state went MOVING first
    assert stamp.strip() and stamp.strip() != "None"


async def test_client_example_in_process(sim: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    broker, domain = sim
    async with ka.connect(broker=broker, domain=domain):
        await ka.instantiate("sim", "SimulatedMotor", "motor-1", {"velocity": 10.0})
        async with connect_device("motor-1") as motor:
            await set_wait(motor, target_position=5.0)
            assert motor.target_position == 5.0  # set_wait returned: the proxy shows it
            await motor.move()
            assert motor.state == State.MOVING  # the slot's changes arrived before its reply
            await wait_until(lambda: motor.state == State.ON, timeout=30)
            print(motor.position, motor.position.timestamp)
            assert motor.position == 5.0
            assert isinstance(motor.position.timestamp, ka.Timestamp)
    assert "\n5.0 " in "\n" + capsys.readouterr().out


def test_run_returns_the_result_on_uvloop() -> None:
    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert ka.run(main()).startswith("uvloop")


async def test_module_functions_without_an_instance_say_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="connect"):
        ka.get_devices()


# --- module-level functions ------------------------------------------------------------------------


async def test_every_module_level_function_by_name(sim: tuple[str, str]) -> None:
    broker, domain = sim
    async with ka.connect(broker, domain) as client:
        # the domain
        assert "sim" in ka.get_servers()
        assert {"SimulatedMotor", "Gauge"} <= set(await ka.get_classes("sim"))
        class_schema = await ka.get_class_schema("sim", "Gauge")
        assert "gain" in class_schema.properties and "read" in class_schema.slots
        assert await ka.instantiate("sim", "Gauge", "g1", {"gain": 2.0}) == "g1"
        assert "g1" in ka.get_devices() and ka.get_devices(server="sim") == ka.get_devices("sim")
        assert ka.get_devices(server="nobody") == []
        topology = ka.get_topology()
        assert topology["g1"]["type"] == "device" and topology["sim"]["type"] == "server"
        assert client.instance_id in topology
        schema = await ka.get_schema("g1")
        assert schema.properties["gain"].kind == class_schema.properties["gain"].kind
        config = await ka.get_configuration("g1")
        assert config["gain"] == 2.0 and config.get_attribute("gain", "timestamp") is not None

        # setting and calling, by id and by proxy
        await ka.set_wait("g1", gain=3.0)
        assert (await ka.get_configuration("g1"))["gain"] == 3.0
        assert await ka.execute("g1", "read", 12.5) == 12.5
        g1 = await ka.get_device("g1")
        assert g1.reading == 12.5
        assert await ka.execute(g1, "read", 13.0) == 13.0
        await ka.set_wait(g1, gain=4.0, label="four")
        assert (g1.gain, g1.label) == (4.0, "four")
        await ka.set_no_wait(g1, gain=5.0)
        await wait_until(lambda: g1.gain == 5.0, timeout=5)
        await ka.set_no_wait("g1", label="five")
        assert await ka.wait_until_new(g1.label, timeout=5) == "five"
        assert await wait_until(lambda: g1.gain == 5.0, timeout=1)  # already true: returns at once
        with pytest.raises(TimeoutError):
            await wait_until(lambda: g1.gain == 6.0, timeout=0.2)

        # shutdown: the device is gone once it returns
        await ka.shutdown("g1")
        assert "g1" not in ka.get_devices()
        assert not g1.alive


async def test_lock_refuses_others_and_ends_with_its_holder(sim: tuple[str, str]) -> None:
    broker, domain = sim
    async with ka.connect(broker, domain) as me:
        await ka.instantiate("sim", "Gauge", "g2")
        other_client = ka.SignalSlotable("other-client", broker=broker, domain=domain)
        async with other_client as other, ka.connect_device("g2") as g2, ka.lock(g2):
            await set_wait(g2, gain=2.0)  # the holder may
            with pytest.raises(ka.DeviceLocked, match=f"locked by '{me.instance_id}'"):
                await other.request("g2", "set", {"gain": 3.0})
            with pytest.raises(ka.DeviceLocked, match="locked by"):
                await other.request("g2", "read", 1.0)
        # the lock ended with the block; a holder that goes away without unlocking releases it too
        await ka.set_wait("g2", gain=3.0)
        holder = await ka.connect(broker, domain, instance_id="holder-client")  # now the current instance
        held = ka.lock("g2")
        await held.__aenter__()
        with pytest.raises(ka.DeviceLocked, match="locked by 'holder-client'"):
            await me.request("g2", "set", {"gain": 5.0})
        await holder.stop()  # dies holding the lock; the outer client is current again
        await wait_until(lambda: "holder-client" not in ka.get_topology(), timeout=10)
        deadline = time.monotonic() + 10
        while True:
            try:
                await ka.set_wait("g2", gain=4.0)
                break
            except ka.DeviceLocked:
                assert time.monotonic() < deadline, "the lock outlived its holder"
                await asyncio.sleep(0.05)


async def test_functions_act_for_the_running_device(sim: tuple[str, str]) -> None:
    broker, domain = sim

    class Caller(Device):
        seen: str = Property("", readonly=True)

        @slot
        async def ask(self) -> str:
            self.seen = await ka.execute("g3", "whoami")
            return self.seen

    caller_server = DeviceServer(
        "srv-caller", classes=[Caller], broker=broker, domain=domain, entry_points=False
    )
    async with caller_server, ka.connect(broker, domain) as client:
        await ka.instantiate("sim", "Gauge", "g3")
        assert await ka.execute("g3", "whoami") == client.instance_id
        await ka.instantiate("srv-caller", "Caller", "caller")
        assert await ka.execute("caller", "ask") == "caller"  # the device itself is the caller


# --- proxies ------------------------------------------------------------------------------------


async def test_proxies_are_typed_complete_and_carry_timestamps_and_alarms(sim: tuple[str, str]) -> None:
    broker, domain = sim
    async with ka.connect(broker, domain):
        await ka.instantiate("sim", "Gauge", "g4")
        async with connect_device("g4") as g:
            assert isinstance(g.gain, float) and isinstance(g.count, int) and isinstance(g.label, str)
            assert g.state == State.ON
            names = dir(g)
            assert {"gain", "count", "mode", "reading", "read", "disarm", "state", "alive"} <= set(names)
            with pytest.raises(AttributeError, match="nonsense"):
                _ = g.nonsense
            assert g.gain.timestamp is not None
            before = g.gain.timestamp
            await set_wait(g, gain=2.0)
            assert g.gain.timestamp > before
            assert g.reading.alarm == AlarmCondition.NONE
            await g.read(60.0)
            await wait_until(lambda: g.reading == 60.0, timeout=5)
            assert g.reading.alarm == AlarmCondition.WARN
            await g.read(90.0)
            await wait_until(lambda: g.reading == 90.0, timeout=5)
            assert g.reading.alarm == AlarmCondition.ALARM


async def test_client_side_validation_before_sending(sim: tuple[str, str]) -> None:
    broker, domain = sim
    async with ka.connect(broker, domain):
        await ka.instantiate("sim", "Gauge", "g5")
        async with connect_device("g5") as g:
            # refused on assignment, synchronously: nothing was sent
            for name, value, reason in [
                ("gain", 11.0, "gain"),  # range
                ("count", "many", "count"),  # type
                ("mode", "medium", "mode"),  # options
                ("reading", 1.0, "reading"),  # readonly
            ]:
                with pytest.raises(ka.ReconfigurationError, match=reason):
                    setattr(g, name, value)
                with pytest.raises(ka.ReconfigurationError, match=reason):
                    await set_wait(g, **{name: value})
            await g.disarm()
            await wait_until(lambda: g.state == State.OFF, timeout=5)
            with pytest.raises(ka.ReconfigurationError, match="armed_value"):
                g.armed_value = 1.0  # allowed state
            with pytest.raises(ka.SlotRefused):
                await g.disarm()  # slot not allowed in OFF
            await g.arm()
            await wait_until(lambda: g.state == State.ON, timeout=5)
            assert g.sets == []  # no refused change ever reached the device


async def test_assignments_in_one_loop_iteration_travel_as_one_message(sim: tuple[str, str]) -> None:
    broker, domain = sim
    async with ka.connect(broker, domain):
        await ka.instantiate("sim", "Gauge", "g6")
        async with connect_device("g6") as g:
            g.gain = 3.0
            g.count = 7
            g.label = "both"
            await wait_until(lambda: len(g.sets) == 1, timeout=5)
            assert list(g.sets) == ["count,gain,label"]
            assert (g.gain, g.count, g.label) == (3.0, 7, "both")


async def test_device_death_and_return_with_a_new_schema(sim: tuple[str, str]) -> None:
    broker, domain = sim
    async with ka.connect(broker, domain):
        await ka.instantiate("sim", "Gauge", "dev-x")
        async with connect_device("dev-x") as proxy:
            assert proxy.alive
            await ka.shutdown("dev-x")
            await wait_until(lambda: not proxy.alive, timeout=5)
            assert proxy.state == State.UNKNOWN
            with pytest.raises(ka.DeviceGone):
                await proxy.read(1.0)
            with pytest.raises(ka.DeviceGone):
                await set_wait(proxy, gain=1.0)
            with pytest.raises(ka.DeviceGone):
                proxy.gain = 2.0
            # asked for again while it is gone: no dead proxy handed out
            with pytest.raises(ka.NoSuchInstance):
                await ka.connect_device("dev-x")
            with pytest.raises(ka.NoSuchInstance):
                await ka.get_device("dev-x", timeout=0.2)
            # a device of that id comes back, of another class: the proxy follows by itself
            again = asyncio.ensure_future(ka.get_device("dev-x", timeout=10))
            await ka.instantiate("sim", "SimulatedMotor", "dev-x", {"velocity": 5.0})
            assert (await again).velocity == 5.0
            await wait_until(lambda: proxy.alive, timeout=10)
            assert proxy.velocity == 5.0 and "move" in dir(proxy) and "gain" not in dir(proxy)
            assert proxy.state == State.ON


async def test_get_device_resolves_when_the_device_appears(sim: tuple[str, str]) -> None:
    broker, domain = sim
    async with ka.connect(broker, domain):
        with pytest.raises(ka.NoSuchInstance):
            await ka.connect_device("late")  # connect_device does not wait
        with pytest.raises(ka.NoSuchInstance, match="late"):
            await ka.get_device("late", timeout=0.3)
        waiting = asyncio.ensure_future(ka.get_device("late", timeout=10))
        await ka.instantiate("sim", "Gauge", "late", {"gain": 6.0})
        proxy = await waiting
        assert proxy.alive and proxy.gain == 6.0
        async with ka.get_device("late") as same:
            assert same.gain == 6.0


async def test_connect_device_misses_no_change_and_wait_until_new_wakes_on_the_first(
    sim: tuple[str, str],
) -> None:
    broker, domain = sim
    async with ka.connect(broker, domain):
        await ka.instantiate("sim", "Gauge", "busy")
        async with connect_device("busy") as g:
            # back to back updates: each waiter wakes with the first one after its call
            first = asyncio.ensure_future(ka.wait_until_new(g.reading, timeout=5))
            await asyncio.sleep(0)  # let the waiter register (not a settle: it only starts the task)
            await g.read(1.0)
            await g.read(2.0)
            assert await first == 1.0
            second = asyncio.ensure_future(ka.wait_until_new(g.reading, timeout=5))
            await asyncio.sleep(0)
            await g.read(3.0)
            assert await second == 3.0
        # a change made right after connect_device returned is seen
        for i in range(5):
            async with connect_device("busy") as g:
                await ka.execute("busy", "read", 100.0 + i)
                await wait_until(lambda v=100.0 + i: g.reading == v, timeout=5)


@pytest.mark.rabbitmq
async def test_proxies_go_stale_and_recover_when_the_broker_link_comes_back(
    broker_url: str, domain: str, tcp_proxy: TcpProxy
) -> None:
    server = DeviceServer("srv-stale", classes=[Gauge], broker=broker_url, domain=domain, entry_points=False)
    async with server, ka.connect(tcp_proxy.url(broker_url), domain, heartbeat_interval=0.5):
        await ka.instantiate("srv-stale", "Gauge", "g7")
        async with connect_device("g7") as g:
            assert not g.stale and not g.gain.stale
            await tcp_proxy.cut()
            await wait_until(lambda: g.stale, timeout=10)
            assert g.gain.stale
            tcp_proxy.restore()
            await wait_until(lambda: not g.stale, timeout=30)
            await set_wait(g, gain=9.0)
            assert g.gain == 9.0 and not g.gain.stale


# --- macros -----------------------------------------------------------------------------------------

SCAN_EXAMPLE = '''
from karabo_async import Macro, Property, connect_device, set_wait, wait_until, State

class Scan(Macro):
    """Step a motor and record its position."""
    motor_id: str = Property("motor-1")
    start: float = Property(0.0)
    stop: float = Property(10.0)
    steps: int = Property(5, ge=1)

    async def run(self) -> None:
        async with connect_device(self.motor_id) as motor:
            for i in range(self.steps + 1):
                await set_wait(motor, target_position=self.start + i * (self.stop - self.start) / self.steps)
                await motor.move()
                await wait_until(lambda: motor.state == State.ON)
                self.log.info("step", i=i, position=motor.position)
'''


def step_positions(output: str) -> list[float]:
    return [float(line.rsplit("position=", 1)[1]) for line in output.splitlines() if " step " in line]


def example_scan_class(tmp_path: Path) -> type[Macro]:
    from karabo_async.macro import load_macro_file

    path = tmp_path / "example_scan.py"
    path.write_text(SCAN_EXAMPLE)
    return load_macro_file(path)["Scan"]


async def test_scan_example_verbatim_steps_the_motor_through_every_position(
    sim: tuple[str, str], tmp_path: Path
) -> None:
    from karabo_async.macro import run_macro

    broker, domain = sim
    scan = example_scan_class(tmp_path)
    async with ka.connect(broker, domain):
        await ka.instantiate("sim", "SimulatedMotor", "motor-1", {"velocity": 10.0})
        macro = await run_macro(scan, {"steps": 4, "stop": 2.0}, broker=broker, domain=domain)
        assert macro.outcome == "finished" and macro.state == State.STOPPED, macro.output
        assert step_positions(macro.output) == [0.0, 0.5, 1.0, 1.5, 2.0]


@pytest.mark.rabbitmq
async def test_scan_example_verbatim_against_a_motor_in_another_process(
    rabbit_motor: dict[str, str], tmp_path: Path
) -> None:
    from karabo_async.macro import run_macro

    broker, domain = rabbit_motor["KARABO_BROKER"], rabbit_motor["KARABO_DOMAIN"]
    macro = await run_macro(
        example_scan_class(tmp_path), {"steps": 3, "stop": 1.5}, broker=broker, domain=domain
    )
    assert macro.outcome == "finished", macro.output
    assert step_positions(macro.output) == [0.0, 0.5, 1.0, 1.5]


cleanup_ran: list[str] = []


class Waiter(Macro):
    """Waits until cancelled."""

    seconds: float = Property(30.0, gt=0)
    label: str = Property("w")

    async def run(self) -> None:
        print("started", self.label)
        self.log.info("waiting", seconds=self.seconds)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            cleanup_ran.append(self.label)


class Failing(Macro):
    """Raises."""

    async def run(self) -> None:
        raise ValueError("the sample is not aligned")


class Needs(Macro):
    """Has a mandatory parameter."""

    motor_id: str = Property(mandatory=True)

    async def run(self) -> None:
        print("got", self.motor_id)


async def test_a_running_macro_is_an_instance_and_cancel_runs_its_finally(sim: tuple[str, str]) -> None:
    from karabo_async.macro import run_macro

    broker, domain = sim
    async with ka.connect(broker, domain):
        run = asyncio.ensure_future(
            run_macro(Waiter, {"label": "cancel-me"}, broker=broker, domain=domain, device_id="waiter-1")
        )
        await wait_until(lambda: "waiter-1" in ka.get_topology(), timeout=10)
        assert ka.get_topology()["waiter-1"]["type"] == "macro"
        async with connect_device("waiter-1") as macro:
            await wait_until(lambda: "waiting" in macro.output, timeout=10)
            assert macro.state == State.RUNNING and macro.label == "cancel-me" and macro.seconds == 30.0
            assert "started cancel-me" in macro.output and macro.status
            await macro.cancel()
            finished = await asyncio.wait_for(run, 10)
        assert cleanup_ran[-1] == "cancel-me"
        assert finished.outcome == "cancelled" and finished.state == State.STOPPED
        assert "cancelled" in finished.status

        failed = await run_macro(Failing, broker=broker, domain=domain)
        assert failed.state == State.ERROR and failed.outcome == "failed"
        assert "Traceback" in failed.output and "ValueError: the sample is not aligned" in failed.output

        with pytest.raises(ka.ConfigurationError, match="motor_id"):
            await run_macro(Needs, {}, broker=broker, domain=domain)
        with pytest.raises(ka.ConfigurationError, match="seconds"):
            await run_macro(Waiter, {"seconds": "long"}, broker=broker, domain=domain)


# --- the macro server ---------------------------------------------------------------------------------

LATE_MACRO = '''
from karabo_async import Macro, Property

class Hello(Macro):
    """Says hello."""
    name: str = Property("world")

    async def run(self) -> None:
        print("hello", self.name)
'''


async def test_macro_server_loads_lists_runs_and_cancels(tmp_path: Path) -> None:
    broker, domain = memory(), "acc4ms"
    folder = tmp_path / "macros"
    folder.mkdir()
    for name in ("scan.py", "health_check.py", "config_snapshot.py"):
        (folder / name).write_text((REPO / "macros" / name).read_text())
    (folder / "waiting.py").write_text(
        "import asyncio\nfrom karabo_async import Macro, Property\n\n"
        "class Waiting(Macro):\n    '''Waits.'''\n    seconds: float = Property(30.0)\n\n"
        "    async def run(self) -> None:\n        print('waiting now')\n"
        "        await asyncio.sleep(self.seconds)\n"
    )
    server = DeviceServer(
        "sim", plugin_dirs=[REPO / "devices"], classes=[ka.MacroServer], broker=broker, domain=domain,
        entry_points=False,
    )  # fmt: skip
    async with server, ka.connect(broker, domain):
        await ka.instantiate("sim", "SimulatedMotor", "motor-1", {"velocity": 10.0})
        await ka.instantiate(
            "sim", "MacroServer", "macros", {"macro_dirs": [str(folder)], "scan_interval": 0.1}
        )
        async with connect_device("macros") as ms:
            listing = await ms.list_macros()
            assert {"Scan", "HealthCheck", "ConfigSnapshot", "Waiting"} <= set(listing)
            scan_params = listing["Scan"]["schema"]["properties"]
            assert {"motor_id", "start", "stop", "steps"} <= set(scan_params)
            assert "Step a motor" in listing["Scan"]["description"]

            # a run: its instance id, readable output and results for other clients
            run_id = await ka.execute("macros", "run_macro", "Scan", {"steps": 2, "stop": 1.0})
            assert isinstance(run_id, str) and run_id
            await wait_until(lambda: run_id not in ms.running, timeout=20)
            report = await ms.get_run(run_id)
            assert report["outcome"] == "finished", report
            assert step_positions(report["output"]) == [0.0, 0.5, 1.0]
            assert report["parameters"]["steps"] == 2

            # cancel a run in progress; follow its output through its proxy while it runs
            run_id = await ms.run_macro("Waiting", {"seconds": 30.0})
            async with connect_device(run_id) as run:
                await wait_until(lambda: "waiting now" in run.output, timeout=10)
                assert run.state == State.RUNNING
                await ms.cancel_macro(run_id)
            await wait_until(lambda: run_id not in ms.running, timeout=10)
            assert (await ms.get_run(run_id))["outcome"] == "cancelled"

            # bad input: unknown macro, bad parameters
            with pytest.raises(ka.KaraboError, match="Sacn"):
                await ms.run_macro("Sacn", {})
            with pytest.raises(ka.ConfigurationError, match="steps"):
                await ms.run_macro("Scan", {"steps": 0})

            # a file added while it runs
            (folder / "late.py").write_text(LATE_MACRO)
            await wait_until(lambda: "Hello" in ms.macros, timeout=10)
            run_id = await ms.run_macro("Hello", {"name": "there"})
            await wait_until(lambda: run_id not in ms.running, timeout=10)
            assert "hello there" in (await ms.get_run(run_id))["output"]

            # a broken file is listed, never fatal
            (folder / "broken.py").write_text("class Broken(Macro)\n")
            await wait_until(lambda: any("broken.py" in e for e in ms.load_errors), timeout=10)
            assert ms.alive


# --- the command line -------------------------------------------------------------------------------


def in_parallel(env: dict[str, str], *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda args: karabo(env, *args), commands))


@pytest.mark.rabbitmq
def test_cli_commands_with_global_options_anywhere(rabbit_motor: dict[str, str], broker_url: str) -> None:
    env = rabbit_motor
    domain = env["KARABO_DOMAIN"]
    bare = {k: v for k, v in env.items() if k not in ("KARABO_BROKER", "KARABO_DOMAIN")}
    between = ["get", "--domain", domain, "motor-1", "--json", "position", f"--broker={broker_url}"]
    after, before, topology, schema_dev, schema_class, get_all, started = in_parallel(
        bare,
        # the issue's own example: options after the command's words; and between them, and before
        ["get", "motor-1", "position", "--json", "--broker", broker_url, "--domain", domain],
        [*between, "--timeout", "5"],
        ["--json", "--broker", broker_url, "--domain", domain, "topology"],
        ["schema", "motor-1", "--json", "--broker", broker_url, "--domain", domain],
        ["schema", "sim:SimulatedMotor", "--broker", broker_url, "--domain", domain],
        ["get", "motor-1", "--broker", broker_url, "--domain", domain],
        ["instantiate", "sim", "TemperatureSensor", "temp-1", "--broker", broker_url, "--domain", domain],
    )
    for result in (after, before, topology, schema_dev, schema_class, get_all, started):
        assert result.returncode == 0, (result.args, result.stderr)
    assert json.loads(after.stdout) == json.loads(before.stdout) == {"position": 0.0}
    instances = json.loads(topology.stdout)
    assert instances["motor-1"]["type"] == "device" and instances["sim"]["type"] == "server"
    assert "target_position" in json.loads(schema_dev.stdout)["properties"]
    assert "target_position" in schema_class.stdout and "move" in schema_class.stdout
    assert "velocity" in get_all.stdout and "target_position" in get_all.stdout

    result = karabo(env, "set", "motor-1", "target_position=1.5", "velocity=10")
    assert result.returncode == 0, result.stderr
    moved, killed = in_parallel(env, ["call", "motor-1", "move"], ["kill", "temp-1"])
    assert moved.returncode == 0, moved.stderr
    assert killed.returncode == 0, killed.stderr  # kill returns once the device is gone
    deadline = time.monotonic() + 20
    while True:
        result = karabo(env, "get", "motor-1", "position", "state", "--json")
        if json.loads(result.stdout) == {"position": 1.5, "state": "ON"}:
            break
        assert time.monotonic() < deadline, "the motor never got to 1.5"
    result = karabo(env, "get", "motor-1", "position")  # one property: its bare value
    assert result.stdout.strip() == "1.5"
    assert "temp-1" not in json.loads(karabo(env, "topology", "--json").stdout)


@pytest.mark.rabbitmq
def test_cli_bad_input_gives_one_line_and_a_nonzero_exit(
    rabbit_motor: dict[str, str], tmp_path: Path
) -> None:
    env = rabbit_motor
    broken = tmp_path / "broken.py"
    broken.write_text("from karabo_async import Macro\n\nclass Broken(Macro)\n    pass\n")
    needs = tmp_path / "needs.py"
    needs.write_text(
        "from karabo_async import Macro, Property\n\n"
        "class Needs(Macro):\n    motor_id: str = Property(mandatory=True)\n\n"
        "    async def run(self) -> None:\n        pass\n"
    )
    cases: list[tuple[list[str], str]] = [
        (["get", "motor-9"], "motor-9"),  # unknown device
        (["get", "motor-1", "postion"], "postion"),  # unknown property
        (["call", "motor-1", "mvoe"], "mvoe"),  # unknown slot
        (["set", "motor-1", "velocity=fast"], "velocity"),  # wrong value type
        (["instantiate", "sim", "SimulatedMotor", "x-2", "velocity=fast"], "velocity"),
        (["macro", "run", str(broken)], "syntax error"),  # macro with a syntax error
        (["macro", "run", str(needs)], "motor_id"),  # missing parameter
        (["macro", "run", "macros/scan.py", "steps=many"], "steps"),  # wrong parameter type
    ]
    results = in_parallel(env, *(args for args, _ in cases))
    for (args, name), result in zip(cases, results, strict=True):
        assert result.returncode != 0, args
        assert name in one_line_error(result), (args, result.stderr)
    # --debug shows the traceback
    result = karabo(env, "get", "motor-9", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_cli_without_a_broker_says_what_to_do(domain: str) -> None:
    env = cli_env("amqp://guest:guest@127.0.0.1:1/", domain)
    result = karabo(env, "topology")
    line = one_line_error(result)
    assert "broker" in line and "--broker" in line


def test_python_dash_m_is_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "karabo_async", "--help"], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert result.returncode == 0
    for command in ("topology", "get", "set", "call", "instantiate", "kill", "schema", "monitor", "macro",
                    "server", "shell", "demo"):  # fmt: skip
        assert command in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "karabo_async", "no-such-command"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0


@pytest.mark.rabbitmq
def test_cli_macro_run_streams_its_log_and_exits_zero(rabbit_motor: dict[str, str], tmp_path: Path) -> None:
    env = rabbit_motor
    # one after the other: two scans of one motor at once would fight over it
    with_class = karabo(env, "macro", "run", "macros/scan.py", "Scan", "steps=3", "stop=5")
    without = karabo(env, "macro", "run", "macros/scan.py", "steps=3", "stop=5", "--json")
    assert with_class.returncode == 0, with_class.stderr
    assert step_positions(with_class.stdout) in (
        [0.0, 5 / 3, 10 / 3, 5.0],
        [0.0, 1.6666666666666667, 3.3333333333333335, 5.0],
    )
    assert "finished" in with_class.stdout
    assert without.returncode == 0, without.stderr
    assert json.loads(without.stdout)["outcome"] == "finished"
    assert len(step_positions(without.stderr)) == 4
    example = tmp_path / "example_scan.py"
    example.write_text(SCAN_EXAMPLE)
    result = karabo(env, "macro", "run", str(example), "Scan", "steps=3", "stop=1.5")
    assert result.returncode == 0, result.stderr
    assert step_positions(result.stdout) == [0.0, 0.5, 1.0, 1.5]


@pytest.mark.rabbitmq
async def test_cli_monitor_shows_decoded_traffic_and_stops_on_ctrl_c(rabbit_motor: dict[str, str]) -> None:
    env = rabbit_motor
    proc = await asyncio.create_subprocess_exec(
        str(REPO / ".venv" / "bin" / "karabo-async"), "monitor", "--device", "motor-1", "--type", "request",
        "--type", "reply",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            assert b"monitoring domain" in await proc.stderr.readline()
        async with ka.connect(env["KARABO_BROKER"], env["KARABO_DOMAIN"]) as client:
            assert await ka.execute("motor-1", "get", "velocity") == 10.0
            lines: list[str] = []
            async with asyncio.timeout(30):
                while not any(" reply " in line and "get" in line for line in lines):
                    lines.append((await proc.stdout.readline()).decode())
        request = next(line for line in lines if " request " in line)
        # time, type, sender → target, slot, short body
        assert request[:2].isdigit() and request[2] == ":"
        assert client.instance_id in request and "motor-1" in request and "get" in request
        assert "velocity" in request
        assert "→" in request
        assert all(" heartbeat " not in line and " signal " not in line for line in lines)
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            code = await proc.wait()
    assert code == 0
    assert b"Traceback" not in await proc.stderr.read()


@pytest.mark.rabbitmq
def test_cli_shell_has_the_client_api_top_level_await_and_completion(rabbit_motor: dict[str, str]) -> None:
    script = (
        'motor = await connect_device("motor-1")\n'
        "await set_wait(motor, velocity=2.5)\n"
        'print("VELOCITY", motor.velocity, get_devices())\n'
        "from IPython.core.completer import provisionalcompleter\n"
        "ip = get_ipython()\n"
        "with provisionalcompleter(): ids = [c.text for c in ip.Completer.completions('connect_device(\"mot', 19)]\n"
        "\n"
        "with provisionalcompleter(): attrs = [c.text for c in ip.Completer.completions('motor.velo', 10)]\n"
        "\n"
        "with provisionalcompleter(): slots = [c.text for c in ip.Completer.completions('motor.mo', 8)]\n"
        "\n"
        'print("IDS", ids, "ATTRS", attrs, "SLOTS", slots)\n'
    )
    result = karabo(rabbit_motor, "shell", stdin=script)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "VELOCITY 2.5 ['motor-1']" in result.stdout, result.stdout
    ids_line = next(line for line in result.stdout.splitlines() if "IDS" in line)
    assert "motor-1" in ids_line and "motor.velocity" in ids_line and "motor.move" in ids_line


@pytest.mark.rabbitmq
def test_cli_demo_over_rabbitmq(rabbit_server: dict[str, str]) -> None:
    result = karabo(rabbit_server, "demo")
    assert result.returncode == 0, result.stderr
    assert "RabbitMQ" in result.stdout
    assert "SimulatedMotor" in result.stdout  # the topology
    assert "finished" in result.stdout  # the scan's result
    assert "2.000" in result.stdout


def test_cli_demo_without_a_broker_runs_in_process(domain: str) -> None:
    result = karabo(cli_env("amqp://guest:guest@127.0.0.1:1/", domain), "demo")
    assert result.returncode == 0, result.stderr
    assert "in-process" in result.stdout and "finished" in result.stdout and "2.000" in result.stdout


# --- the pytest harness for device authors ------------------------------------------------------------


def test_the_plugin_is_registered_through_pytest11(pytestconfig: pytest.Config) -> None:
    from importlib.metadata import entry_points

    assert any(ep.value == "karabo_async.testing" for ep in entry_points(group="pytest11"))
    assert pytestconfig.pluginmanager.has_plugin("karabo_async")


async def test_device_context_yields_a_live_proxy(device_context: Any) -> None:
    from karabo_async.testing import wait_for_value

    async with device_context(SimulatedMotor, {"velocity": 10.0}) as motor:
        assert motor.velocity == 10.0 and motor.state == State.ON
        await set_wait(motor, target_position=1.0)
        await motor.move()
        await wait_for_value(motor, "position", 1.0, timeout=10)
        await wait_for_value(motor, "state", State.ON, timeout=10)
        with pytest.raises(AssertionError, match="position"):
            await wait_for_value(motor, "position", 50.0, timeout=0.2)


@pytest.mark.rabbitmq
async def test_device_context_on_rabbitmq_when_asked(device_context: Any, broker_url: str) -> None:
    async with device_context(Gauge, {"gain": 2.0}, broker=broker_url) as gauge:
        assert gauge.gain == 2.0
        await set_wait(gauge, gain=3.0)
        assert gauge.gain == 3.0


async def test_server_context_with_plugin_folders(server_context: Any) -> None:
    from karabo_async.testing import wait_for_value

    async with server_context(plugin_dirs=[REPO / "devices"]) as ctx:
        motor = await ctx.instantiate("SimulatedMotor", "motor-1", {"velocity": 10.0})
        assert "motor-1" in ka.get_devices()
        motor.target_position = 0.5
        await wait_for_value(motor, "target_position", 0.5)
        await motor.move()
        await wait_for_value(motor, "position", 0.5, timeout=10)


def test_docs_testing_page_has_an_example() -> None:
    text = (REPO / "docs" / "testing.md").read_text()
    assert "device_context" in text and "```python" in text and "wait_for_value" in text


@pytest.mark.rabbitmq
async def test_cli_macro_run_when_the_broker_is_lost_mid_command(
    rabbit_motor: dict[str, str], tcp_proxy: TcpProxy
) -> None:
    env = rabbit_motor
    broker, domain = env["KARABO_BROKER"], env["KARABO_DOMAIN"]
    async with ka.connect(broker, domain):
        await ka.set_wait("motor-1", velocity=0.5)
        async with connect_device("motor-1") as motor:
            proc = await asyncio.create_subprocess_exec(
                str(REPO / ".venv" / "bin" / "karabo-async"), "macro", "run", "macros/scan.py",
                "steps=1", "stop=20", "--broker", tcp_proxy.url(broker), "--timeout", "3",
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
            )  # fmt: skip
            await wait_until(
                lambda: motor.state == State.MOVING and motor.target_position == 20.0, timeout=30
            )
            await tcp_proxy.cut()
            async with asyncio.timeout(40):
                out, err = await proc.communicate()
            await motor.stop()
    result = subprocess.CompletedProcess([], proc.returncode or 0, out.decode(), err.decode())
    assert result.returncode != 0, result.stdout
    assert "broker" in one_line_error(result)


class Asker(Macro):
    """Asks a device who called it."""

    device: str = Property("g-ask")
    caller: str = Property("", readonly=True)

    async def run(self) -> None:
        self.caller = await ka.execute(self.device, "whoami")


async def test_shipped_macros_health_check_and_snapshot(sim: tuple[str, str], tmp_path: Path) -> None:
    from karabo_async.macro import load_macro_file, run_macro

    broker, domain = sim
    health = load_macro_file(REPO / "macros" / "health_check.py")["HealthCheck"]
    snapshot = load_macro_file(REPO / "macros" / "config_snapshot.py")["ConfigSnapshot"]
    async with ka.connect(broker, domain):
        await ka.instantiate("sim", "Gauge", "g-ok")
        await ka.instantiate("sim", "Gauge", "g-alarm")
        await ka.execute("g-alarm", "read", 90.0)
        await ka.instantiate("sim", "SimulatedMotor", "m-err", {"velocity": 10.0, "high_limit": 0.5})
        async with connect_device("m-err") as motor:
            await set_wait(motor, target_position=1.0)
            await motor.move()
            await wait_until(lambda: motor.state == State.ERROR, timeout=10)
        checked = await run_macro(health, broker=broker, domain=domain)
        assert checked.outcome == "finished", checked.output
        problems = "\n".join(checked.problems)
        assert "g-alarm" in problems and "m-err" in problems and "g-ok" not in problems

        path = tmp_path / "snap.json"
        saved = await run_macro(
            snapshot, {"devices": ["g-ok", "m-err"], "path": str(path)}, broker=broker, domain=domain
        )
        assert saved.outcome == "finished", saved.output
        written = json.loads(path.read_text())["devices"]
        assert set(written) == {"g-ok", "m-err"} and written["m-err"]["high_limit"] == 0.5

        # inside run(), the module-level functions act for the macro
        await ka.instantiate("sim", "Gauge", "g-ask")
        asked = await run_macro(Asker, broker=broker, domain=domain, device_id="asker-1")
        assert asked.caller == "asker-1"


@pytest.mark.rabbitmq
async def test_macro_server_in_a_server_process_runs_the_scan_example(
    rabbit_motor: dict[str, str], tmp_path: Path
) -> None:
    broker, domain = rabbit_motor["KARABO_BROKER"], rabbit_motor["KARABO_DOMAIN"]
    folder = tmp_path / "macros"
    folder.mkdir()
    (folder / "scan.py").write_text(SCAN_EXAMPLE)
    async with ka.connect(broker, domain):
        assert "MacroServer" in await ka.get_classes("sim")  # every server offers it
        await ka.instantiate("sim", "MacroServer", "macroserver", {"macro_dirs": [str(folder)]})
        try:
            async with connect_device("macroserver") as ms:
                assert ms.macros == ["Scan"]
                schema = (await ms.list_macros())["Scan"]["schema"]["properties"]
                assert schema["steps"]["default"] == 5
                run_id = await ms.run_macro("Scan", {"steps": 3, "stop": 1.5})
                await wait_until(lambda: run_id not in ms.running, timeout=20)
                report = await ms.get_run(run_id)
                assert report["outcome"] == "finished", report
                assert step_positions(report["output"]) == [0.0, 0.5, 1.0, 1.5]
        finally:
            await ka.shutdown("macroserver")


@pytest.mark.rabbitmq
async def test_proxy_of_a_killed_device_process_says_so_and_reconnects_when_it_is_back(
    broker_url: str, domain: str, tmp_path: Path
) -> None:
    env = cli_env(broker_url, domain)
    first = await asyncio.to_thread(start_server, env, "srv-a", tmp_path / "a.log")
    second: subprocess.Popen[str] | None = None
    try:
        async with ka.connect(broker_url, domain, heartbeat_interval=0.5):
            await ka.instantiate("srv-a", "TemperatureSensor", "dev-k")
            async with connect_device("dev-k") as proxy:
                assert proxy.alive and "temperature" in dir(proxy)
                first.send_signal(signal.SIGKILL)  # no goodbye: missing heartbeats tell
                await wait_until(lambda: not proxy.alive, timeout=20)
                assert proxy.state == State.UNKNOWN
                with pytest.raises(ka.DeviceGone):
                    await set_wait(proxy, noise=0.1)
                second = await asyncio.to_thread(start_server, env, "srv-b", tmp_path / "b.log")
                waiting = asyncio.ensure_future(ka.get_device("dev-k", timeout=20))
                await ka.instantiate("srv-b", "SimulatedMotor", "dev-k", {"velocity": 3.0})
                assert (await waiting).velocity == 3.0
                await wait_until(lambda: proxy.alive, timeout=20)  # the same proxy, new schema
                assert proxy.velocity == 3.0 and "move" in dir(proxy) and proxy.state == State.ON
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)


async def test_cli_macro_run_ctrl_c_cancels_the_run_and_its_finally_runs(tmp_path: Path) -> None:
    path = tmp_path / "waiting.py"
    path.write_text(
        "import asyncio\nfrom karabo_async import Macro\n\n"
        "class Waiting(Macro):\n"
        "    async def run(self) -> None:\n"
        "        print('started', flush=True)\n"
        "        try:\n            await asyncio.sleep(60)\n"
        "        finally:\n            print('cleaned up')\n"
    )
    proc = await asyncio.create_subprocess_exec(
        str(REPO / ".venv" / "bin" / "karabo-async"), "macro", "run", str(path), "--broker", memory(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        assert b"started" in await proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 130, err.decode()
    assert b"cleaned up" in out
    assert b"Traceback" not in err
