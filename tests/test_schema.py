"""Schemas from class declarations: types, attributes, validation, documents and JSON Schema."""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from karabo_async import (
    AccessLevel,
    AlarmCondition,
    Configurable,
    ConfigurationError,
    Float32,
    Hash,
    Image,
    Int8,
    Int16,
    Int32,
    Int64,
    Node,
    Property,
    ReconfigurationError,
    Schema,
    SchemaError,
    State,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    schema_of,
    slot,
)

ON, OFF, USER = State.ON, State.OFF, AccessLevel.USER


class SimulatedMotor(Configurable):
    """A motor that moves to a target position at a set velocity."""

    velocity: float = Property(1.0, ge=0.01, le=10.0, unit="mm/s", description="Speed of a move")
    target_position: float = Property(0.0, ge=-100.0, le=100.0, unit="mm", allowed_states=[State.ON])
    position: float = Property(0.0, readonly=True, unit="mm", warn_high=90.0, alarm_high=99.0)
    serial_number: str = Property("", init_only=True)

    @slot(allowed_states=[State.ON])
    async def move(self) -> None:
        self.moved = True

    @slot
    async def stop(self) -> None: ...


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"
    OFF = "off"


class Gear(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Optics(Node):
    focus: float = Property(0.5, ge=0.0, le=1.0)


class Settings(Node):
    """Acquisition settings."""

    gain: float = Property(1.0, ge=0.0, le=10.0)
    label: str = Property("a", options=["a", "b"])
    optics: Optics = Property(description="lens")

    @slot
    def reset(self) -> None: ...


class Everything(Configurable):
    """One property of every kind."""

    flag: bool = Property(False)
    count: int = Property(0, ge=0, lt=10)
    ratio: float = Property(0.5, gt=0.0, le=1.0)
    name: str = Property("x", options=["x", "y", "z"])
    blob: bytes = Property(b"")
    values: list[float] = Property([1.0, 2.0], ge=0.0)
    counts: list[int] = Property([])
    small: Int8 = Property(0)
    word: UInt16 = Property(0)
    single: Float32 = Property(0.0)
    mode: Mode = Property(Mode.FAST, options=[Mode.FAST, Mode.SLOW])
    gear: Gear = Property(Gear.LOW)
    frame: np.ndarray = Property(np.zeros((2, 3)), dtype="float32", shape=(2, None))
    counts_arr: np.ndarray = Property(np.zeros(4, dtype=np.int32), dtype="int32", shape=(4,), le=100)
    image: Image = Property(Image(np.zeros((4, 5), dtype=np.uint16)))
    extra: Hash = Property(Hash())
    settings: Settings = Property(description="grouped")
    more: Settings = Node()
    bare: Optics
    required: int = Property(mandatory=True, ge=1)
    optional: str = Property()
    expert: float = Property(1.0, required_access_level=AccessLevel.EXPERT)


def reasons(exc: ConfigurationError) -> dict[str, str]:
    return dict(exc.errors)


# --- the example and its declarations ---------------------------------------------------------------


def test_simulated_motor_schema() -> None:
    schema = schema_of(SimulatedMotor)
    assert list(schema.properties) == ["velocity", "target_position", "position", "serial_number"]
    assert list(schema.slots) == ["move", "stop"]
    assert schema.slots["move"].allowed_states == (State.ON,)
    assert schema.slots["move"].is_async
    assert schema.description == "A motor that moves to a target position at a set velocity."
    velocity = schema.properties["velocity"]
    assert (velocity.kind, velocity.ge, velocity.le, velocity.unit) == ("float", 0.01, 10.0, "mm/s")
    assert schema.properties["position"].access_mode == "readonly"
    assert schema.properties["serial_number"].access_mode == "init_only"
    assert schema.properties["velocity"].access_mode == "reconfigurable"
    assert schema.defaults() == {
        "velocity": 1.0,
        "target_position": 0.0,
        "position": 0.0,
        "serial_number": "",
    }


def test_schema_is_cached_per_class() -> None:
    assert schema_of(SimulatedMotor) is schema_of(SimulatedMotor)


async def test_slot_decorator_keeps_methods_callable() -> None:
    motor = SimulatedMotor()
    await motor.move()
    assert motor.moved

    class Thing(Configurable):
        @slot("public_name")
        def _internal(self, a: int, b: int = 2) -> int:
            """Adds things."""
            return a + b

        @slot(required_access_level=AccessLevel.EXPERT, description="Explain")
        def calibrate(self) -> str:
            return "done"

    assert Thing()._internal(1) == 3
    assert Thing().calibrate() == "done"
    slots = schema_of(Thing).slots
    assert slots["public_name"].method == "_internal"
    assert slots["public_name"].arguments == ("a", "b")
    assert slots["public_name"].description == "Adds things."
    assert not slots["public_name"].is_async
    assert slots["calibrate"].required_access_level is AccessLevel.EXPERT
    assert slots["calibrate"].refusal(State.ON, AccessLevel.USER) is not None
    assert slots["calibrate"].refusal(State.ON, AccessLevel.EXPERT) is None
    assert "state OFF" in (schema_of(SimulatedMotor).slots["move"].refusal(State.OFF, USER) or "")


def test_inheritance_bases_first_and_default_overrides() -> None:
    class FastMotor(SimulatedMotor):
        velocity = 5.0
        target_position = Property(le=50.0)
        acceleration: float = Property(2.0)

        @slot
        def home(self) -> None: ...

    schema = schema_of(FastMotor)
    assert list(schema.properties)[:4] == list(schema_of(SimulatedMotor).properties)
    assert list(schema.properties)[-1] == "acceleration"
    assert schema.properties["velocity"].default == 5.0
    assert schema.properties["velocity"].le == 10.0  # other attributes inherited
    target = schema.properties["target_position"]
    assert (target.le, target.ge, target.allowed_states) == (50.0, -100.0, (State.ON,))
    assert list(schema.slots) == ["move", "stop", "home"]
    assert schema_of(SimulatedMotor).properties["velocity"].default == 1.0


def test_every_type_resolves() -> None:
    props = schema_of(Everything).properties
    kinds = {path: spec.type_name for path, spec in props.items()}
    assert kinds["values"] == "list[float]" and kinds["counts"] == "list[int]"
    assert kinds["small"] == "int8" and kinds["word"] == "uint16" and kinds["single"] == "float32"
    assert kinds["mode"] == "enum" and kinds["frame"] == "ndarray" and kinds["image"] == "image"
    assert kinds["extra"] == "hash" and kinds["settings"] == "node" and kinds["more"] == "node"
    assert kinds["bare"] == "node"
    assert "settings.optics.focus" in props and "more.gain" in props and "bare.focus" in props
    assert props["settings"].description == "grouped"
    assert "settings.reset" in schema_of(Everything).slots


# --- types ------------------------------------------------------------------------------------------

SCHEMA = schema_of(Everything)


@pytest.mark.parametrize(
    ("path", "good", "bad"),
    [
        ("flag", [True, False, np.bool_(True)], [1, "true", None]),
        ("count", [0, 9, np.int64(3)], [1.0, "1", True, 10, -1]),
        ("ratio", [1, 0.25, np.float32(0.5)], [0, 0.0, 1.01, "0.5", True]),
        ("name", ["x", "z"], ["w", 1]),
        ("blob", [b"\x00\x01"], ["text", 1]),
        ("values", [[], [0.0, 3], (1.0,), np.array([1.0, 2.0])], [[-1.0], ["a"], 1.0]),
        ("counts", [[1, 2]], [[1.5]]),
        ("mode", [Mode.FAST, "slow"], [Mode.OFF, "off", "medium"]),
        ("gear", [Gear.HIGH, 1], [3, "LOW"]),
        ("extra", [Hash(), {"a": 1, "b": {"c": 2}}], [[1, 2], 5]),
    ],
)
def test_scalar_list_enum_hash_values(path: str, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        SCHEMA.validate_value(path, value)
    for value in bad:
        with pytest.raises(ConfigurationError) as caught:
            SCHEMA.validate_value(path, value)
        assert caught.value.errors[0][0] == path


def test_coercions_give_the_declared_types() -> None:
    assert type(SCHEMA.validate_value("ratio", 1)) is float
    assert type(SCHEMA.validate_value("count", np.int16(2))) is int
    assert SCHEMA.validate_value("mode", "slow") is Mode.SLOW
    assert SCHEMA.validate_value("gear", 2) is Gear.HIGH
    assert SCHEMA.validate_value("values", (1, 2)) == [1.0, 2.0]
    extra = SCHEMA.validate_value("extra", {"a": {"b": 1}})
    assert isinstance(extra, Hash) and extra["a.b"] == 1


@pytest.mark.parametrize(
    ("alias", "low", "high"),
    [
        (Int8, -(2**7), 2**7 - 1),
        (Int16, -(2**15), 2**15 - 1),
        (Int32, -(2**31), 2**31 - 1),
        (Int64, -(2**63), 2**63 - 1),
        (UInt8, 0, 2**8 - 1),
        (UInt16, 0, 2**16 - 1),
        (UInt32, 0, 2**32 - 1),
        (UInt64, 0, 2**64 - 1),
    ],
)
@given(value=st.integers(min_value=-(2**65), max_value=2**65))
def test_sized_ints_accept_exactly_their_range(alias: Any, low: int, high: int, value: int) -> None:
    schema = Schema("T", "", {}, {}).with_properties({"v": Property(0).typed(alias)})
    if low <= value <= high:
        assert schema.validate_value("v", value) == value
    else:
        with pytest.raises(ConfigurationError):
            schema.validate_value("v", value)
    assert schema.validate_value("v", low) == low and schema.validate_value("v", high) == high


def test_sized_int_range_combines_with_declared_limits() -> None:
    schema = Schema("T", "", {}, {}).with_properties({"v": Property(0, ge=-1000, le=5).typed(Int8)})
    with pytest.raises(ConfigurationError):
        schema.validate_value("v", -129)
    with pytest.raises(ConfigurationError):
        schema.validate_value("v", 6)


def test_float32_range() -> None:
    assert SCHEMA.validate_value("single", 3.0e38) == 3.0e38
    assert math.isinf(SCHEMA.validate_value("single", math.inf))
    with pytest.raises(ConfigurationError, match="float32"):
        SCHEMA.validate_value("single", 1e39)


def test_arrays_check_dtype_castability_shape_and_limits() -> None:
    frame = SCHEMA.validate_value("frame", [[1, 2], [3, 4]])
    assert frame.dtype == np.float32 and frame.shape == (2, 2)
    assert SCHEMA.validate_value("frame", np.ones((2, 7), dtype=np.float64)).shape == (2, 7)
    for bad, why in [
        (np.ones((3, 2)), "shape"),
        (np.ones(2), "shape"),
        ([["a", "b"], ["c", "d"]], "numeric"),
        (np.ones((2, 2), dtype=complex), "cast"),
    ]:
        with pytest.raises(ConfigurationError, match=why):
            SCHEMA.validate_value("frame", bad)
    assert SCHEMA.validate_value("counts_arr", np.arange(4, dtype=np.int16)).dtype == np.int32
    with pytest.raises(ConfigurationError, match="cast"):
        SCHEMA.validate_value("counts_arr", np.array([0.5, 1, 2, 3]))
    with pytest.raises(ConfigurationError, match="less than or equal to 100"):
        SCHEMA.validate_value("counts_arr", [1, 2, 3, 101])


def test_images() -> None:
    rgb = Image(np.zeros((4, 5, 3), dtype=np.uint8), "RGB", {"exposure": 0.1})
    assert SCHEMA.validate_value("image", rgb) is rgb
    from_dict = SCHEMA.validate_value("image", {"data": np.ones((2, 2)), "encoding": "BAYER"})
    assert isinstance(from_dict, Image) and from_dict.encoding == "BAYER"
    for bad in [{"data": np.zeros((4, 5)), "encoding": "RGB"}, {"data": np.zeros(3), "encoding": "GRAY"}]:
        with pytest.raises(ConfigurationError, match="image needs"):
            SCHEMA.validate_value("image", bad)
    with pytest.raises(ConfigurationError, match="encoding"):
        SCHEMA.validate_value("image", {"data": np.zeros((2, 2)), "encoding": "SEPIA"})
    with pytest.raises(ValueError, match="image needs"):
        Image(np.zeros((2, 2, 2)), "RGB")
    assert rgb == Image(np.zeros((4, 5, 3), dtype=np.uint8), "RGB", {"exposure": 0.1})


def test_image_dtype_and_shape_attributes() -> None:
    class Camera(Configurable):
        frame: Image = Property(Image(np.zeros((2, 2), np.uint8)), dtype="uint8", shape=(2, 2))

    schema = schema_of(Camera)
    with pytest.raises(ConfigurationError, match="uint8"):
        schema.validate_value("frame", Image(np.zeros((2, 2), np.uint16)))
    with pytest.raises(ConfigurationError, match="shape"):
        schema.validate_value("frame", Image(np.zeros((3, 2), np.uint8)))


# --- initial configuration --------------------------------------------------------------------------


def test_validate_initial_fills_defaults_and_accepts_nested_and_dotted_keys() -> None:
    config = SCHEMA.validate_initial({"required": 3, "settings": {"gain": 2}, "settings.optics.focus": 0.2})
    assert config["required"] == 3
    assert config["settings.gain"] == 2.0 and config["settings.optics.focus"] == 0.2
    assert config["more.gain"] == 1.0 and config["bare.focus"] == 0.5
    assert config["flag"] is False and config["mode"] is Mode.FAST
    assert "optional" not in config
    assert list(config) == [p for p in SCHEMA.properties if p in config]  # declaration order
    assert SCHEMA.validate_initial({"required": 1, "optional": "given"})["optional"] == "given"


def test_defaults_are_fresh_copies() -> None:
    first, second = SCHEMA.validate_initial({"required": 1}), SCHEMA.validate_initial({"required": 1})
    first["values"].append(9.0)
    first["frame"][0, 0] = 5
    assert second["values"] == [1.0, 2.0] and second["frame"][0, 0] == 0
    assert SCHEMA.defaults()["values"] == [1.0, 2.0]


def test_validate_initial_lists_every_bad_key() -> None:
    with pytest.raises(ConfigurationError) as caught:
        SCHEMA.validate_initial(
            {
                "count": 10,
                "nonsense": 1,
                "settings": {"gain": "high", "bogus": 1},
                "small": 128,
                "settings.label": "c",
                "optional": None,
            }
        )
    why = reasons(caught.value)
    assert set(why) == {
        "count",
        "nonsense",
        "settings.gain",
        "settings.bogus",
        "small",
        "settings.label",
        "required",
        "optional",
    }
    assert "unknown" in why["nonsense"] and "unknown" in why["settings.bogus"]
    assert "less than 10" in why["count"]
    assert "mandatory" in why["required"]
    assert "options" in why["settings.label"]
    message = str(caught.value)
    assert "count: " in message and "nonsense: unknown" in message


def test_validate_initial_refuses_readonly_and_accepts_init_only() -> None:
    schema = schema_of(SimulatedMotor)
    assert schema.validate_initial({"serial_number": "SN1"})["serial_number"] == "SN1"
    with pytest.raises(ConfigurationError) as caught:
        schema.validate_initial({"position": 5.0})
    assert "readonly" in reasons(caught.value)["position"]


def test_node_given_a_non_mapping_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="settings: is a node"):
        SCHEMA.validate_initial({"required": 1, "settings": 5})


# --- reconfiguration --------------------------------------------------------------------------------


def test_reconfiguration_returns_coerced_values() -> None:
    changes = SCHEMA.validate_reconfiguration(
        {"ratio": 1, "mode": "slow", "settings": {"optics": {"focus": 1}}}, state=ON, access_level=USER
    )
    assert changes == {"ratio": 1.0, "mode": Mode.SLOW, "settings.optics.focus": 1.0}


@pytest.mark.parametrize(
    ("changes", "state", "level", "key", "reason"),
    [
        ({"nope": 1}, ON, USER, "nope", "unknown"),
        ({"velocity": "fast"}, ON, USER, "velocity", "valid number"),
        ({"velocity": 11.0}, ON, USER, "velocity", "less than or equal to 10"),
        ({"position": 1.0}, ON, USER, "position", "readonly"),
        ({"serial_number": "x"}, ON, USER, "serial_number", "init_only"),
        ({"target_position": 1.0}, OFF, USER, "target_position", "not allowed in state OFF"),
        ({"velocity": 2.0}, ON, AccessLevel.OBSERVER, "velocity", "access level USER"),
    ],
)
def test_each_reconfiguration_refusal(
    changes: dict[str, Any], state: State, level: AccessLevel, key: str, reason: str
) -> None:
    schema = schema_of(SimulatedMotor)
    with pytest.raises(ReconfigurationError) as caught:
        schema.validate_reconfiguration(changes, state=state, access_level=level)
    assert caught.value.errors[0][0] == key
    assert reason in caught.value.errors[0][1]
    assert key in str(caught.value) and reason in str(caught.value)


def test_reconfiguration_is_atomic_and_names_each_key() -> None:
    schema = schema_of(SimulatedMotor)
    with pytest.raises(ReconfigurationError) as caught:
        schema.validate_reconfiguration(
            {"velocity": 2.0, "target_position": 500.0, "position": 1}, state=ON, access_level=USER
        )
    assert [key for key, _ in caught.value.errors] == ["target_position", "position"]


def test_allowed_states_include_derived_states_and_access_levels_per_property() -> None:
    class Stage(Configurable):
        speed: float = Property(1.0, allowed_states=[State.STATIC])

    schema = schema_of(Stage)
    assert schema.validate_reconfiguration({"speed": 2}, state=State.OFF, access_level=USER)
    with pytest.raises(ReconfigurationError):
        schema.validate_reconfiguration({"speed": 2}, state=State.MOVING, access_level=USER)
    with pytest.raises(ReconfigurationError, match="EXPERT"):
        SCHEMA.validate_reconfiguration({"expert": 2.0}, state=ON, access_level=AccessLevel.OPERATOR)
    assert SCHEMA.validate_reconfiguration({"expert": 2.0}, state=ON, access_level=AccessLevel.ADMIN)


@given(value=st.floats(allow_nan=False, allow_infinity=True))
def test_random_values_against_limits(value: float) -> None:
    schema = schema_of(SimulatedMotor)
    if 0.01 <= value <= 10.0:
        assert schema.validate_reconfiguration({"velocity": value}, state=ON, access_level=USER) == {
            "velocity": value
        }
    else:
        with pytest.raises(ReconfigurationError):
            schema.validate_reconfiguration({"velocity": value}, state=ON, access_level=USER)


@given(value=st.floats(allow_nan=False))
def test_exclusive_limits(value: float) -> None:
    if 0.0 < value <= 1.0:
        assert SCHEMA.validate_value("ratio", value) == value
    else:
        with pytest.raises(ConfigurationError):
            SCHEMA.validate_value("ratio", value)


# --- own values, alarms, run-time additions ---------------------------------------------------------


def test_validate_value_allows_readonly_but_checks_type() -> None:
    schema = schema_of(SimulatedMotor)
    assert schema.validate_value("position", 3) == 3.0
    with pytest.raises(ConfigurationError, match="position"):
        schema.validate_value("position", "far")
    with pytest.raises(ConfigurationError, match="unknown"):
        schema.validate_value("nowhere", 1)


def test_alarm_level() -> None:
    schema = schema_of(SimulatedMotor)
    assert schema.alarm_level("position", 10.0) is AlarmCondition.NONE
    assert schema.alarm_level("position", 95.0) is AlarmCondition.WARN
    assert schema.alarm_level("position", 99.5) is AlarmCondition.ALARM

    class Sensor(Configurable):
        temps: list[float] = Property([], warn_low=0.0, alarm_low=-10.0)

    assert schema_of(Sensor).alarm_level("temps", [5.0, -1.0]) is AlarmCondition.WARN
    assert schema_of(Sensor).alarm_level("temps", [5.0, -11.0]) is AlarmCondition.ALARM
    assert schema_of(Sensor).alarm_level("temps", []) is AlarmCondition.NONE


def test_with_properties_leaves_the_class_schema_alone() -> None:
    schema = schema_of(SimulatedMotor)
    extended = schema.with_properties(
        {"temperature": Property(20.0, le=80.0, readonly=True), "count": Property(0).typed(UInt8)}
    )
    assert "temperature" in extended.properties and "temperature" not in schema.properties
    assert extended.validate_value("count", 255) == 255
    with pytest.raises(ConfigurationError):
        extended.validate_value("count", 256)
    assert extended.validate_initial({})["temperature"] == 20.0
    with pytest.raises(SchemaError, match="exists"):
        schema.with_properties({"velocity": Property(1.0)})
    nested = SCHEMA.with_properties({"settings.offset": Property(0.0)})
    assert nested.validate_initial({"required": 1, "settings.offset": 2.0})["settings.offset"] == 2.0


def test_standard_device_style_properties() -> None:
    class Base(Configurable):
        device_id: str = Property("", readonly=True)
        pid: int = Property(0, readonly=True)
        state: State = Property(State.UNKNOWN, readonly=True)
        alarm_condition: AlarmCondition = Property(AlarmCondition.NONE, readonly=True)
        log_level: str = Property("INFO", options=["DEBUG", "INFO", "WARNING", "ERROR"])

    schema = schema_of(Base)
    assert schema.validate_value("state", "MOVING") is State.MOVING
    assert schema.validate_value("alarm_condition", "warn") is AlarmCondition.WARN
    with pytest.raises(ConfigurationError):
        schema.validate_value("state", "WALKING")
    rebuilt = Schema.from_document(msgpack.unpackb(msgpack.packb(schema.to_document())))
    assert rebuilt.validate_value("state", "ON") is State.ON


# --- declaration errors -----------------------------------------------------------------------------


def test_bad_declarations() -> None:
    with pytest.raises(SchemaError, match="default"):

        class BadDefault(Configurable):
            speed: float = Property(20.0, le=10.0)

        schema_of(BadDefault)
    with pytest.raises(SchemaError, match="unsupported"):

        class BadType(Configurable):
            things: set[int] = Property(set())

        schema_of(BadType)
    with pytest.raises(SchemaError, match="readonly"):
        Property(1, readonly=True, mandatory=True)
    with pytest.raises(SchemaError, match="both"):

        class Clash(Configurable):
            go: int = Property(0)

            @slot("go")
            def start(self) -> None: ...

        schema_of(Clash)


def test_local_classes_with_string_annotations_resolve() -> None:
    class LocalMode(enum.Enum):
        A = "a"

    class LocalGroup(Node):
        level: int = Property(1)

    class Local(Configurable):
        mode: LocalMode = Property(LocalMode.A)
        group: LocalGroup = Property()

    assert schema_of(Local).validate_initial({"group.level": 2}) == {"mode": LocalMode.A, "group.level": 2}


# --- documents and JSON Schema ----------------------------------------------------------------------


def test_document_is_plain_data_with_every_attribute() -> None:
    doc = schema_of(SimulatedMotor).to_document()
    assert msgpack.unpackb(msgpack.packb(doc)) == doc
    assert doc["class_id"] == "SimulatedMotor"
    assert doc["description"].startswith("A motor")
    velocity = doc["properties"]["velocity"]
    assert velocity == {
        "type": "float",
        "default": 1.0,
        "ge": 0.01,
        "le": 10.0,
        "unit": "mm/s",
        "description": "Speed of a move",
        "access_mode": "reconfigurable",
        "mandatory": False,
        "required_access_level": 1,
        "archive": True,
    }
    assert doc["properties"]["target_position"]["allowed_states"] == ["ON"]
    assert doc["properties"]["position"]["warn_high"] == 90.0
    assert doc["slots"]["move"]["allowed_states"] == ["ON"]
    full = SCHEMA.to_document()
    msgpack.packb(full)
    assert full["properties"]["frame"]["dtype"] == "float32"
    assert full["properties"]["frame"]["shape"] == [2, None]
    assert full["properties"]["mode"]["enum_values"] == ["fast", "slow", "off"]
    assert full["properties"]["mode"]["options"] == ["fast", "slow"]
    assert full["properties"]["settings.optics"]["type"] == "node"


def test_every_attribute_reaches_the_document() -> None:
    class Full(Configurable):
        x: float = Property(
            1.0,
            description="d",
            displayed_name="X",
            unit="V",
            metric_prefix="milli",
            ge=0.0,
            le=5.0,
            gt=-1.0,
            lt=6.0,
            options=[1.0, 2.0],
            init_only=True,
            allowed_states=["ON", "OFF"],
            required_access_level=AccessLevel.OPERATOR,
            warn_low=0.5,
            warn_high=4.0,
            alarm_low=0.1,
            alarm_high=4.5,
            archive=False,
            tags=["motor", "fast"],
        )

    entry = Schema.from_document(schema_of(Full).to_document()).to_document()["properties"]["x"]
    assert entry == schema_of(Full).to_document()["properties"]["x"]
    assert (
        entry["displayed_name"] == "X"
        and entry["metric_prefix"] == "milli"
        and entry["tags"] == ["motor", "fast"]
    )
    assert entry["access_mode"] == "init_only" and entry["archive"] is False
    assert entry["required_access_level"] == 2 and entry["allowed_states"] == ["ON", "OFF"]


def rebuilt(schema: Schema) -> Schema:
    return Schema.from_document(msgpack.unpackb(msgpack.packb(schema.to_document())))


REBUILT = rebuilt(SCHEMA)


def outcome(schema: Schema, path: str, value: Any) -> Any:
    try:
        return ("ok", msgpack.packb(schema.properties[path] and _plain(schema.validate_value(path, value))))
    except ConfigurationError:
        return ("refused",)


def _plain(value: Any) -> Any:
    from karabo_async.properties import plain

    return plain(value)


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.sampled_from(["fast", "slow", "off", "x", "a", "b"]),
    st.lists(st.floats(allow_nan=False, width=32), max_size=3),
    st.lists(st.integers(-5, 5), max_size=3),
)


@given(path=st.sampled_from([p for p, s in SCHEMA.properties.items() if s.kind != "node"]), value=VALUES)
def test_rebuilt_schema_validates_identically(path: str, value: Any) -> None:
    assert outcome(SCHEMA, path, value) == outcome(REBUILT, path, value)


def test_rebuilt_schema_keeps_structure_access_and_defaults() -> None:
    assert list(REBUILT.properties) == list(SCHEMA.properties)
    assert list(REBUILT.slots) == list(SCHEMA.slots)
    assert REBUILT.to_document() == SCHEMA.to_document()
    motor = rebuilt(schema_of(SimulatedMotor))
    with pytest.raises(ReconfigurationError, match="state OFF"):
        motor.validate_reconfiguration({"target_position": 1.0}, state=OFF, access_level=USER)
    with pytest.raises(ConfigurationError, match="mandatory"):
        REBUILT.validate_initial({})
    initial = REBUILT.validate_initial({"required": 2})
    assert initial["frame"].dtype == np.float32 and isinstance(initial["image"], Image)
    assert initial["mode"] == "fast"  # a rebuilt enum validates to its value


def test_malformed_document() -> None:
    with pytest.raises(SchemaError, match="malformed"):
        Schema.from_document({"properties": {}})
    with pytest.raises(SchemaError, match="malformed"):
        Schema.from_document({"class_id": "X", "properties": {"a": {"type": "enum"}}})


def test_json_schema_has_our_attributes() -> None:
    js = schema_of(SimulatedMotor).json_schema()
    json.dumps(js)
    velocity = js["properties"]["velocity"]
    assert velocity["minimum"] == 0.01 and velocity["maximum"] == 10.0 and velocity["type"] == "number"
    assert velocity["x-karabo"]["unit"] == "mm/s"
    assert js["properties"]["position"]["x-karabo"]["access_mode"] == "readonly"
    assert js["properties"]["target_position"]["x-karabo"]["allowed_states"] == ["ON"]
    assert js["x-karabo"]["class_id"] == "SimulatedMotor"
    assert js["x-karabo"]["slots"]["move"]["allowed_states"] == ["ON"]
    full = SCHEMA.json_schema()
    text = json.dumps(full)
    assert '"x-karabo"' in text and "required" in full and full["required"] == ["required"]
    assert full["properties"]["frame"]["default"] == [[0.0] * 3] * 2


def run_markdown_examples(name: str) -> None:
    """Run a docs page's Python blocks in order, in one namespace, as its reader would."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "docs" / name).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks
    import sys
    import types

    # A real module, so that annotations naming the page's own imports resolve as in a file.
    module = types.ModuleType(f"docs_{name.replace('.', '_')}")
    sys.modules[module.__name__] = module
    try:
        for block in blocks:
            exec(compile(block, name, "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]


def test_docs_schema_examples_run() -> None:
    run_markdown_examples("schema.md")
