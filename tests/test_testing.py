"""The pytest plugin for device authors: fixtures, the wait helper, and the docs page run as tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import karabo_async as ka
from karabo_async import DeviceInitializationError, Property, State, slot
from karabo_async.device import Device
from karabo_async.testing import DeviceContext, ServerContext, wait_for_value

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parent.parent / "docs" / "testing.md"


class Lamp(Device):
    brightness: int = Property(0, ge=0, le=10)

    async def on_initialization(self) -> None:
        self.state = State.ON

    @slot
    async def flash(self) -> None:
        self.brightness = 10


class Broken(Device):
    async def on_initialization(self) -> None:
        raise RuntimeError("no bulb")


def test_the_plugin_is_registered(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("karabo_async")


def test_docs_examples_run_as_tests_through_the_plugin(pytester: pytest.Pytester) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_docs_example="\n".join(blocks))
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


async def test_device_context_yields_a_live_proxy(device_context: type[DeviceContext]) -> None:
    context = device_context(Lamp, {"brightness": 2}, device_id="lamp-1")
    async with context as lamp:
        assert lamp.brightness == 2 and lamp.device_id == "lamp-1"
        assert context.device.brightness == 2  # the device object itself, for white-box checks
        assert ka.get_devices() == ["lamp-1"]  # the client API acts for the context's client
        await lamp.flash()
        assert await wait_for_value(lamp, "brightness", 10) == 10
        await wait_for_value(lamp, "brightness", lambda v: v > 5)
    assert not context.device.online


async def test_contexts_are_isolated(device_context: type[DeviceContext]) -> None:
    async with device_context(Lamp, device_id="same") as one, device_context(Lamp, device_id="same") as two:
        one.brightness = 4
        await wait_for_value(one, "brightness", 4)
        assert two.brightness == 0


async def test_wait_for_value_fails_naming_the_last_value(device_context: type[DeviceContext]) -> None:
    async with device_context(Lamp, {"brightness": 1}) as lamp:
        with pytest.raises(AssertionError, match=r"brightness is 1 after 0.05 s, expected 9"):
            await wait_for_value(lamp, "brightness", 9, timeout=0.05)


async def test_device_context_errors(device_context: type[DeviceContext]) -> None:
    with pytest.raises(DeviceInitializationError, match="no bulb"):
        async with device_context(Broken):
            pass
    with pytest.raises(ka.ConfigurationError, match="brightness"):
        async with device_context(Lamp, {"brightness": 99}):
            pass
    with pytest.raises(TypeError, match="Device subclass"):
        device_context(int)  # type: ignore[arg-type]


@pytest.mark.rabbitmq
async def test_device_context_over_rabbitmq(device_context: type[DeviceContext], broker_url: str) -> None:
    async with device_context(Lamp, {"brightness": 3}, broker=broker_url) as lamp:
        assert lamp.brightness == 3
        await ka.set_wait(lamp, brightness=5)
        assert lamp.brightness == 5


async def test_server_context_loads_plugin_folders(
    server_context: type[ServerContext], tmp_path: Path
) -> None:
    (tmp_path / "first.py").write_text(
        "from karabo_async import Device, Property\nclass First(Device):\n    x: int = Property(1)\n"
    )
    async with server_context(plugin_dirs=[tmp_path], classes=[Lamp]) as ctx:
        assert await ka.get_classes(ctx.server_id) == ["First", "Lamp"]
        first = await ctx.instantiate("First", "first-1", {"x": 5})
        assert first.x == 5
        (tmp_path / "second.py").write_text(
            "from karabo_async import Device, Property\nclass Second(Device):\n    y: int = Property(2)\n"
        )

        def offered() -> Any:
            return "Second" in ka.get_topology()[ctx.server_id].get("classes", {})

        await ka.wait_until(offered, timeout=10)
        second = await ctx.instantiate("Second")
        assert second.y == 2 and second.class_id == "Second"
