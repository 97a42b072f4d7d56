"""``karabo-async macro run``, ``macro list`` and ``demo`` as subprocesses against RabbitMQ, with a
device server subprocess hosting the simulated devices of devices/."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import REPO, cli_env, karabo, one_line_error, start_server, stop_process

from karabo_async.commands.common import EXIT_ERROR, EXIT_USAGE


@pytest.fixture
def motor(broker_url: str, domain: str, tmp_path: Path) -> Iterator[str]:
    """A server with devices/ and a fast motor ``motor-1`` on it."""
    env = cli_env(broker_url, domain)
    proc = start_server(env, "sim", REPO / "devices", tmp_path / "server.log")
    try:
        result = karabo(env, "instantiate", "sim", "SimulatedMotor", "motor-1", "velocity=10")
        assert result.returncode == 0, result.stderr
        yield "motor-1"
    finally:
        stop_process(proc)


def test_macro_run_streams_its_log_and_exits_zero(broker_url: str, domain: str, motor: str) -> None:
    env = cli_env(broker_url, domain)
    result = karabo(env, "macro", "run", "macros/scan.py", "Scan", "steps=2", "stop=1", f"motor_id={motor}")
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stdout.splitlines() if " step " in line]
    assert len(steps) == 3 and "position=1.0" in steps[-1]
    assert "finished in" in result.stdout
    assert json.loads(karabo(env, "get", motor, "position", "--json").stdout) == {"position": 1.0}

    # the other macros of macros/ run against the same domain
    result = karabo(env, "macro", "run", "macros/health_check.py", "--json")
    assert result.returncode == 0, result.stderr
    assert "health check done devices=1 problems=0" in result.stderr  # --json: the log goes to stderr
    assert json.loads(result.stdout)["outcome"] == "finished"
    snapshot = Path(env.get("TMPDIR", "/tmp")) / f"snapshot-{domain}.json"
    result = karabo(env, "macro", "run", "macros/config_snapshot.py", f"path={snapshot}")
    assert result.returncode == 0, result.stderr
    assert json.loads(snapshot.read_text())["devices"][motor]["position"] == 1.0
    snapshot.unlink()


def test_macro_run_bad_input(broker_url: str, domain: str, motor: str, tmp_path: Path) -> None:
    env = cli_env(broker_url, domain)
    broken = tmp_path / "broken.py"
    broken.write_text("from karabo_async import Macro\n\nclass Broken(Macro)\n    pass\n")
    failing = tmp_path / "failing.py"
    failing.write_text(
        "from karabo_async import Macro, connect_device\n\n"
        "class Failing(Macro):\n"
        "    async def run(self) -> None:\n"
        "        async with connect_device('motor-1') as motor:\n"
        "            motor.target_position = 1000.0\n"
    )
    cases = [
        (["macros/scan.py", "steps=zero"], EXIT_USAGE, "invalid parameters for Scan: steps"),
        (["macros/scan.py", "steps=0"], EXIT_USAGE, "greater than or equal to 1"),
        (["macros/scan.py", "step=3"], EXIT_USAGE, "step"),
        (["macros/scan.py", "Scna"], EXIT_USAGE, "did you mean 'Scan'"),
        (["macros/nothing.py"], EXIT_USAGE, "no macro file"),
        ([str(broken)], EXIT_USAGE, "broken.py:3: syntax error"),
    ]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda case: karabo(env, "macro", "run", *case[0]), cases))
    for (args, code, text), result in zip(cases, results, strict=True):
        assert result.returncode == code, (args, result.stderr)
        assert text in one_line_error(result), args
    result = karabo(env, "macro", "run", str(failing))
    assert result.returncode == EXIT_ERROR
    assert "Traceback" in result.stdout and "target_position" in result.stdout  # the macro's own output
    assert "failed:" in result.stdout


def test_macro_list(tmp_path: Path) -> None:
    result = karabo(cli_env("memory://", "x"), "macro", "list", "macros", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert {"Scan", "HealthCheck", "ConfigSnapshot"} <= set(listing)
    assert "positions" not in listing["Scan"]["schema"]["properties"]  # a result, not a parameter


def test_demo_over_rabbitmq_and_in_process(broker_url: str, domain: str) -> None:
    result = karabo(cli_env(broker_url, domain), "demo", "--steps", "2")
    assert result.returncode == 0, result.stderr
    assert "using RabbitMQ" in result.stdout
    assert "SimulatedMotor" in result.stdout and "Scan" in result.stdout
    assert "finished in" in result.stdout and "2.000" in result.stdout

    result = karabo(cli_env("amqp://guest:guest@127.0.0.1:1/", domain), "demo", "--steps", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert "in-process broker" in result.stderr
    report = json.loads(result.stdout)
    assert report["outcome"] == "finished" and report["positions"] == [0.0, 2.0]
