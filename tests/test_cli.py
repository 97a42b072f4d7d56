"""The ``karabo-async`` command, run as a subprocess against RabbitMQ and a device server subprocess."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_support import TcpProxy
from hypothesis import given
from hypothesis import strategies as st

from karabo_async import SignalSlotable
from karabo_async.commands.common import (
    EXIT_BROKER,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    hoist_global_options,
    parse_assignments,
    parse_value,
)
from karabo_async.errors import CommandLineError

REPO = Path(__file__).resolve().parent.parent

SMALL_DEVICE = '''
import asyncio
from karabo_async import Device, Property, State, slot

class Small(Device):
    """A tiny device for command-line tests."""
    gain: float = Property(1.0, ge=0.0, le=10.0, description="how much")
    label: str = Property("x")
    count: int = Property(0, readonly=True)

    async def on_initialization(self) -> None:
        self.state = State.ON

    @slot
    def bump(self, by: int = 1) -> int:
        self.count = self.count + by
        return self.count

    @slot
    async def slow(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"
'''


def cli_env(broker: str, domain: str) -> dict[str, str]:
    return {**os.environ, "KARABO_BROKER": broker, "KARABO_DOMAIN": domain, "COLUMNS": "200"}


def karabo(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "karabo_async", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error output must be one line, without a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("karabo-async: error: ")
    return lines[0]


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "small.py").write_text(textwrap.dedent(SMALL_DEVICE))
    return folder


def stop_process(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (a clean stop), SIGKILL if it takes more than 10 s; close its pipe."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def start_server(env: dict[str, str], server_id: str, plugin_dir: Path, log: Path) -> subprocess.Popen[str]:
    """A device server subprocess, returned once it says it is online."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "karabo_async",
                "server",
                "--id",
                server_id,
                "--plugin-dir",
                str(plugin_dir),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=REPO,
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    for line in proc.stdout:
        if "online" in line:
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    proc.wait()
    proc.stdout.close()
    raise AssertionError(f"server did not start: {log.read_text()}")


@pytest.fixture
def server(broker_url: str, domain: str, plugin_dir: Path, tmp_path: Path) -> Iterator[str]:
    proc = start_server(cli_env(broker_url, domain), "srv", plugin_dir, tmp_path / "server.log")
    try:
        yield "srv"
    finally:
        stop_process(proc)


# --- argument handling ------------------------------------------------------------------------------

option = st.sampled_from(
    [["--json"], ["--debug"], ["--broker", "amqp://x/"], ["--domain=d1"], ["--timeout", "3"]]
)
word = st.from_regex(r"[a-z][a-z0-9_=.]{0,8}", fullmatch=True)


@given(st.lists(word, min_size=1, max_size=5), st.lists(st.tuples(option, st.integers(0, 5)), max_size=4))
def test_global_options_are_accepted_anywhere(words: list[str], options: list[tuple[list[str], int]]) -> None:
    groups = [[w] for w in words]
    moved: list[str] = []
    for opt, where in options:
        groups.insert(min(where, len(groups)), opt)
        moved.extend(opt)
    argv = [arg for group in groups for arg in group]
    hoisted = hoist_global_options(argv)
    assert hoisted[len(moved) :] == words  # the rest keeps its order
    assert sorted(hoisted[: len(moved)]) == sorted(moved)


def test_subcommands_with_their_own_options_keep_them() -> None:
    assert hoist_global_options(["--json", "shm", "monitor", "--timeout", "5"]) == [
        "--json",
        "shm",
        "monitor",
        "--timeout",
        "5",
    ]


def test_values_parse_as_yaml_scalars() -> None:
    assert parse_assignments(["a=3", "b=2.5", "c=true", "d=hello", "e=[1, 2]", "f=2024-01-01", "g="]) == {
        "a": 3,
        "b": 2.5,
        "c": True,
        "d": "hello",
        "e": [1, 2],
        "f": "2024-01-01",
        "g": "",
    }
    assert parse_value("{unbalanced") == "{unbalanced"
    with pytest.raises(CommandLineError, match="not key=value"):
        parse_assignments(["steps"])


@given(st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.booleans())
def test_scalars_round_trip_through_the_command_line(value: int | float | bool) -> None:
    assert parse_value(json.dumps(value)) == value


# --- against a server -------------------------------------------------------------------------------


def test_inspect_and_command_a_device(broker_url: str, domain: str, server: str) -> None:
    env = cli_env(broker_url, domain)
    result = karabo(env, "instantiate", server, "Small", "dev1", "gain=2.5", "label=hi")
    assert result.returncode == 0, result.stderr
    assert "dev1 started" in result.stdout

    # global options after the subcommand, and in --name=value form
    result = karabo(
        {**env, "KARABO_DOMAIN": "elsewhere"}, "get", "dev1", "gain", "label", "--json", f"--domain={domain}"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"gain": 2.5, "label": "hi"}

    result = karabo(env, "set", "dev1", "gain=4", "label=there")
    assert result.returncode == 0, result.stderr
    assert "dev1.gain = 4.0" in result.stdout
    assert karabo(env, "get", "dev1", "gain").stdout.strip() == "4.0"

    result = karabo(env, "call", "dev1", "bump", "3", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == 3

    result = karabo(env, "topology", "--json")
    instances = json.loads(result.stdout)
    assert instances["dev1"]["type"] == "device" and instances[server]["type"] == "server"
    table = karabo(env, "topology").stdout
    assert "dev1" in table and "Small" in table

    result = karabo(env, "schema", f"{server}:Small")
    assert result.returncode == 0, result.stderr
    assert "gain" in result.stdout and "bump" in result.stdout and "how much" in result.stdout
    assert json.loads(karabo(env, "schema", "dev1", "--json").stdout)["properties"]["gain"]["type"] == "float"

    result = karabo(env, "kill", "dev1")
    assert result.returncode == 0, result.stderr
    result = karabo(env, "get", "dev1")
    assert result.returncode == EXIT_NOT_FOUND
    assert "no instance 'dev1'" in one_line_error(result)


def test_bad_input_gives_one_line_and_an_exit_code(broker_url: str, domain: str, server: str) -> None:
    env = cli_env(broker_url, domain)
    assert karabo(env, "instantiate", server, "Small", "dev2").returncode == 0

    cases = [
        (["set", "dev2", "gain=abc"], EXIT_USAGE, "dev2.gain: 'abc' is not a valid float"),
        (["set", "dev2", "gain=11"], EXIT_USAGE, "less than or equal to 10"),
        (["set", "dev2", "gian=3"], EXIT_USAGE, "no property 'gian' (did you mean 'gain'?)"),
        (["set", "dev2", "count=3"], EXIT_USAGE, "readonly"),
        (["set", "dev2", "gain"], EXIT_USAGE, "not key=value"),
        (["get", "dev2", "gainn"], EXIT_USAGE, "no property 'gainn'"),
        (["call", "dev2", "bumpp"], EXIT_USAGE, "no slot 'bumpp' (did you mean 'bump'?)"),
        (["call", "nobody", "bump"], EXIT_NOT_FOUND, "no instance 'nobody'"),
        (["instantiate", server, "Smal", "dev3"], EXIT_USAGE, "no class 'Smal' (did you mean 'Small'?)"),
        (["instantiate", server, "Small", "dev3", "gain=-1"], EXIT_USAGE, "gain"),
        (["schema", f"{server}:Nope"], EXIT_USAGE, "no class 'Nope'"),
        (["call", "dev2", "slow", "5", "--timeout", "0.5"], 4, "timed out"),
    ]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda case: karabo(env, *case[0]), cases))
    for (args, code, text), result in zip(cases, results, strict=True):
        assert result.returncode == code, (args, result.stderr)
        assert text in one_line_error(result), args
    # nothing of the refused instantiation started
    assert "dev3" not in json.loads(karabo(env, "topology", "--json").stdout)


def test_no_broker_is_a_clear_error(domain: str) -> None:
    env = cli_env("amqp://guest:guest@127.0.0.1:1/", domain)
    result = karabo(env, "topology")
    assert result.returncode == EXIT_BROKER
    assert "broker unavailable" in one_line_error(result)
    result = karabo(env, "topology", "--debug")
    assert "Traceback" in result.stderr


async def test_lost_broker_mid_command(
    broker_url: str, domain: str, server: str, tcp_proxy: TcpProxy
) -> None:
    env = cli_env(broker_url, domain)
    assert karabo(env, "instantiate", server, "Small", "dev4").returncode == 0
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "karabo_async", "call", "dev4", "slow", "30",
        env=cli_env(tcp_proxy.url(broker_url), domain),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )  # fmt: skip
    async with SignalSlotable("watcher", broker=broker_url, domain=domain) as watcher:
        deadline = time.monotonic() + 20
        while await watcher.request("dev4", "get", "last_command") != "slow":
            assert time.monotonic() < deadline, "the slow call never arrived"
    await tcp_proxy.cut()
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    result = subprocess.CompletedProcess([], proc.returncode or 0, out.decode(), err.decode())
    assert result.returncode == EXIT_BROKER, result.stderr
    assert "broker unavailable" in one_line_error(result)


# --- monitor ----------------------------------------------------------------------------------------


async def test_monitor_shows_a_request_and_its_reply(broker_url: str, domain: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "karabo_async",
        "monitor",
        "--json",
        env=cli_env(broker_url, domain),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            ready = await proc.stderr.readline()
        assert b"monitoring domain" in ready, ready
        async with SignalSlotable("bob", broker=broker_url, domain=domain) as bob:
            bob.register_slot(lambda name: f"hello {name}", "greet")
            async with SignalSlotable("alice", broker=broker_url, domain=domain) as alice:
                assert await alice.request("bob", "greet", "alice") == "hello alice"
        seen: list[dict[str, object]] = []
        async with asyncio.timeout(20):
            while not any(r["type"] == "reply" and r["name"] == "greet" for r in seen):
                seen.append(json.loads(await proc.stdout.readline()))
        request = next(r for r in seen if r["type"] == "request")
        assert (request["sender"], request["target"], request["name"], request["body"]) == (
            "alice",
            "bob",
            "greet",
            "alice",
        )
        reply = next(r for r in seen if r["type"] == "reply")
        assert (reply["sender"], reply["target"], reply["body"]) == ("bob", "alice", "hello alice")
        assert any(r["type"] == "topology" and r["name"] == "new" for r in seen)
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            code = await proc.wait()
    assert code == 0


async def test_monitor_keeps_unknown_targets_unknown(broker_url: str, domain: str) -> None:
    """The monitor's bindings must not make calls to nonexistent instances routable."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "karabo_async", "monitor", "--type", "returned", "--json",
        env=cli_env(broker_url, domain),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            await proc.stderr.readline()
        from karabo_async import NoSuchInstance

        async with SignalSlotable("carol", broker=broker_url, domain=domain) as carol:
            with pytest.raises(NoSuchInstance):
                await carol.request("ghost", "anything", timeout=5)
        async with asyncio.timeout(20):
            record = json.loads(await proc.stdout.readline())
        assert (record["type"], record["target"], record["name"]) == ("returned", "ghost", "anything")
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
