"""Acceptance scenarios for issue 3: devices with typed schemas, states and state machines; device
servers that load plugins and run as containers.

Written from the issue's words, as a user would use them: the public API of ``karabo_async``, the
``karabo-async`` command and ``python -m karabo_async`` as subprocesses. In-process scenarios use the
in-process broker (``memory://``); whatever crosses processes runs against RabbitMQ.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import shutil
import signal
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest

import karabo_async as ka
from karabo_async import (
    AccessLevel,
    AlarmCondition,
    ConfigurationError,
    Device,
    DeviceInitializationError,
    DeviceServer,
    Float32,
    Float64,
    Hash,
    IllegalTransition,
    Image,
    InstanceIdInUse,
    Int8,
    Int16,
    Int32,
    Int64,
    Node,
    Property,
    ReconfigurationError,
    SignalSlotable,
    SlotRefused,
    State,
    StateMachine,
    Timestamp,
    Transition,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    UnknownClass,
    schema_of,
    slot,
)

REPO = Path(__file__).resolve().parents[2]
DEVICES = REPO / "devices"
PYTHON = str(REPO / ".venv" / "bin" / "python")
KARABO = str(REPO / ".venv" / "bin" / "karabo-async")


# ==================================================================================================
# The declaration example of the issue, verbatim
# ==================================================================================================


class SimulatedMotor(Device):
    """A motor that moves to a target position at a set velocity."""

    velocity: float = Property(1.0, ge=0.01, le=10.0, unit="mm/s", description="Speed of a move")
    target_position: float = Property(0.0, ge=-100.0, le=100.0, unit="mm", allowed_states=[State.ON])
    position: float = Property(0.0, readonly=True, unit="mm", warn_high=90.0, alarm_high=99.0)
    serial_number: str = Property("", init_only=True)

    async def on_initialization(self) -> None:
        self.state = State.ON

    @slot(allowed_states=[State.ON])
    async def move(self) -> None: ...

    @slot
    async def stop(self) -> None: ...


# ==================================================================================================
# Helpers
# ==================================================================================================


def memory() -> str:
    return f"memory://{uuid.uuid4().hex}"


async def poll(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    """For conditions with no event to await (a subprocess, a scanned folder)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


class Changes:
    """Every ``changed`` message of a device."""

    def __init__(self) -> None:
        self.messages: list[Hash] = []
        self.event = asyncio.Event()

    def __call__(self, changes: Hash) -> None:
        self.messages.append(changes)
        self.event.set()

    def values(self, key: str) -> list[Any]:
        return [m[key] for m in self.messages if key in m]

    async def until(self, predicate: Callable[[Changes], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self.event.clear()
                await self.event.wait()


@asynccontextmanager
async def hosted(
    *classes: type[Device], url: str | None = None, domain: str = "karabo"
) -> AsyncIterator[tuple[DeviceServer, SignalSlotable]]:
    """A server with these classes and an operator client, on the in-process broker."""
    url = url or memory()
    server_id, operator_id = f"srv-{uuid.uuid4().hex[:6]}", f"op-{uuid.uuid4().hex[:6]}"
    async with (
        DeviceServer(server_id, classes=classes, broker=url, domain=domain, entry_points=False) as server,
        SignalSlotable(operator_id, broker=url, domain=domain) as operator,
    ):
        yield server, operator


async def watch(operator: SignalSlotable, device_id: str) -> Changes:
    changes = Changes()
    name = f"changes_{uuid.uuid4().hex[:8]}"
    operator.register_slot(changes, name)
    await operator.connect(device_id, "changed", name)
    return changes


# ==================================================================================================
# Declaring a device
# ==================================================================================================


async def test_declaration_example_runs_on_a_server_and_has_every_standard_property() -> None:
    async with hosted(SimulatedMotor) as (server, operator):
        started = await operator.request(
            server.server_id, "instantiate", "SimulatedMotor", "motor-1", {"velocity": 2.0}, timeout=5
        )
        assert started == "motor-1"
        motor = server.devices["motor-1"]
        assert isinstance(motor, SimulatedMotor)
        assert motor.state is State.ON  # on_initialization ran once online
        assert motor.velocity == 2.0
        config = await operator.request("motor-1", "get_configuration", timeout=5)
        for key in (
            "device_id", "class_id", "server_id", "host", "pid", "state", "status",
            "alarm_condition", "locked_by", "last_command", "log_level",
        ):  # fmt: skip
            assert key in config, key
        assert config["device_id"] == "motor-1"
        assert config["class_id"] == "SimulatedMotor"
        assert config["server_id"] == server.server_id
        assert config["pid"] == os.getpid()
        assert config["host"]
        assert config["state"] == "ON"
        assert config["alarm_condition"] == "none"
        assert config["locked_by"] == ""
        assert config["log_level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        await operator.request("motor-1", "move", timeout=5)
        assert await operator.request("motor-1", "get", "last_command", timeout=5) == "move"
        # the same attributes on the instance
        assert (motor.device_id, motor.class_id, motor.server_id) == ("motor-1", "SimulatedMotor",
                                                                      server.server_id)  # fmt: skip
        assert motor.host and motor.pid == os.getpid() and motor.alarm_condition is AlarmCondition.NONE
        assert isinstance(motor.status, str) and motor.locked_by == "" and motor.last_command == "move"


def test_schema_of_the_example_has_its_properties_attributes_and_slots() -> None:
    schema = schema_of(SimulatedMotor)
    for key in ("velocity", "target_position", "position", "serial_number", "state", "status"):
        assert key in schema.properties
    assert {"move", "stop"} <= set(schema.slots)
    doc = schema.to_document()
    velocity = doc["properties"]["velocity"]
    assert velocity["type"] == "float"
    assert velocity["default"] == 1.0
    assert (velocity["ge"], velocity["le"], velocity["unit"]) == (0.01, 10.0, "mm/s")
    assert velocity["description"] == "Speed of a move"
    assert velocity["access_mode"] == "reconfigurable"
    assert doc["properties"]["target_position"]["allowed_states"] == ["ON"]
    position = doc["properties"]["position"]
    assert position["access_mode"] == "readonly"
    assert (position["warn_high"], position["alarm_high"]) == (90.0, 99.0)
    assert doc["properties"]["serial_number"]["access_mode"] == "init_only"
    assert doc["slots"]["move"]["allowed_states"] == ["ON"]
    # a pydantic model does the validation
    assert isinstance(schema.model, type) and issubclass(schema.model, pydantic.BaseModel)
    with pytest.raises(pydantic.ValidationError):
        schema.model.model_validate({"velocity": "fast"})
    # JSON Schema with our attributes, for forms
    js = schema.json_schema()
    json.dumps(js)  # plain JSON
    props = js["properties"]
    assert props["velocity"]["x-karabo"]["unit"] == "mm/s"
    assert props["target_position"]["x-karabo"]["allowed_states"] == ["ON"]
    assert props["position"]["x-karabo"]["access_mode"] == "readonly"
    assert "move" in js["x-karabo"]["slots"]


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


class Optics(Node):
    focus: float = Property(1.0, ge=0.0, le=10.0, unit="m", metric_prefix="milli")
    name: str = Property("lens")


class Everything(Device):
    """One property of every type the issue lists."""

    flag: bool = Property(False)
    count: int = Property(0)
    i8: Int8 = Property(0)
    i16: Int16 = Property(0)
    i32: Int32 = Property(0)
    i64: Int64 = Property(0)
    u8: UInt8 = Property(0)
    u16: UInt16 = Property(0)
    u32: UInt32 = Property(0)
    u64: UInt64 = Property(0)
    f32: Float32 = Property(0.0)
    f64: Float64 = Property(0.0)
    ratio: float = Property(0.5, gt=0.0, lt=1.0)
    text: str = Property("")
    raw: bytes = Property(b"")
    flags: list[bool] = Property([])
    counts: list[int] = Property([1, 2], ge=0)
    values: list[float] = Property([])
    names: list[str] = Property([])
    blobs: list[bytes] = Property([])
    spectrum: np.ndarray = Property(np.zeros(4), dtype="float32", shape=(4,))
    mode: Mode = Property(Mode.FAST)
    color: str = Property("red", options=["red", "green", "blue"])
    optics: Optics = Property(description="the lens")
    frame: Image = Property(Image(np.zeros((2, 3), dtype=np.uint16)), readonly=True)
    extra: Hash = Property(Hash())
    secret: int = Property(0, required_access_level=AccessLevel.EXPERT, displayed_name="Secret knob",
                           tags=["expert", "hidden"], archive=False)  # fmt: skip
    port: int = Property(mandatory=True, ge=1, le=65535)


def test_every_property_type_validates_good_values_and_refuses_bad_ones() -> None:
    schema = schema_of(Everything)
    v = schema.validate_value
    assert v("flag", True) is True
    with pytest.raises(ValueError):
        v("flag", 1)
    assert v("count", 5) == 5
    with pytest.raises(ValueError):
        v("count", 1.5)
    for name, low, high in (
        ("i8", -128, 127), ("i16", -(2**15), 2**15 - 1), ("i32", -(2**31), 2**31 - 1),
        ("i64", -(2**63), 2**63 - 1), ("u8", 0, 255), ("u16", 0, 2**16 - 1), ("u32", 0, 2**32 - 1),
        ("u64", 0, 2**64 - 1),
    ):  # fmt: skip
        assert v(name, low) == low and v(name, high) == high
        with pytest.raises(ValueError):
            v(name, low - 1)
        with pytest.raises(ValueError):
            v(name, high + 1)
    assert v("f32", 1.5) == 1.5
    with pytest.raises(ValueError):
        v("f32", 1e300)
    assert v("f64", 1e300) == 1e300
    assert v("ratio", 0.5) == 0.5
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError):
            v("ratio", bad)
    assert v("text", "x") == "x"
    with pytest.raises(ValueError):
        v("text", 3)
    assert v("raw", b"\x00\x01") == b"\x00\x01"
    with pytest.raises(ValueError):
        v("raw", 3)
    assert v("flags", [True, False]) == [True, False]
    assert v("counts", [1, 2, 3]) == [1, 2, 3]
    with pytest.raises(ValueError):
        v("counts", [1, -1])
    with pytest.raises(ValueError):
        v("counts", ["a"])
    assert v("values", [1.0, 2.5]) == [1.0, 2.5]
    assert v("names", ["a", "b"]) == ["a", "b"]
    assert v("blobs", [b"a"]) == [b"a"]
    arr = v("spectrum", [1, 2, 3, 4])
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.shape == (4,)
    with pytest.raises(ValueError):
        v("spectrum", [1, 2, 3])  # wrong shape
    assert v("mode", "slow") is Mode.SLOW
    assert v("mode", Mode.FAST) is Mode.FAST
    with pytest.raises(ValueError):
        v("mode", "medium")
    assert v("color", "green") == "green"
    with pytest.raises(ValueError):
        v("color", "purple")
    assert v("optics.focus", 2) == 2.0
    with pytest.raises(ValueError):
        v("optics.focus", 20.0)
    image = v("frame", Image(np.ones((4, 5), dtype=np.uint8), encoding="GRAY", metadata={"n": 1}))
    assert isinstance(image, Image) and image.encoding == "GRAY" and image.metadata == {"n": 1}
    assert image.data.shape == (4, 5)
    with pytest.raises(ValueError):
        v("frame", Image(np.ones((4, 5, 3), dtype=np.uint8), encoding="GRAY"))
    extra = v("extra", {"a": 1, "b": {"c": 2}})
    assert isinstance(extra, Hash) and extra["b.c"] == 2
    with pytest.raises(ValueError):
        v("extra", 5)


def test_every_attribute_reaches_the_schema_document() -> None:
    doc = schema_of(Everything).to_document()
    props = doc["properties"]
    assert [props[k]["type"] for k in ("i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "f32", "f64")] == [
        "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64",
    ]  # fmt: skip
    assert props["flags"]["type"] == "list[bool]"
    assert props["spectrum"]["type"] == "ndarray"
    assert props["spectrum"]["dtype"] == "float32" and list(props["spectrum"]["shape"]) == [4]
    assert props["mode"]["type"] == "enum" and list(props["mode"]["enum_values"]) == ["fast", "slow"]
    assert list(props["color"]["options"]) == ["red", "green", "blue"]
    assert props["optics"]["type"] == "node" and props["optics"]["description"] == "the lens"
    assert props["optics.focus"]["unit"] == "m" and props["optics.focus"]["metric_prefix"] == "milli"
    assert props["frame"]["type"] == "image"
    assert props["extra"]["type"] == "hash"
    assert (props["ratio"]["gt"], props["ratio"]["lt"]) == (0.0, 1.0)
    secret = props["secret"]
    assert secret["required_access_level"] == int(AccessLevel.EXPERT)
    assert secret["displayed_name"] == "Secret knob"
    assert list(secret["tags"]) == ["expert", "hidden"]
    assert secret["archive"] is False and props["count"]["archive"] is True
    assert props["port"]["mandatory"] is True
    assert (
        AccessLevel.OBSERVER
        < AccessLevel.USER
        < AccessLevel.OPERATOR
        < AccessLevel.EXPERT
        < AccessLevel.ADMIN
    )
    assert ka.Schema.from_document(doc).validate_value("u8", 7) == 7


def test_instantiation_configuration_refuses_missing_mandatory_unknown_and_readonly_keys() -> None:
    with pytest.raises(ConfigurationError) as info:
        Everything({"count": "x", "nonsense": 1, "frame": None}, broker=memory())
    text = str(info.value)
    keys = [key for key, _ in info.value.errors]
    for culprit in ("count", "nonsense", "frame", "port"):
        assert culprit in keys, (culprit, text)
        assert culprit in text


async def test_per_instance_schema_when_a_device_adds_properties_at_run_time() -> None:
    class Growing(Device):
        @slot
        async def grow(self) -> None:
            await self.add_properties({"temperature": Property(20.0, unit="degC", readonly=True)})

    async with hosted(Growing) as (server, operator):
        await server.instantiate("Growing", "grow-1", {})
        before = await operator.request("grow-1", "get_schema", timeout=5)
        assert "temperature" not in before["properties"]
        await operator.request("grow-1", "grow", timeout=5)
        after = await operator.request("grow-1", "get_schema", timeout=5)
        assert after["properties"]["temperature"]["unit"] == "degC"
        assert "temperature" not in schema_of(Growing).properties  # the class schema is unchanged
        assert await operator.request("grow-1", "get", "temperature", timeout=5) == 20.0


# ==================================================================================================
# Behaviour: assignment, reconfiguration, slots, lifecycle, alarms
# ==================================================================================================


class Stage(Device):
    """A device to exercise assignment, reconfiguration and hooks."""

    velocity: float = Property(1.0, ge=0.01, le=10.0, unit="mm/s")
    target_position: float = Property(0.0, ge=-100.0, le=100.0, allowed_states=[State.ON])
    position: float = Property(0.0, readonly=True, warn_high=90.0, alarm_high=99.0)
    temperature: float = Property(20.0, readonly=True, warn_low=5.0, alarm_low=0.0)
    serial_number: str = Property("", init_only=True)
    secret: int = Property(0, required_access_level=AccessLevel.EXPERT)
    label: str = Property("a")

    def __init__(self, configuration: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(configuration, **kwargs)
        self.seen_in_constructor = dict(configuration or {})
        self.velocity_in_constructor = self.velocity
        self.pre: list[dict[str, Any]] = []
        self.post: list[dict[str, Any]] = []
        self.exceptions: list[tuple[str, Exception]] = []
        self.moves = 0
        self.initializations = 0

    async def on_initialization(self) -> None:
        self.initializations += 1
        self.state = State.ON

    async def pre_reconfigure(self, changes: dict[str, Any]) -> bool:
        self.pre.append(dict(changes))
        if changes.get("label") == "forbidden":
            raise ValueError("label 'forbidden' is vetoed")
        return changes.get("label") != "no"

    async def on_reconfigure(self, changes: dict[str, Any]) -> None:
        self.post.append(dict(changes))

    async def on_exception(self, slot: str, exc: Exception) -> None:
        self.exceptions.append((slot, exc))

    @slot(allowed_states=[State.ON])
    async def move(self) -> None:
        self.moves += 1
        self.state = State.MOVING

    @slot
    async def halt(self) -> None:
        self.state = State.ON

    @slot
    async def burst(self) -> None:
        """Three changes in one loop iteration."""
        self.position = 1.0
        self.label = "b"
        self.position = 2.0

    @slot
    async def fail(self) -> None:
        raise RuntimeError("motor stalled")

    @slot
    def set_position(self, value: float) -> None:
        self.position = value

    @slot
    def set_temperature(self, value: float) -> None:
        self.temperature = value


async def test_assignment_validates_stamps_and_publishes_one_message_per_loop_iteration() -> None:
    async with hosted(Stage) as (server, operator):
        await server.instantiate("Stage", "stage-1", {"velocity": 2})
        stage = server.devices["stage-1"]
        changes = await watch(operator, "stage-1")
        with pytest.raises((ValueError, TypeError)):
            stage.position = "far"
        assert stage.position == 0.0  # not applied
        with pytest.raises(ValueError):
            stage.velocity = 50.0  # beyond le
        assert stage.velocity == 2.0
        before = time.time()
        await operator.request("stage-1", "burst", timeout=5)
        await changes.until(lambda c: any("label" in m for m in c.messages))
        burst = [m for m in changes.messages if "label" in m]
        assert len(burst) == 1  # all three assignments in one message
        message = burst[0]
        assert message["position"] == 2.0 and message["label"] == "b"
        keys = [k for k in message if k in ("position", "label")]
        assert keys == ["label", "position"]  # in order of the latest change
        stamp = message.get_attribute("position", "timestamp")
        assert isinstance(stamp, Timestamp)
        config = await operator.request("stage-1", "get_configuration", timeout=5)
        stamp2 = config.get_attribute("position", "timestamp")
        assert isinstance(stamp2, Timestamp) and abs(stamp2.time - before) < 5


async def test_reconfiguration_is_atomic_and_names_key_and_reason_for_every_reason() -> None:
    url = memory()
    async with hosted(Stage, url=url) as (server, operator):
        await server.instantiate("Stage", "stage-1", {"serial_number": "SN-1"})
        stage = server.devices["stage-1"]
        cases: dict[str, tuple[dict[str, Any], str]] = {
            "unknown key": ({"colour": 1}, "colour"),
            "wrong type": ({"velocity": "fast"}, "velocity"),
            "out of range": ({"velocity": 50.0}, "velocity"),
            "readonly": ({"position": 3.0}, "position"),
            "init_only": ({"serial_number": "SN-2"}, "serial_number"),
            "access level": ({"secret": 3}, "secret"),
        }
        reasons = {
            "unknown key": ("unknown", "no such"),
            "wrong type": ("float", "type", "number"),
            "out of range": ("10", "less than", "<="),
            "readonly": ("readonly", "read-only", "read only"),
            "init_only": ("init_only", "init-only", "init only", "instantiation"),
            "access level": ("access", "level", "EXPERT"),
        }
        for what, (bad, key) in cases.items():
            changes = {"label": "changed", **bad}  # one good key beside the bad one: nothing applies
            with pytest.raises(ReconfigurationError) as info:
                await operator.request("stage-1", "set", changes, timeout=5)
            text = str(info.value)
            assert key in text, (what, text)
            assert any(r.lower() in text.lower() for r in reasons[what]), (what, text)
            assert stage.label == "a", what
        # not allowed in the current state
        await operator.request("stage-1", "move", timeout=5)
        assert stage.state is State.MOVING
        with pytest.raises(ReconfigurationError) as info:
            await operator.request("stage-1", "set", {"label": "x", "target_position": 5.0}, timeout=5)
        assert "target_position" in str(info.value) and "MOVING" in str(info.value)
        assert stage.label == "a" and stage.target_position == 0.0
        assert [key for key, _ in info.value.errors] == ["target_position"]
        await operator.request("stage-1", "halt", timeout=5)
        # several bad keys: each one named
        with pytest.raises(ReconfigurationError) as info:
            await operator.request(
                "stage-1", "set", {"velocity": 99.0, "position": 1.0, "nope": 1}, timeout=5
            )
        assert {key for key, _ in info.value.errors} == {"velocity", "position", "nope"}
        # an expert may change what a user may not
        async with SignalSlotable("expert", broker=url, access_level=AccessLevel.EXPERT) as expert:
            await expert.request("stage-1", "set", {"secret": 3}, timeout=5)
        assert stage.secret == 3
        # a good reconfiguration is applied, validated (int -> float), with the hooks
        stage.pre.clear()
        await operator.request("stage-1", "set", {"velocity": 3, "target_position": 4.5}, timeout=5)
        assert stage.velocity == 3.0 and isinstance(stage.velocity, float) and stage.target_position == 4.5
        assert stage.pre == [{"velocity": 3.0, "target_position": 4.5}]
        assert stage.post[-1] == {"velocity": 3.0, "target_position": 4.5}


async def test_pre_reconfigure_vetoes_and_on_reconfigure_runs_after() -> None:
    async with hosted(Stage) as (server, operator):
        await server.instantiate("Stage", "stage-1", {})
        stage = server.devices["stage-1"]
        with pytest.raises(ReconfigurationError):
            await operator.request("stage-1", "set", {"label": "no", "velocity": 2.0}, timeout=5)
        with pytest.raises(ka.RemoteError) as info:
            await operator.request("stage-1", "set", {"label": "forbidden"}, timeout=5)
        assert "vetoed" in str(info.value)
        assert stage.label == "a" and stage.velocity == 1.0
        assert stage.post == []
        await operator.request("stage-1", "set", {"label": "yes"}, timeout=5)
        assert stage.post == [{"label": "yes"}]


async def test_slot_with_allowed_states_refuses_naming_the_state_and_does_nothing() -> None:
    async with hosted(Stage) as (server, operator):
        await server.instantiate("Stage", "stage-1", {})
        stage = server.devices["stage-1"]
        await operator.request("stage-1", "move", timeout=5)
        assert stage.moves == 1 and stage.state is State.MOVING
        with pytest.raises(SlotRefused) as info:
            await operator.request("stage-1", "move", timeout=5)
        assert "MOVING" in str(info.value)
        assert stage.moves == 1 and stage.state is State.MOVING
        assert stage.exceptions == []  # a refusal is no exception of the device's


async def test_lifecycle_constructor_initialization_exception_hook_and_destruction() -> None:
    async with hosted(Stage) as (server, operator):
        await server.instantiate("Stage", "stage-1", {"velocity": 2})
        stage = server.devices["stage-1"]
        assert stage.velocity_in_constructor == 2.0  # the constructor saw the validated configuration
        assert stage.initializations == 1
        with pytest.raises(ka.RemoteError) as info:
            await operator.request("stage-1", "fail", timeout=5)
        assert "motor stalled" in str(info.value)
        await poll(lambda: len(stage.exceptions) == 1, 5, "on_exception")
        slot_name, exc = stage.exceptions[0]
        assert slot_name == "fail" and isinstance(exc, RuntimeError)
        # still alive afterwards
        assert await operator.request("stage-1", "get", "state", timeout=5) == "ON"


class SlowToStop(Device):
    stopped = False

    async def on_destruction(self) -> None:
        await asyncio.sleep(60)  # hangs: the time bound must cut it


class StopsCleanly(Device):
    destroyed: list[str] = []

    async def on_destruction(self) -> None:
        StopsCleanly.destroyed.append(self.device_id)


async def test_on_destruction_runs_on_shutdown_and_is_time_bounded() -> None:
    assert ka.device.DESTRUCTION_TIMEOUT == 5.0  # the default bound
    async with hosted(SlowToStop, StopsCleanly) as (server, operator):
        await server.instantiate("StopsCleanly", "clean-1", {})
        await operator.request(server.server_id, "shutdown_device", "clean-1", timeout=5)
        assert StopsCleanly.destroyed == ["clean-1"]
        assert "clean-1" not in server.devices
        await server.instantiate("SlowToStop", "slow-1", {})
        started = time.monotonic()
        await operator.request(server.server_id, "shutdown_device", "slow-1", timeout=15)
        elapsed = time.monotonic() - started
        assert 4.5 < elapsed < 8.0, elapsed
        assert "slow-1" not in server.devices


class FailsToInitialize(Device):
    async def on_initialization(self) -> None:
        raise OSError("cable unplugged")


async def test_exception_in_on_initialization_takes_the_device_down_never_the_server() -> None:
    async with hosted(FailsToInitialize, Stage) as (server, operator):
        await server.instantiate("Stage", "stage-1", {})
        with pytest.raises(DeviceInitializationError) as info:
            await operator.request(
                server.server_id, "instantiate", "FailsToInitialize", "bad-1", {}, timeout=5
            )
        assert "cable unplugged" in str(info.value)
        assert "bad-1" not in server.devices
        assert "bad-1" not in operator.topology.of_type("device")
        # the server and its other device carry on
        assert await operator.request(server.server_id, "get_devices", timeout=5) == ["stage-1"]
        assert await operator.request("stage-1", "get", "state", timeout=5) == "ON"


async def test_alarm_condition_follows_limits_worst_over_all_properties_and_is_published() -> None:
    async with hosted(Stage) as (server, operator):
        await server.instantiate("Stage", "stage-1", {})
        stage = server.devices["stage-1"]
        changes = await watch(operator, "stage-1")
        assert stage.alarm_condition is AlarmCondition.NONE
        await operator.request("stage-1", "set_position", 95.0, timeout=5)
        assert stage.alarm_condition is AlarmCondition.WARN
        assert stage.alarm_properties == ["position"]
        await changes.until(lambda c: "warn" in c.values("alarm_condition"))
        await operator.request("stage-1", "set_temperature", -1.0, timeout=5)  # alarm_low 0
        assert stage.alarm_condition is AlarmCondition.ALARM
        assert stage.alarm_properties == ["temperature"]
        await changes.until(lambda c: "alarm" in c.values("alarm_condition"))
        await operator.request("stage-1", "set_position", 99.5, timeout=5)
        assert stage.alarm_condition is AlarmCondition.ALARM
        assert sorted(stage.alarm_properties) == ["position", "temperature"]
        await operator.request("stage-1", "set_temperature", 20.0, timeout=5)
        await operator.request("stage-1", "set_position", 10.0, timeout=5)
        assert stage.alarm_condition is AlarmCondition.NONE and stage.alarm_properties == []
        await changes.until(lambda c: c.values("alarm_condition")[-1] == "none")
        assert await operator.request("stage-1", "get", "alarm_condition", timeout=5) == "none"
        # the one-word status in the topology follows state severity and alarms
        stage.state = State.ERROR
        await poll(lambda: operator.topology.get("stage-1", {}).get("status") == "error", 5, "status error")


def test_state_tree_and_severity() -> None:
    assert State.MOVING.is_derived_from(State.CHANGING)
    assert State.ON.is_derived_from(State.STATIC)
    assert not State.ON.is_derived_from(State.CHANGING)
    assert State.MOVING.is_derived_from(State.MOVING)
    for name in ("ERROR", "UNKNOWN", "INIT"):
        assert State[name].value == name
    assert State.ERROR.severity > State.UNKNOWN.severity > State.INIT.severity > State.MOVING.severity
    assert State.MOVING.severity > State.ON.severity
    assert State.ERROR.severity == max(s.severity for s in State)


# ==================================================================================================
# State machines, used from a device
# ==================================================================================================


class Pump(Device):
    """A device whose life cycle is a declared state machine with a nested machine inside ON."""

    rpm: int = Property(0, readonly=True)
    has_water: bool = Property(True)

    fsm = StateMachine(
        initial=State.OFF,
        transitions=[
            Transition(State.OFF, "switch_on", State.ON, action="power_up", guard="water_ok"),
            Transition(State.ON, "switch_off", State.OFF, action="power_down"),
            Transition("ON.STOPPED", "break", State.OFF, action="explode"),
            Transition("*", "fault", State.ERROR),
            Transition(State.ERROR, "reset", State.OFF),
        ],
        entry={State.ON: "entered_on", State.ERROR: "entered_error"},
        exit={State.ON: "left_on"},
        nested={
            State.ON: StateMachine(
                initial=State.STOPPED,
                transitions=[
                    Transition(State.STOPPED, "start", State.STARTED),
                    Transition(State.STARTED, "stop", State.STOPPED),
                ],
                entry={State.STARTED: "spinning"},
            )
        },
        error_state=State.ERROR,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.journal: list[str] = []

    def water_ok(self) -> bool:
        return bool(self.has_water)

    async def power_up(self) -> None:
        self.journal.append("power_up")

    def power_down(self) -> None:
        self.journal.append("power_down")

    def explode(self) -> None:
        raise RuntimeError("seal broke")

    def entered_on(self) -> None:
        self.journal.append("enter ON")

    def left_on(self) -> None:
        self.journal.append("exit ON")

    def entered_error(self) -> None:
        self.journal.append("enter ERROR")

    def spinning(self) -> None:
        self.journal.append("enter STARTED")
        self.rpm = 1200

    @slot
    async def switch_on(self) -> None:
        await self.fsm.fire("switch_on")

    @slot
    async def switch_off(self) -> None:
        await self.fsm.fire("switch_off")

    @slot
    async def start(self) -> None:
        await self.fsm.fire("start")

    @slot
    async def reset(self) -> None:
        await self.fsm.fire("reset")


async def test_state_machine_drives_a_device_through_its_slots() -> None:
    async with hosted(Pump) as (server, operator):
        await server.instantiate("Pump", "pump-1", {})
        pump = server.devices["pump-1"]
        changes = await watch(operator, "pump-1")
        assert pump.state is State.OFF  # the machine's initial state is the device's state
        await operator.request("pump-1", "switch_on", timeout=5)
        assert pump.fsm.path == (State.ON, State.STOPPED)
        assert pump.state is State.STOPPED
        assert pump.journal == ["power_up", "enter ON"]
        await operator.request("pump-1", "start", timeout=5)
        assert pump.state is State.STARTED and pump.rpm == 1200
        await changes.until(lambda c: "STARTED" in c.values("state"))
        # an event the state does not accept: typed error naming state and event, nothing changes
        with pytest.raises(IllegalTransition) as info:
            await operator.request("pump-1", "reset", timeout=5)
        assert "reset" in str(info.value) and "STARTED" in str(info.value)
        assert info.value.event == "reset"
        assert "STARTED" in str(info.value.state)
        assert pump.state is State.STARTED
        await operator.request("pump-1", "switch_off", timeout=5)  # bubbles up from the nested machine
        assert pump.state is State.OFF
        assert pump.journal[-2:] == ["exit ON", "power_down"]
        # a guard refuses
        await operator.request("pump-1", "set", {"has_water": False}, timeout=5)
        with pytest.raises(IllegalTransition):
            await operator.request("pump-1", "switch_on", timeout=5)
        assert pump.state is State.OFF


async def test_state_machine_error_state_on_a_failing_action() -> None:
    async with hosted(Pump) as (server, operator):
        await server.instantiate("Pump", "pump-1", {})
        pump = server.devices["pump-1"]
        await pump.fsm.fire("switch_on")
        with pytest.raises(RuntimeError, match="seal broke"):
            await pump.fsm.fire("break")
        assert pump.state is State.ERROR
        assert "seal broke" in (pump.fsm.error_reason or "")
        assert "seal broke" in pump.status
        await operator.request("pump-1", "reset", timeout=5)
        assert pump.state is State.OFF


def example_machine(journal: list[str]) -> StateMachine:
    def note(text: str) -> Callable[[], None]:
        return lambda: journal.append(text)

    return StateMachine(
        initial=State.OFF,
        transitions=[
            Transition(State.OFF, "on", State.ON, action=note("action on")),
            Transition(State.ON, "off", State.OFF),
            Transition("*", "fault", State.ERROR),
            Transition(State.ERROR, "reset", State.OFF),
        ],
        entry={State.ON: note("enter ON"), State.ERROR: note("enter ERROR")},
        exit={State.ON: note("exit ON")},
        nested={
            State.ON: StateMachine(
                initial=State.STOPPED,
                transitions=[
                    Transition(State.STOPPED, "move", State.MOVING),
                    Transition(State.MOVING, "stop", State.STOPPED),
                    Transition(State.MOVING, "arrive", State.STOPPED),
                ],
            )
        },
        error_state=State.ERROR,
    )


EXPECTED: dict[tuple[str, str], str | None] = {
    ("OFF", "on"): "ON.STOPPED",
    ("OFF", "fault"): "ERROR",
    ("ON.STOPPED", "off"): "OFF",
    ("ON.STOPPED", "move"): "ON.MOVING",
    ("ON.STOPPED", "fault"): "ERROR",
    ("ON.MOVING", "off"): "OFF",
    ("ON.MOVING", "stop"): "ON.STOPPED",
    ("ON.MOVING", "arrive"): "ON.STOPPED",
    ("ON.MOVING", "fault"): "ERROR",
    ("ERROR", "reset"): "OFF",
    ("ERROR", "fault"): "ERROR",
}
ROUTE = {"OFF": [], "ON.STOPPED": ["on"], "ON.MOVING": ["on", "move"], "ERROR": ["fault"]}
EVENTS = ("on", "off", "move", "stop", "arrive", "fault", "reset")


@pytest.mark.parametrize("state", list(ROUTE))
async def test_state_machine_whole_state_by_event_matrix(state: str) -> None:
    for event in EVENTS:
        journal: list[str] = []
        machine = example_machine(journal)
        for step in ROUTE[state]:
            await machine.fire(step)
        assert machine.state_name == state
        expected = EXPECTED.get((state, event))
        assert machine.can_fire(event) is (expected is not None), (state, event)
        if expected is None:
            with pytest.raises(IllegalTransition) as info:
                await machine.fire(event)
            assert (info.value.state, info.value.event) == (state, event)
            assert repr(event) in str(info.value) and state in str(info.value)
            assert machine.state_name == state  # nothing changed
        else:
            await machine.fire(event)
            assert machine.state_name == expected, (state, event)


async def test_entry_and_exit_hooks_run_in_order() -> None:
    journal: list[str] = []
    machine = example_machine(journal)
    await machine.fire("on")
    assert journal == ["action on", "enter ON"]
    await machine.fire("move")
    await machine.fire("stop")
    assert journal == ["action on", "enter ON"]  # ON stays active inside
    await machine.fire("off")
    assert journal[-1] == "exit ON"


# ==================================================================================================
# The clock and train ids
# ==================================================================================================


async def test_clock_device_broadcasts_train_ids_that_devices_stamp_their_values_with() -> None:
    async with DeviceServer("clock-srv", plugin_dirs=[DEVICES], broker=(url := memory()),
                            entry_points=False) as server:  # fmt: skip
        assert {"Clock", "SimulatedMotor", "SimulatedCamera", "TemperatureSensor"} <= set(server.classes)
        await server.instantiate("Clock", "clock", {"period": 0.05, "first_train_id": 1000})
        server.classes["Stage"] = Stage
        await server.instantiate("Stage", "stage-1", {})
        stage = server.devices["stage-1"]
        async with SignalSlotable("op", broker=url) as operator:
            await poll(lambda: server.devices["clock"].train_id >= 1003, 5, "a few ticks")
            await operator.request("stage-1", "set_position", 5.0, timeout=5)
            config = await operator.request("stage-1", "get_configuration", timeout=5)
            stamp = config.get_attribute("position", "timestamp")
            clock_now = server.devices["clock"].train_id
            assert 1000 <= stamp.train_id <= clock_now + 1, (stamp.train_id, clock_now)
        assert stage.device_id == "stage-1"


def test_train_clock_extrapolates_between_ticks() -> None:
    clock = ka.TrainClock()
    assert clock.current() == 0  # no clock runs
    clock.tick(500, 1000.0, 0.1)
    assert clock.current(now=1000.0) == 500
    assert clock.current(now=1000.25) == 502
    assert clock.current(now=1000.0 + 60) == 0  # stale: no clock any more


# ==================================================================================================
# The device server as a process (RabbitMQ)
# ==================================================================================================


class Output:
    """Lines a subprocess prints, collected by a thread so the test can wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.proc = proc
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, fragment: str, timeout: float = 30.0) -> None:
        await poll(lambda: fragment in self.text or self.proc.poll() is not None, timeout, fragment)
        assert fragment in self.text, self.text


@contextmanager
def process(cmd: list[str]) -> Iterator[Output]:
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    output = Output(proc)
    try:
        yield output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        output.thread.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
        print(f"--- {' '.join(cmd)} (exit {proc.returncode}):\n{output.text}")


GOOD_PLUGIN = '''
from karabo_async import Device, Property, slot


class HotAdded(Device):
    """Dropped into the folder while the server runs."""

    gain: float = Property(1.0, ge=0.0, le=10.0)

    @slot
    def double(self) -> float:
        return self.gain * 2
'''

BROKEN_PLUGIN = """
raise ImportError("this plugin needs a driver that is not installed")
"""

EXPLOSIVE_PLUGIN = """
from karabo_async import Device


class Explosive(Device):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("no such hardware")
"""


def gone_times(client: SignalSlotable) -> dict[str, float]:
    times: dict[str, float] = {}

    def on_event(event: ka.TopologyEvent) -> None:
        if event.kind == "instance_gone":
            times.setdefault(event.instance_id, time.monotonic())

    client.topology.add_listener(on_event)
    return times


async def test_server_command_line_with_init_file_plugins_and_instantiation_over_rabbitmq(
    broker_url: str, domain: str, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "explosive.py").write_text(EXPLOSIVE_PLUGIN)
    init = tmp_path / "init.json"
    init.write_text(
        json.dumps(
            {
                "devices": [
                    {"id": "motor-1", "class": "SimulatedMotor", "config": {"velocity": 2.0}},
                    {"id": "motor-2", "class": "SimulatedMotor", "config": {"velocity": "fast"}},
                    {"id": "ghost-1", "class": "NoSuchClass", "config": {}},
                    {"id": "motor-3", "class": "SimulatedMotor", "config": {"colour": "red"}},
                    {"id": "motor-1", "class": "SimulatedMotor", "config": {}},
                    {"id": "boom-1", "class": "Explosive"},
                    {"id": "motor-6", "class": "SimulatedMotor", "colour": "blue"},
                    {"id": "sensor-1", "class": "TemperatureSensor", "config": {"update_interval": 5.0}},
                ]
            }
        )
    )
    server_id = f"srv-{uuid.uuid4().hex[:6]}"
    cmd = [KARABO, "server", "--id", server_id, "--plugin-dir", "devices", "--plugin-dir", str(plugins),
           "--broker", broker_url, "--domain", domain, "--init", str(init), "--heartbeat-interval", "10"]  # fmt: skip
    with process(cmd) as out:
        await out.wait_for(f"server {server_id} online")
        text = out.text
        assert "motor-1: started" in text and "sensor-1: started" in text
        for culprit, reason in (("motor-2", "velocity"), ("ghost-1", "NoSuchClass"), ("motor-3", "colour"),
                                ("boom-1", "no such hardware"), ("motor-6", "colour")):  # fmt: skip
            line = next(line for line in out.lines if line.startswith(f"{culprit}:"))
            assert reason in line and "started" not in line, line
        duplicate = [line for line in out.lines if line.startswith("motor-1")]
        assert duplicate[0] == "motor-1: started" and "in use" in duplicate[1], duplicate

        async with ka.connect(broker_url, domain) as client:
            await client.topology.wait_for(server_id, 10)
            await client.topology.wait_for("motor-1", 10)
            # one process, one AMQP connection for all its devices
            import psutil

            connections = [c for c in psutil.Process(out.proc.pid).net_connections("tcp")
                           if c.raddr and c.raddr.port == 5672]  # fmt: skip
            assert len(connections) == 1, connections
            # classes with schemas in the instance info; from plugin folders and entry points
            info = client.topology[server_id]
            assert {"SimulatedMotor", "SimulatedCamera", "TemperatureSensor", "Clock", "Explosive"} <= set(
                info["classes"]
            )
            assert "MacroServer" in info["classes"]  # through the karabo_async.devices entry points
            assert info["classes"]["SimulatedMotor"]["properties"]["velocity"]["unit"] == "mm/s"
            assert sorted(await ka.get_classes(server_id)) == sorted(info["classes"])
            doc = await client.request(server_id, "get_class_schema", "SimulatedMotor", timeout=5)
            assert doc["properties"]["target_position"]["allowed_states"] == ["ON"]
            schema = await ka.get_class_schema(server_id, "SimulatedMotor")
            assert "velocity" in schema.properties

            # instantiate(server, class_id, device_id, config)
            assert (
                await ka.instantiate(server_id, "SimulatedMotor", "motor-4", {"velocity": 3.0}) == "motor-4"
            )
            assert await ka.execute("motor-4", "get", "velocity") == 3.0
            with pytest.raises(UnknownClass):
                await ka.instantiate(server_id, "Teleporter", "tp-1", {})
            with pytest.raises(InstanceIdInUse):
                await ka.instantiate(server_id, "SimulatedMotor", "motor-4", {})
            with pytest.raises(InstanceIdInUse):
                await ka.instantiate(server_id, "SimulatedMotor", client.instance_id, {})
            for bad, key in (({"velocity": 50.0}, "velocity"), ({"velocity": "x"}, "velocity"),
                             ({"position": 1.0}, "position"), ({"bogus": 1}, "bogus")):  # fmt: skip
                with pytest.raises(ConfigurationError) as info_:
                    await ka.instantiate(server_id, "SimulatedMotor", "motor-5", bad)
                assert key in str(info_.value)
            with pytest.raises(DeviceInitializationError) as boom:
                await ka.instantiate(server_id, "Explosive", "boom-2", {})
            assert "no such hardware" in str(boom.value)
            assert "motor-5" not in client.topology and "boom-2" not in client.topology
            assert sorted(await client.request(server_id, "get_devices", timeout=5)) == [
                "motor-1", "motor-4", "sensor-1",
            ]  # fmt: skip
            # values of the wrong type over the broker
            with pytest.raises(ReconfigurationError) as wrong:
                await ka.set_wait("motor-1", velocity="fast")
            assert "velocity" in str(wrong.value)
            await ka.set_wait("motor-1", velocity=4.0)
            assert await ka.execute("motor-1", "get", "velocity") == 4.0

            # a plugin added while the server runs is offered without restart; a broken one is reported
            (plugins / "broken.py").write_text(BROKEN_PLUGIN)
            (plugins / "hot.py").write_text(GOOD_PLUGIN)
            await poll(lambda: "HotAdded" in client.topology[server_id]["classes"], 10, "HotAdded offered")
            errors = client.topology[server_id]["plugin_errors"]
            assert any("broken.py" in origin and "driver" in why for origin, why in errors.items()), errors
            assert any("broken.py" in k for k in await client.request(server_id, "get_plugin_errors"))
            await ka.instantiate(server_id, "HotAdded", "hot-1", {"gain": 2.5})
            assert await ka.execute("hot-1", "double") == 5.0

            # shutdown(device_id) stops one device; it is reported gone at once
            gone = gone_times(client)
            sent = time.monotonic()
            await ka.shutdown("motor-4")
            assert gone["motor-4"] - sent < 3.0
            await client.request(server_id, "shutdown_device", "hot-1", timeout=5)
            await client.topology.wait_for("hot-1", 3, gone=True)
            assert await ka.execute("motor-1", "get", "state") == "ON"  # nothing else disturbed

            # SIGTERM stops the server cleanly; its devices are reported gone at once
            sent = time.monotonic()
            out.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(8):  # heartbeats (10 s) could not tell this quickly
                for instance in ("motor-1", "sensor-1", server_id):
                    await client.topology.wait_for(instance, gone=True)
            assert all(gone[i] - sent < 6.0 for i in ("motor-1", "sensor-1", server_id))
        await poll(lambda: out.proc.poll() is not None, 10, "the server to exit")
        assert out.proc.returncode == 0


async def test_python_m_server_with_yaml_init_stops_on_sigint(
    broker_url: str, domain: str, tmp_path: Path
) -> None:
    init = tmp_path / "boot.yaml"
    init.write_text(
        textwrap.dedent(
            """
            devices:
              - id: motor-1
                class: SimulatedMotor
                config: {velocity: 2.0}
              - id: clock
                class: Clock
                config: {period: 0.1}
            """
        )
    )
    server_id = f"srv-{uuid.uuid4().hex[:6]}"
    cmd = [PYTHON, "-m", "karabo_async", "server", "--id", server_id, "--plugin-dir", "devices",
           "--broker", broker_url, "--domain", domain, "--init", str(init), "--heartbeat-interval", "10"]  # fmt: skip
    with process(cmd) as out:
        await out.wait_for(f"server {server_id} online")
        assert "motor-1: started" in out.text and "clock: started" in out.text
        async with ka.connect(broker_url, domain) as client:
            await client.topology.wait_for("motor-1", 10)
            assert client.topology["motor-1"].get("server") == server_id
            # the clock's train ids reach the devices of the process: values carry a train id
            await ka.set_wait("motor-1", target_position=1.0)
            config = await ka.get_configuration("motor-1")
            assert config.get_attribute("target_position", "timestamp").train_id > 0
            # the motor moves over time
            await ka.execute("motor-1", "move")
            assert await ka.execute("motor-1", "get", "state") == "MOVING"
            async with ka.connect_device("motor-1") as motor:
                await ka.wait_until(lambda: motor.position == 1.0 and motor.state == State.ON, timeout=10)
            out.proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(8):
                for instance in ("motor-1", "clock", server_id):
                    await client.topology.wait_for(instance, gone=True)
        await poll(lambda: out.proc.poll() is not None, 10, "the server to exit")
        assert out.proc.returncode == 0


async def test_server_shutdown_slot_stops_server_and_devices(broker_url: str, domain: str) -> None:
    server_id = f"srv-{uuid.uuid4().hex[:6]}"
    cmd = [KARABO, "--broker", broker_url, "--domain", domain, "server", "--id", server_id,
           "--plugin-dir", "devices"]  # fmt: skip
    with process(cmd) as out:
        await out.wait_for(f"server {server_id} online")
        async with ka.connect(broker_url, domain) as client:
            await client.topology.wait_for(server_id, 10)
            await ka.instantiate(server_id, "TemperatureSensor", "sensor-1", {"update_interval": 5.0})
            await ka.instantiate(server_id, "TemperatureSensor", "sensor-2", {"update_interval": 5.0})
            await client.request(server_id, "shutdown", "sensor-2", timeout=5)  # shutdown(device_id)
            await client.topology.wait_for("sensor-2", 3, gone=True)
            assert server_id in client.topology and "sensor-1" in client.topology
            await client.request(server_id, "shutdown", timeout=5)
            async with asyncio.timeout(5):
                for instance in ("sensor-1", server_id):
                    await client.topology.wait_for(instance, gone=True)
        await poll(lambda: out.proc.poll() is not None, 10, "the server to exit")
        assert out.proc.returncode == 0


def test_server_with_an_unreadable_init_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("devices: [ {id: motor-1, class: ")
    result = subprocess.run(
        [KARABO, "--broker", memory(), "server", "--id", "x", "--plugin-dir", "devices", "--init", str(bad)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "broken.yaml" in result.stderr
    missing = tmp_path / "nodevices.json"
    missing.write_text(json.dumps({"servers": []}))
    result = subprocess.run(
        [KARABO, "--broker", memory(), "server", "--id", "x", "--init", str(missing)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0 and "nodevices.json" in result.stderr


async def test_the_death_of_a_device_inside_a_live_server_is_reported_at_once() -> None:
    class Fragile(Device):
        @slot
        def die(self) -> None:
            asyncio.get_running_loop().create_task(self.stop_device())

    url = memory()
    async with (
        DeviceServer("fragile-srv", classes=[Fragile, Stage], broker=url, heartbeat_interval=30.0,
                     entry_points=False) as server,
        SignalSlotable("op", broker=url, heartbeat_interval=30.0) as operator,
    ):  # fmt: skip
        await server.instantiate("Fragile", "fragile-1", {})
        await server.instantiate("Stage", "stage-1", {})
        await operator.topology.wait_for("fragile-1", 5)
        await operator.call("fragile-1", "die")
        await operator.topology.wait_for("fragile-1", 3, gone=True)  # heartbeats (30 s) could not tell
        assert "fragile-1" not in server.devices
        assert await operator.request("stage-1", "get", "state", timeout=5) == "ON"


# ==================================================================================================
# The simulated devices of devices/
# ==================================================================================================


@asynccontextmanager
async def devices_server() -> AsyncIterator[tuple[DeviceServer, SignalSlotable]]:
    url = memory()
    server_id, operator_id = f"sim-{uuid.uuid4().hex[:6]}", f"op-{uuid.uuid4().hex[:6]}"
    async with (
        DeviceServer(server_id, plugin_dirs=["devices"], broker=url, entry_points=False) as server,
        SignalSlotable(operator_id, broker=url) as operator,
    ):
        yield server, operator


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


async def test_simulated_motor_moves_over_time_stops_and_respects_limits(in_repo: None) -> None:
    async with devices_server() as (server, operator):
        await server.instantiate("SimulatedMotor", "motor-1", {"velocity": 10.0, "serial_number": "SN"})
        changes = await watch(operator, "motor-1")
        await operator.request("motor-1", "set", {"target_position": 0.5}, timeout=5)
        await operator.request("motor-1", "move", timeout=5)
        assert await operator.request("motor-1", "get", "state", timeout=5) == "MOVING"
        with pytest.raises(SlotRefused, match="MOVING"):
            await operator.request("motor-1", "move", timeout=5)
        with pytest.raises(ReconfigurationError, match="target_position"):
            await operator.request("motor-1", "set", {"target_position": 1.0}, timeout=5)
        await changes.until(lambda c: c.values("state")[-1:] == ["ON"] and c.values("position")[-1:] == [0.5])
        positions = changes.values("position")
        assert len(positions) >= 3 and positions == sorted(positions) and positions[-1] == 0.5  # over time
        # stop halts a move midway
        await operator.request("motor-1", "set", {"velocity": 1.0, "target_position": 50.0}, timeout=5)
        await operator.request("motor-1", "move", timeout=5)
        await changes.until(lambda c: c.values("position")[-1] > 0.55)
        await operator.request("motor-1", "stop", timeout=5)
        assert await operator.request("motor-1", "get", "state", timeout=5) == "ON"
        stopped_at = await operator.request("motor-1", "get", "position", timeout=5)
        assert 0.5 < stopped_at < 50.0
        # limits: beyond the soft limit the axis stops at the limit in ERROR
        await operator.request("motor-1", "set", {"velocity": 10.0, "high_limit": 1.0, "target_position": 5.0},
                               timeout=5)  # fmt: skip
        await operator.request("motor-1", "move", timeout=5)
        await changes.until(lambda c: c.values("state")[-1] == "ERROR")
        assert await operator.request("motor-1", "get", "position", timeout=5) == 1.0
        assert "limit" in await operator.request("motor-1", "get", "status", timeout=5)
        # a value beyond the declared range is refused outright
        with pytest.raises(ReconfigurationError, match="target_position"):
            await operator.request("motor-1", "set", {"target_position": 500.0}, timeout=5)


async def test_simulated_camera_publishes_numpy_images_at_its_frame_rate(in_repo: None) -> None:
    async with devices_server() as (server, operator):
        await server.instantiate("SimulatedCamera", "cam-1", {"width": 32, "height": 24, "frame_rate": 20.0})
        camera = server.devices["cam-1"]
        changes = await watch(operator, "cam-1")
        with pytest.raises(SlotRefused):
            await operator.request("cam-1", "stop", timeout=5)  # not acquiring
        began = time.monotonic()
        await operator.request("cam-1", "acquire", timeout=5)
        assert await operator.request("cam-1", "get", "state", timeout=5) == "ACQUIRING"
        await changes.until(lambda c: len(c.values("image")) >= 6)
        elapsed = time.monotonic() - began
        assert elapsed > 0.2  # 6 frames at 20 Hz take at least 0.25 s: the rate is kept, not a burst
        image = changes.values("image")[-1]
        data = image["data"]
        assert isinstance(data, np.ndarray) and data.shape == (24, 32) and data.dtype == np.uint16
        assert image["encoding"] == "GRAY"
        assert image["metadata"]["frame"] == changes.values("frame_count")[-1]
        await operator.request("cam-1", "stop", timeout=5)
        assert await operator.request("cam-1", "get", "state", timeout=5) == "ON"
        count = camera.frame_count
        # exposure and gain scale the signal
        dim = camera.make_frame(1).astype(float).mean()
        await operator.request("cam-1", "set", {"gain": 3.0, "exposure": 0.02}, timeout=5)
        bright = camera.make_frame(1).astype(float).mean()
        assert bright > dim * 2
        assert camera.frame_count == count  # nothing published after stop


async def test_temperature_sensor_noise_and_warn_alarm_limits(in_repo: None) -> None:
    async with devices_server() as (server, operator):
        await server.instantiate(
            "TemperatureSensor", "t-1",
            {"setpoint": 22.0, "noise": 0.5, "time_constant": 0.0, "update_interval": 0.01},
        )  # fmt: skip
        changes = await watch(operator, "t-1")
        await changes.until(lambda c: len(set(c.values("temperature"))) >= 5)  # noise
        readings = changes.values("temperature")
        assert all(15.0 < r < 30.0 for r in readings), readings
        await operator.request("t-1", "set", {"setpoint": 35.0, "noise": 0.0}, timeout=5)
        await changes.until(lambda c: "warn" in c.values("alarm_condition"))
        await operator.request("t-1", "set", {"setpoint": 45.0}, timeout=5)
        await changes.until(lambda c: "alarm" in c.values("alarm_condition"))
        assert "temperature" in await operator.request("t-1", "get", "alarm_properties", timeout=5)
        await operator.request("t-1", "set", {"setpoint": 22.0}, timeout=5)
        await changes.until(lambda c: c.values("alarm_condition")[-1] == "none")


# ==================================================================================================
# Containers
# ==================================================================================================


def test_compose_file_validates_and_describes_broker_and_two_device_servers() -> None:
    import yaml

    tool = shutil.which("docker-compose")
    assert tool is not None
    result = subprocess.run([tool, "-f", "docker-compose.yml", "config", "-q"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    broker = next(s for s in services.values() if "rabbitmq" in str(s.get("image", "")))
    assert any("15672" in str(p) for p in broker["ports"])
    assert any("broker/definitions.json" in str(v) for v in broker["volumes"])
    assert "healthcheck" in broker and broker.get("restart")
    servers = {n: s for n, s in services.items() if s.get("command", [None])[0] == "server"}
    assert len(servers) >= 2
    for name, svc in servers.items():
        assert "--plugin-dir" in svc["command"], name
        assert any("devices" in str(v) for v in svc.get("volumes", [])), name
        assert svc.get("restart") and svc.get("healthcheck", {}).get("test"), name
    makefile = (REPO / "Makefile").read_text()
    assert "\nimage:" in makefile and "\ncontainer-smoke:" in makefile
    test_line = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert "container-smoke" not in test_line
    assert (REPO / "Dockerfile").exists()


async def test_one_heartbeat_for_a_server_and_all_its_devices(broker_url: str, domain: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(f"{domain}.heartbeats", aio_pika.ExchangeType.TOPIC)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "heartbeat.*")
        senders: list[str] = []

        async def heard(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            senders.append(message.routing_key or "")

        await queue.consume(heard, no_ack=True)
        async with DeviceServer("hb-srv", classes=[Stage], broker=broker_url, domain=domain,
                                heartbeat_interval=0.2, entry_points=False) as server:  # fmt: skip
            for i in range(10):
                await server.instantiate("Stage", f"stage-{i}", {})
            senders.clear()
            began = time.monotonic()
            await poll(lambda: len(senders) >= 4, 10, "four heartbeats")
            elapsed = time.monotonic() - began
        assert set(senders) == {"heartbeat.hb-srv"}, senders  # the server's, none of its devices'
        assert len(senders) <= elapsed / 0.2 + 2
