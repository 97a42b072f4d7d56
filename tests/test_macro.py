"""Macros: runs (success, cancel, error), output capture, acting as the current instance, bad
parameters, file loading, and the MacroServer; in-process broker (RabbitMQ for the command line:
tests/test_macro_cli.py)."""

from __future__ import annotations

import asyncio
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from karabo_async import (
    ConfigurationError,
    Device,
    Macro,
    MacroServer,
    Property,
    SignalSlotable,
    State,
    connect_device,
    slot,
)
from karabo_async.errors import MacroError, RemoteError
from karabo_async.hub import Hub
from karabo_async.macro import load_macro_file, pick_macro, run_macro
from karabo_async.signalslot import current_instance

REPO = Path(__file__).resolve().parent.parent


class Counter(Device):
    """A device the macros talk to; remembers who called it."""

    value: int = Property(0)
    callers: list[str] = Property([], readonly=True)

    async def on_initialization(self) -> None:
        self.state = State.ON

    @slot
    def bump(self) -> int:
        from karabo_async.signalslot import current_message

        message = current_message.get()
        self.callers = [*self.callers, message.sender if message else ""]
        self.value = self.value + 1
        return self.value


class Stepper(Macro):
    """Bumps the counter ``times`` times, printing and logging as it goes."""

    times: int = Property(3, ge=1)
    acted_as: str = Property("", readonly=True)

    async def run(self) -> None:
        self.acted_as = current_instance().instance_id
        async with connect_device("counter") as counter:
            for i in range(self.times):
                value = await counter.bump()
                print(f"printed {i}")
                self.log.info("bumped", i=i, value=value)


class Waiter(Macro):
    """Waits until cancelled; records that its finally block ran."""

    started: bool = Property(False, readonly=True)
    cleaned_up: bool = Property(False, readonly=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.began = asyncio.Event()

    async def run(self) -> None:
        try:
            self.started = True
            self.began.set()
            await asyncio.Event().wait()
        finally:
            self.cleaned_up = True


class Failing(Macro):
    """Raises."""

    async def run(self) -> None:
        raise ValueError("the sample is on fire")


class NeedsTarget(Macro):
    """Has a mandatory parameter."""

    target: float = Property(mandatory=True)

    async def run(self) -> None:
        self.log.info("target", target=self.target)


@pytest.fixture
def broker() -> str:
    return f"memory://macro-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def hub(broker: str) -> AsyncIterator[Hub]:
    """A started hub with a ``counter`` device on it."""
    hub = Hub("macro-test-host", broker=broker, domain="m")
    await hub.start()
    counter = Counter(device_id="counter", hub=hub)
    await counter.start_device()
    try:
        yield hub
    finally:
        await counter.stop_device()
        await hub.stop()


async def test_a_run_acts_for_the_macro_and_captures_print_and_log(hub: Hub, capsys: Any) -> None:
    chunks: list[str] = []
    macro = await run_macro(Stepper, {"times": 2}, hub=hub, device_id="stepper-1", on_output=chunks.append)
    assert (macro.outcome, macro.state) == ("finished", State.STOPPED)
    assert macro.acted_as == "stepper-1"
    assert "printed 0\n" in macro.output and "printed 1\n" in macro.output
    assert "info    bumped i=1 value=2" in macro.output
    assert "".join(chunks) == macro.output
    assert "printed" not in capsys.readouterr().out  # captured, not leaked to the process's stdout
    async with SignalSlotable("probe", hub=hub) as probe:
        assert await probe.request("counter", "get", "callers") == ["stepper-1", "stepper-1"]
    assert "stepper-1" not in hub.topology  # offline once done


async def test_output_and_state_are_readable_by_others_while_it_runs(hub: Hub) -> None:
    macro = Waiter(device_id="waiter-1", hub=hub)
    await macro.start_device()
    async with SignalSlotable("watcher", hub=hub) as watcher:
        outputs: list[str] = []
        got = asyncio.Event()

        def on_output(text: str) -> None:
            outputs.append(text)
            got.set()

        await watcher.connect("waiter-1", "output", on_output)
        run = asyncio.ensure_future(macro.execute())
        await asyncio.wait_for(macro.began.wait(), 5)
        info = await watcher.request("waiter-1", "get", "state")
        assert info == "RUNNING"
        assert watcher.topology["waiter-1"]["type"] == "macro"
        await watcher.request("waiter-1", "cancel")
        assert await asyncio.wait_for(run, 5) == "cancelled"
        async with asyncio.timeout(5):
            await got.wait()
        assert "cancel requested" in "".join(outputs)
    assert macro.cleaned_up
    assert (macro.state, macro.outcome) == (State.STOPPED, "cancelled")
    assert macro.status.startswith("cancelled")
    await macro.stop_device()


async def test_cancelling_execute_cancels_the_run_and_reraises(hub: Hub) -> None:
    macro = Waiter(device_id="waiter-2", hub=hub)
    await macro.start_device()
    run = asyncio.ensure_future(macro.execute())
    await asyncio.wait_for(macro.began.wait(), 5)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert macro.cleaned_up and macro.outcome == "cancelled" and macro.state == State.STOPPED
    await macro.stop_device()


async def test_an_exception_ends_in_error_with_the_traceback(hub: Hub) -> None:
    macro = await run_macro(Failing, hub=hub)
    assert (macro.state, macro.outcome) == (State.ERROR, "failed")
    assert "ValueError: the sample is on fire" in macro.status
    assert "Traceback (most recent call last)" in macro.output
    assert "the sample is on fire" in macro.output


async def test_bad_parameters_are_refused_before_going_online(hub: Hub) -> None:
    with pytest.raises(ConfigurationError, match="target"):
        await run_macro(NeedsTarget, {}, hub=hub)
    with pytest.raises(ConfigurationError, match="times"):
        await run_macro(Stepper, {"times": "many"}, hub=hub)
    with pytest.raises(ConfigurationError, match="times"):
        await run_macro(Stepper, {"times": 0}, hub=hub)
    with pytest.raises(ConfigurationError, match="outcome"):
        await run_macro(Stepper, {"outcome": "finished"}, hub=hub)
    assert [i for i, info in hub.topology.items() if info.get("type") == "macro"] == []


def test_parameters_and_results_of_a_macro_class() -> None:
    assert list(Stepper.parameters()) == ["times"]
    assert Stepper.results() == ["acted_as"]
    doc = Stepper.parameter_document()
    assert list(doc["properties"]) == ["times"] and doc["properties"]["times"]["ge"] == 1


def test_loading_macro_files(tmp_path: Path) -> None:
    classes = load_macro_file(REPO / "macros" / "scan.py")
    assert pick_macro(classes, None, "scan.py").__name__ == "Scan"
    broken = tmp_path / "broken.py"
    broken.write_text("from karabo_async import Macro\nclass X(Macro:\n    pass\n")
    with pytest.raises(MacroError, match=r"broken.py:2: syntax error"):
        load_macro_file(broken)
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(MacroError, match="defines no Macro subclass"):
        pick_macro(load_macro_file(empty), None, "empty.py")
    with pytest.raises(MacroError, match="did you mean 'Scan'"):
        pick_macro(classes, "Scna", "scan.py")
    with pytest.raises(MacroError, match="no macro file"):
        load_macro_file(tmp_path / "missing.py")


# --- the macro server -------------------------------------------------------------------------------

SLEEPER = '''
import asyncio
from karabo_async import Macro, Property

class Sleeper(Macro):
    """Sleeps, then says so."""
    seconds: float = Property(0.0, ge=0)

    async def run(self) -> None:
        await asyncio.sleep(self.seconds)
        print("slept", self.seconds)
'''


async def test_macro_server_lists_runs_cancels_and_picks_up_new_files(hub: Hub, tmp_path: Path) -> None:
    folder = tmp_path / "macros"
    folder.mkdir()
    (folder / "sleeper.py").write_text(textwrap.dedent(SLEEPER))
    (folder / "bad.py").write_text("def oops(:\n")
    server = MacroServer({"macro_dirs": [str(folder)], "scan_interval": 0.05}, device_id="macros", hub=hub)
    await server.start_device()
    try:
        async with SignalSlotable("operator", hub=hub) as operator:
            listing = await operator.request("macros", "list_macros")
            assert list(listing) == ["Sleeper"]
            assert listing["Sleeper"]["schema"]["properties"]["seconds"]["type"] == "float"
            assert any("bad.py:1: syntax error" in e for e in server.load_errors)

            finished = asyncio.Queue[tuple[str, str]]()

            def run_finished(run_id: str, outcome: str) -> None:
                finished.put_nowait((run_id, outcome))

            await operator.connect("macros", "run_finished", run_finished)
            run_id = await operator.request("macros", "run_macro", "Sleeper", {"seconds": 0.01})
            assert await asyncio.wait_for(finished.get(), 5) == (run_id, "finished")
            run = await operator.request("macros", "get_run", run_id)
            assert run["outcome"] == "finished" and "slept 0.01" in run["output"]
            assert run["parameters"] == {"seconds": 0.01}

            long_run = await operator.request("macros", "run_macro", "Sleeper", {"seconds": 60})
            assert long_run in server.running
            await operator.request("macros", "cancel_macro", long_run)
            assert await asyncio.wait_for(finished.get(), 5) == (long_run, "cancelled")
            assert server.running == []

            with pytest.raises(RemoteError, match="no macro 'Sleepr'"):
                await operator.request("macros", "run_macro", "Sleepr", {})
            with pytest.raises(RemoteError, match="seconds"):
                await operator.request("macros", "run_macro", "Sleeper", {"seconds": -1})

            (folder / "later.py").write_text(textwrap.dedent(SLEEPER).replace("Sleeper", "Later"))
            deadline = time.monotonic() + 5
            while "Later" not in await operator.request("macros", "list_macros"):
                assert time.monotonic() < deadline, "a new macro file was not picked up"
                await asyncio.sleep(0.05)  # the server scans its folder periodically
            assert server.macros == ["Later", "Sleeper"]
    finally:
        await server.stop_device()
