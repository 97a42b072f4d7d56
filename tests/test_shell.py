"""The interactive shell: completion, startup namespace, await on the framework's loop, and a real
IPython session driven through its stdin."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from karabo_async import Device, Property, State, connect_device, get_configuration, slot
from karabo_async.shell import ShellSession, attribute_completions, device_id_completions, namespace

REPO = Path(__file__).resolve().parent.parent


class Stage(Device):
    """A device to complete against."""

    position: float = Property(0.0)
    speed: float = Property(1.0)

    async def on_initialization(self) -> None:
        self.state = State.ON

    @slot
    def park(self) -> str:
        return "parked"


@pytest.fixture
def session() -> Iterator[ShellSession]:
    """A shell session on the in-process broker, with a Stage device on the session's loop."""
    shell = ShellSession(f"memory://shell-{uuid.uuid4().hex[:8]}", "shell")
    shell.start()
    stage = Stage(device_id="stage-1", broker=shell.broker, domain="shell")
    shell.run(stage.start_device())
    try:
        yield shell
    finally:
        shell.run(stage.stop_device())
        shell.stop()


def test_device_ids_complete_in_string_arguments() -> None:
    ids = ["motor-1", "motor-2", "camera"]
    assert device_id_completions('m = await connect_device("mo', ids) == ["motor-1", "motor-2"]
    assert device_id_completions("get_configuration('", ids) == ["camera", "motor-1", "motor-2"]
    assert device_id_completions('print("mo', ids) == []  # not a client function
    assert device_id_completions("connect_device(mo", ids) == []  # not inside a string


@given(st.text(alphabet="abcdefghij-_0123456789", max_size=6))
def test_device_id_completions_are_exactly_the_prefix_matches(prefix: str) -> None:
    ids = ["a-1", "ab_2", "b0", "abc-9", "j"]
    assert device_id_completions(f'get_device("{prefix}', ids) == sorted(
        i for i in ids if i.startswith(prefix)
    )


def test_namespace_has_the_client_api_and_await_runs_on_the_framework_loop(session: ShellSession) -> None:
    names = namespace(session)
    for name in ("connect_device", "set_wait", "wait_until", "get_devices", "State", "ka", "client", "Macro"):
        assert name in names, name
    assert session.device_ids() == ["stage-1"]
    config = session.run(get_configuration("stage-1"))
    assert config["speed"] == 1.0

    async def on_which_loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    assert session.run(on_which_loop()) is session.loop


def test_properties_and_slots_of_proxies_complete(session: ShellSession) -> None:
    proxy = session.run(connect_device("stage-1").__aenter__())
    names = {"stage": proxy, "number": 3}
    assert {"stage.position", "stage.park"} <= set(attribute_completions("stage.p", names))
    assert "stage.speed" not in attribute_completions("stage.p", names)
    assert attribute_completions("number.re", names) == []
    assert attribute_completions("unknown.x", names) == []


def test_shell_session_over_rabbitmq(broker_url: str, domain: str) -> None:
    """IPython itself: piped input, top-level await against a device on RabbitMQ."""

    async def scenario() -> str:
        stage = Stage(device_id="stage-9", broker=broker_url, domain=domain)
        await stage.start_device()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "karabo_async", "shell",
                env={**os.environ, "KARABO_BROKER": broker_url, "KARABO_DOMAIN": domain},
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=REPO,
            )  # fmt: skip
            script = (
                'stage = await connect_device("stage-9")\n'
                "await set_wait(stage, speed=2.5)\n"
                'print("SPEED", stage.speed, "PARK", await stage.park())\n'
            )
            async with asyncio.timeout(60):
                out, _ = await proc.communicate(script.encode())
            assert proc.returncode == 0, out.decode()
            assert stage.speed == 2.5
            return out.decode()
        finally:
            await stage.stop_device()

    output = asyncio.run(scenario())
    assert "SPEED 2.5 PARK parked" in output, output


def test_ipython_completer_offers_device_ids_and_proxy_attributes(session: ShellSession) -> None:
    from IPython.core.completer import provisionalcompleter
    from IPython.core.interactiveshell import InteractiveShell

    from karabo_async.shell import install_completer

    shell = InteractiveShell(user_ns=namespace(session))
    try:
        install_completer(shell, session)

        def complete(line: str) -> set[str]:
            with provisionalcompleter():
                return {line[: c.start] + c.text for c in shell.Completer.completions(line, len(line))}

        assert 'connect_device("stage-1' in complete('connect_device("sta')
        shell.user_ns["stage"] = session.run(connect_device("stage-1").__aenter__())
        assert "stage.speed" in complete("stage.sp")
    finally:
        InteractiveShell.clear_instance()
