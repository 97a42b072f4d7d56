"""Property declarations and the value types they may have.

``Property(...)`` records a property's attributes; the type comes from the class annotation. This module
turns one declaration into a pydantic annotation that validates its values (range, options, dtype,
shape, ...); :mod:`karabo_async.schema` assembles those into a class's schema and model.

Supported types: ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``list[...]`` of those, the sized
numbers :data:`Int8` ... :data:`UInt64`, :data:`Float32`, :data:`Float64` (range-checked),
``numpy.ndarray`` (with ``dtype=`` and ``shape=``), :class:`~enum.Enum` subclasses, :class:`Image`,
``karabo_async.hash.Hash`` and nested :class:`~karabo_async.schema.Node` groups.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import math
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

import annotated_types
import numpy as np
import numpy.typing as npt
from pydantic import AfterValidator, BeforeValidator, PlainSerializer, PlainValidator, Strict, WithJsonSchema

from .errors import SchemaError
from .states import AccessLevel, AlarmCondition, State


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing.MISSING
"""Marks a property declared without a default."""


@dataclass(frozen=True)
class SizedNumber:
    """Annotation marker naming a fixed-size number type and its range (None: unbounded)."""

    name: str
    base: type
    low: float | None
    high: float | None


def _sized_int(name: str, bits: int, signed: bool) -> Any:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return Annotated[int, annotated_types.Interval(ge=low, le=high), SizedNumber(name, int, low, high)]


_FLOAT32_MAX = float(np.finfo(np.float32).max)

Int8 = _sized_int("int8", 8, True)
Int16 = _sized_int("int16", 16, True)
Int32 = _sized_int("int32", 32, True)
Int64 = _sized_int("int64", 64, True)
UInt8 = _sized_int("uint8", 8, False)
UInt16 = _sized_int("uint16", 16, False)
UInt32 = _sized_int("uint32", 32, False)
UInt64 = _sized_int("uint64", 64, False)
Float32 = Annotated[float, SizedNumber("float32", float, -_FLOAT32_MAX, _FLOAT32_MAX)]
Float64 = Annotated[float, SizedNumber("float64", float, None, None)]

SIZED_NUMBERS: dict[str, SizedNumber] = {
    marker.name: marker
    for alias in (Int8, Int16, Int32, Int64, UInt8, UInt16, UInt32, UInt64, Float32, Float64)
    for marker in typing.get_args(alias)[1:]
    if isinstance(marker, SizedNumber)
}
_PLAIN_SCALARS: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str, "bytes": bytes}
SCALAR_KINDS = frozenset(_PLAIN_SCALARS) | frozenset(SIZED_NUMBERS)


# --- images -----------------------------------------------------------------------------------------

# encoding -> (number of dimensions, size of the last dimension or None)
IMAGE_ENCODINGS: dict[str, tuple[int, int | None]] = {
    "GRAY": (2, None),
    "BAYER": (2, None),
    "RGB": (3, 3),
    "BGR": (3, 3),
    "RGBA": (3, 4),
    "BGRA": (3, 4),
    "YUV": (3, 3),
    "JPEG": (1, None),
    "PNG": (1, None),
}


@dataclass(eq=False)
class Image:
    """A camera frame: pixel array, encoding (``"GRAY"``, ``"RGB"``, ``"BAYER"``, ...) and metadata.

    The array's shape must fit the encoding: 2-D for GRAY/BAYER, (h, w, 3) for RGB/BGR/YUV,
    (h, w, 4) for RGBA/BGRA, 1-D bytes for compressed JPEG/PNG.
    """

    data: npt.NDArray[Any]
    encoding: str = "GRAY"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data)
        if self.encoding not in IMAGE_ENCODINGS:
            raise ValueError(
                f"unknown image encoding {self.encoding!r}; use one of {sorted(IMAGE_ENCODINGS)}"
            )
        ndim, channels = IMAGE_ENCODINGS[self.encoding]
        if self.data.ndim != ndim or (channels is not None and self.data.shape[-1] != channels):
            want = f"{ndim}-D" + (f" with {channels} channels last" if channels else "")
            raise ValueError(f"a {self.encoding} image needs a {want} array, got shape {self.data.shape}")
        if self.data.dtype.kind not in "biuf":
            raise ValueError(f"image pixels must be numbers, got dtype {self.data.dtype}")
        if not isinstance(self.metadata, Mapping):
            raise ValueError(f"image metadata must be a mapping, got {type(self.metadata).__name__}")
        self.metadata = dict(self.metadata)

    @classmethod
    def from_value(cls, value: Any) -> Image:
        """An Image from an Image or a mapping with data/encoding/metadata (as it travels)."""
        if isinstance(value, Image):
            return value
        if isinstance(value, Mapping) and "data" in value:
            unknown = set(value) - {"data", "encoding", "metadata"}
            if unknown:
                raise ValueError(f"unknown image fields {sorted(unknown)}")
            return cls(value["data"], value.get("encoding", "GRAY"), value.get("metadata", {}))
        raise ValueError(f"expected an Image or a mapping with 'data', got {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "encoding": self.encoding, "metadata": self.metadata}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Image):
            return NotImplemented
        return (
            self.encoding == other.encoding
            and self.metadata == other.metadata
            and self.data.dtype == other.data.dtype
            and np.array_equal(self.data, other.data)
        )

    __hash__ = None  # type: ignore[assignment]


# --- declarations -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PropertySpec:
    """Everything declared about one property; ``kind`` etc. are filled in when the schema resolves it."""

    default: Any = MISSING
    description: str = ""
    displayed_name: str = ""
    unit: str = ""
    metric_prefix: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    options: tuple[Any, ...] | None = None
    readonly: bool = False
    init_only: bool = False
    mandatory: bool = False
    allowed_states: tuple[State, ...] | None = None
    required_access_level: AccessLevel | None = None
    warn_low: float | None = None
    warn_high: float | None = None
    alarm_low: float | None = None
    alarm_high: float | None = None
    archive: bool = True
    tags: tuple[str, ...] = ()
    dtype: str | None = None
    shape: tuple[int | None, ...] | None = None
    # Which of the above were written in the declaration: a subclass re-declaring a property without
    # an annotation changes only these.
    explicit: frozenset[str] = frozenset()
    # Resolved by the schema:
    annotation: Any = None
    path: str = ""
    kind: str = ""
    item_kind: str = ""
    enum_type: Any = None
    enum_values: tuple[Any, ...] | None = None
    enum_name: str = ""
    node_type: Any = None

    @property
    def has_default(self) -> bool:
        return self.default is not MISSING

    @property
    def type_name(self) -> str:
        """The type as written in schema documents: ``float``, ``list[int32]``, ``ndarray``, ``node``..."""
        return f"list[{self.item_kind}]" if self.kind == "list" else self.kind

    @property
    def access_mode(self) -> str:
        return "readonly" if self.readonly else "init_only" if self.init_only else "reconfigurable"

    @property
    def access_level(self) -> AccessLevel:
        """Level needed to change the value: as declared, else OBSERVER for readonly and USER otherwise."""
        if self.required_access_level is not None:
            return self.required_access_level
        return AccessLevel.OBSERVER if self.readonly else AccessLevel.USER

    def typed(self, annotation: Any) -> PropertySpec:
        """This declaration with a type, for properties added at run time (no class annotation)."""
        return dataclasses.replace(self, annotation=annotation)

    def default_value(self) -> Any:
        """A fresh copy of the default, so instances never share a mutable default."""
        return copy.deepcopy(self.default)

    def alarm_level(self, value: Any) -> AlarmCondition:
        """ALARM or WARN if a number (or any element of an array) is beyond the declared limits."""
        try:
            values = np.asarray(value.data if isinstance(value, Image) else value, dtype=float)
        except (TypeError, ValueError):
            return AlarmCondition.NONE
        if values.size == 0:
            return AlarmCondition.NONE
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        if (self.alarm_low is not None and low < self.alarm_low) or (
            self.alarm_high is not None and high > self.alarm_high
        ):
            return AlarmCondition.ALARM
        if (self.warn_low is not None and low < self.warn_low) or (
            self.warn_high is not None and high > self.warn_high
        ):
            return AlarmCondition.WARN
        return AlarmCondition.NONE


_SPEC_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PropertySpec) if f.name != "default"}


def Property(  # reads as a declaration, like pydantic's Field
    default: Any = MISSING,
    *,
    description: str = "",
    displayed_name: str = "",
    unit: str = "",
    metric_prefix: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    options: Iterable[Any] | None = None,
    readonly: bool = False,
    init_only: bool = False,
    mandatory: bool = False,
    allowed_states: Iterable[State | str] | None = None,
    required_access_level: AccessLevel | int | None = None,
    warn_low: float | None = None,
    warn_high: float | None = None,
    alarm_low: float | None = None,
    alarm_high: float | None = None,
    archive: bool = True,
    tags: Iterable[str] = (),
    dtype: str | type | np.dtype[Any] | None = None,
    shape: Sequence[int | None] | None = None,
) -> Any:
    """Declare a property: ``velocity: float = Property(1.0, ge=0.0, unit="mm/s")``.

    Typed ``Any`` (like pydantic's ``Field``) so the annotation, not this call, gives the attribute its
    static type. Access: reconfigurable by default; ``readonly`` values are set by the device only;
    ``init_only`` values only at instantiation; ``mandatory`` ones must be given then. ``shape`` entries
    of None (or -1) accept any length in that dimension.
    """
    if readonly and (init_only or mandatory):
        raise SchemaError("a readonly property cannot also be init_only or mandatory: the device sets it")
    attrs: dict[str, Any] = {
        "description": description,
        "displayed_name": displayed_name,
        "unit": unit,
        "metric_prefix": metric_prefix,
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "options": None if options is None else tuple(options),
        "readonly": readonly,
        "init_only": init_only,
        "mandatory": mandatory,
        "allowed_states": None
        if allowed_states is None
        else tuple(State.from_name(s) for s in allowed_states),
        "required_access_level": None
        if required_access_level is None
        else AccessLevel(required_access_level),
        "warn_low": warn_low,
        "warn_high": warn_high,
        "alarm_low": alarm_low,
        "alarm_high": alarm_high,
        "archive": archive,
        "tags": tuple(tags),
        "dtype": None if dtype is None else np.dtype(dtype).name,
        "shape": None if shape is None else tuple(None if d is None or d < 0 else int(d) for d in shape),
    }
    explicit = frozenset(k for k, v in attrs.items() if v != _SPEC_DEFAULTS[k])
    if default is not MISSING:
        explicit |= {"default"}
    return PropertySpec(default=default, explicit=explicit, **attrs)


# --- from an annotation to a validating pydantic type -----------------------------------------------


def is_hash_type(annotation: Any) -> bool:
    """True for karabo_async.hash.Hash, recognised without importing it (it sits in a lower layer)."""
    return (
        isinstance(annotation, type)
        and annotation.__name__ == "Hash"
        and annotation.__module__ == "karabo_async.hash"
    )


def describe_annotation(annotation: Any) -> dict[str, Any]:
    """The kind of value an annotation stands for: ``{"kind": ..., "item_kind"/"enum_type"/...}``.

    Node classes are recognised by the caller (schema) before this is reached.
    """
    if typing.get_origin(annotation) is Annotated:
        for marker in typing.get_args(annotation)[1:]:
            if isinstance(marker, SizedNumber):
                return {"kind": marker.name}
        return describe_annotation(typing.get_args(annotation)[0])
    for name, python_type in _PLAIN_SCALARS.items():
        if annotation is python_type:
            return {"kind": name}
    origin = typing.get_origin(annotation)
    if origin in (list, Sequence, tuple) or annotation is list:
        args = typing.get_args(annotation)
        if not args or (origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)):
            raise SchemaError(f"list type {annotation!r} needs one item type, e.g. list[float]")
        item = describe_annotation(args[0])
        if item["kind"] not in SCALAR_KINDS:
            raise SchemaError(
                f"lists may hold bool, int, float, str, bytes or sized numbers, not {args[0]!r}"
            )
        return {"kind": "list", "item_kind": item["kind"]}
    if annotation is np.ndarray or origin is np.ndarray:
        dtype_args = typing.get_args(annotation)[1:] if origin is np.ndarray else ()
        scalar = typing.get_args(dtype_args[0]) if dtype_args else ()
        dtype = np.dtype(scalar[0]).name if scalar and isinstance(scalar[0], type) else None
        return {"kind": "ndarray", "dtype": dtype}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"kind": "enum", "enum_type": annotation}
    if annotation is Image:
        return {"kind": "image"}
    if is_hash_type(annotation):
        return {"kind": "hash"}
    raise SchemaError(f"unsupported property type {annotation!r}")


def infer_annotation(default: Any) -> Any:
    """A type for a property declared without annotation, from its default."""
    if isinstance(default, bool | int | float | str | bytes | enum.Enum | Image | np.ndarray):
        return type(default) if not isinstance(default, np.ndarray) else np.ndarray
    if is_hash_type(type(default)):
        return type(default)
    if isinstance(default, list) and default and len({type(v) for v in default}) == 1:
        return list[type(default[0])]  # type: ignore[misc]
    raise SchemaError(f"cannot tell a property's type from its default {default!r}: give an annotation")


def _plain_number(value: Any) -> Any:
    """numpy scalars as Python ones, so strict scalar checks accept them."""
    return value.item() if isinstance(value, np.generic) else value


def _array_to_list(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) and value.ndim == 1 else value


def _limits(spec: PropertySpec, kind: str) -> list[Any]:
    """annotated_types constraints for the declared limits, tightened by a sized number's range."""
    marker = SIZED_NUMBERS.get(kind)
    ge, le = spec.ge, spec.le
    if marker is not None and marker.base is int:
        ge = marker.low if ge is None else max(ge, marker.low)  # type: ignore[type-var]
        le = marker.high if le is None else min(le, marker.high)  # type: ignore[type-var]
    constraints: list[Any] = []
    if ge is not None:
        constraints.append(annotated_types.Ge(ge))
    if spec.gt is not None:
        constraints.append(annotated_types.Gt(spec.gt))
    if le is not None:
        constraints.append(annotated_types.Le(le))
    if spec.lt is not None:
        constraints.append(annotated_types.Lt(spec.lt))
    return constraints


def _check_float32(value: float) -> float:
    if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
        raise ValueError(f"{value!r} is out of range for float32 (largest magnitude {_FLOAT32_MAX:g})")
    return value


def _check_options(options: tuple[Any, ...], value: Any) -> Any:
    plain = value.value if isinstance(value, enum.Enum) else value
    if value not in options and plain not in options:
        raise ValueError(f"{plain!r} is not one of the options {list(options)}")
    return value


def scalar_annotation(spec: PropertySpec, kind: str) -> Any:
    """The pydantic annotation for one scalar of ``kind`` with the spec's limits."""
    base = SIZED_NUMBERS[kind].base if kind in SIZED_NUMBERS else _PLAIN_SCALARS[kind]
    metadata: list[Any] = [Strict(), *_limits(spec, kind)]
    if kind == "float32":
        metadata.append(AfterValidator(_check_float32))
    return Annotated[(base, *metadata, BeforeValidator(_plain_number))]


def value_annotation(spec: PropertySpec, node_model: Any = None) -> Any:
    """The pydantic annotation validating values of a resolved spec (``node_model`` for nodes)."""
    kind = spec.kind
    extra: list[Any] = []
    if spec.options is not None:
        extra.append(AfterValidator(functools.partial(_check_options, spec.options)))
    if kind in SCALAR_KINDS:
        base = scalar_annotation(spec, kind)
    elif kind == "list":
        base = Annotated[list[scalar_annotation(spec, spec.item_kind)], BeforeValidator(_array_to_list)]  # type: ignore[misc]
    elif kind == "enum":
        # A schema rebuilt from a document has no enum class: it accepts exactly the values.
        base = spec.enum_type if spec.enum_type is not None else enum_literal(spec.enum_values or ())
    elif kind == "ndarray":
        base = Annotated[
            Any,
            PlainValidator(functools.partial(_validate_array, spec)),
            PlainSerializer(lambda a: a.tolist(), when_used="json"),
            WithJsonSchema({"type": "array", "items": {}}),
        ]
    elif kind == "image":
        base = Annotated[
            Any,
            PlainValidator(functools.partial(_validate_image, spec)),
            PlainSerializer(_image_json, when_used="json"),
            WithJsonSchema(_IMAGE_JSON_SCHEMA),
        ]
    elif kind == "hash":
        base = Annotated[
            Any,
            PlainValidator(_validate_hash),
            PlainSerializer(lambda h: plain(h.to_dict()), when_used="json"),
            WithJsonSchema({"type": "object"}),
        ]
    elif kind == "node":
        base = node_model
    else:
        raise SchemaError(f"property {spec.path!r}: unknown kind {kind!r}")
    return Annotated[(base, *extra)] if extra else base


def enum_literal(values: Sequence[Any]) -> Any:
    """A Literal accepting exactly these values: how a schema document's enums validate client-side."""
    return Literal[tuple(values)]


def _validate_array(spec: PropertySpec, value: Any) -> npt.NDArray[Any]:
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind in "USV":
        raise ValueError(f"expected a numeric array, got dtype {array.dtype}")
    if spec.dtype is not None:
        target = np.dtype(spec.dtype)
        if not np.can_cast(array.dtype, target, casting="same_kind"):
            raise ValueError(f"an array of {array.dtype} cannot be safely cast to {target}")
        array = array.astype(target, copy=False)
    _check_shape(spec.shape, array.shape)
    _check_array_limits(spec, array)
    return array


def _check_shape(shape: tuple[int | None, ...] | None, actual: tuple[int, ...]) -> None:
    if shape is None:
        return
    if len(shape) != len(actual) or any(d is not None and d != a for d, a in zip(shape, actual, strict=True)):
        want = "(" + ", ".join("*" if d is None else str(d) for d in shape) + ")"
        raise ValueError(f"shape {actual} does not match {want}")


def _check_array_limits(spec: PropertySpec, array: npt.NDArray[Any]) -> None:
    if array.size == 0:
        return
    checks: tuple[tuple[float | None, Any, str], ...] = (
        (spec.ge, np.less, "greater than or equal to"),
        (spec.gt, np.less_equal, "greater than"),
        (spec.le, np.greater, "less than or equal to"),
        (spec.lt, np.greater_equal, "less than"),
    )
    for bound, bad, text in checks:
        if bound is not None and bool(np.any(bad(array, bound))):
            raise ValueError(f"every element should be {text} {bound}")


def _validate_image(spec: PropertySpec, value: Any) -> Image:
    image = Image.from_value(value)
    if spec.dtype is not None and image.data.dtype != np.dtype(spec.dtype):
        raise ValueError(f"image pixels must be {spec.dtype}, got {image.data.dtype}")
    _check_shape(spec.shape, image.data.shape)
    return image


_IMAGE_JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "data": {"type": "array"},
        "encoding": {"type": "string", "enum": sorted(IMAGE_ENCODINGS)},
        "metadata": {"type": "object"},
    },
    "required": ["data"],
}


def _image_json(image: Image) -> dict[str, Any]:
    return {"data": image.data.tolist(), "encoding": image.encoding, "metadata": plain(image.metadata)}


def _validate_hash(value: Any) -> Any:
    from .hash import Hash  # imported late: the hash module is written beside this one

    if isinstance(value, Hash):
        return value
    if isinstance(value, Mapping):
        return Hash.from_dict(dict(value))
    raise ValueError(f"expected a Hash or a mapping, got {type(value).__name__}")


def plain(value: Any) -> Any:
    """A value as plain data msgpack can carry: enums as their values, tuples as lists, arrays as lists."""
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Image):
        return plain(value.to_dict())
    if is_hash_type(type(value)):
        return plain(value.to_dict())
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
