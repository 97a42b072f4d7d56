"""Schemas: what a class declares (properties, slots), validation of values, and schema documents.

A class derived from :class:`Configurable` (devices, macros) declares properties with annotations and
:func:`~karabo_async.properties.Property`, and slots with :func:`slot`. :func:`schema_of` collects them,
base classes first, into a :class:`Schema`. The schema builds a pydantic model that does all value
validation, answers the access questions (readonly, init-only, allowed states, access level), and
travels as a plain document (:meth:`Schema.to_document`) from which clients rebuild the same
validation (:meth:`Schema.from_document`).
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import sys
import typing
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

from .errors import ConfigurationError, ReconfigurationError, SchemaError
from .properties import (
    MISSING,
    Image,
    PropertySpec,
    describe_annotation,
    infer_annotation,
    plain,
    value_annotation,
)
from .properties import Property as Property
from .slots import SLOT_ATTRIBUTE, SlotSpec, slot, state_allowed, state_refusal
from .states import AccessLevel, AlarmCondition, State

PROPERTY_ATTRIBUTE = "__karabo_property__"
"""A class attribute carrying this attribute (e.g. a descriptor a Device put in place of a
PropertySpec) is read as the PropertySpec it names."""


# --- declaring classes ------------------------------------------------------------------------------


class Configurable:
    """Base of every class that declares properties and slots (devices, macros, nodes).

    It only carries declarations; :func:`schema_of` reads them. Instances behave like any object.
    """


class Node(Configurable):
    """A group of properties nested under one name: ``settings: Settings = Property()``.

    Subclass it to declare the group. ``Node(...)`` called on this class itself is a synonym of
    ``Property(...)``, so ``settings: Settings = Node(description="...")`` also works; a bare
    annotation ``settings: Settings`` declares the group with no attributes.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is Node:
            return Property(*args, **kwargs)
        return super().__new__(cls)


@dataclass
class _Own:
    """What one class declares itself, read once (before any framework replaces attributes)."""

    properties: dict[str, PropertySpec]
    slots: dict[str, SlotSpec]
    default_overrides: dict[str, Any]


_OWN: weakref.WeakKeyDictionary[type, _Own] = weakref.WeakKeyDictionary()
_SCHEMAS: weakref.WeakKeyDictionary[type, Schema] = weakref.WeakKeyDictionary()


def _spec_of(value: Any) -> PropertySpec | None:
    if isinstance(value, PropertySpec):
        return value
    spec = getattr(value, PROPERTY_ATTRIBUTE, None)
    return spec if isinstance(spec, PropertySpec) else None


def _own_declarations(klass: type) -> _Own:
    own = _OWN.get(klass)
    if own is not None:
        return own
    namespace = klass.__dict__
    annotations: dict[str, Any] = namespace.get("__annotations__", {})
    properties: dict[str, PropertySpec] = {}
    for name in [*annotations, *(n for n in namespace if n not in annotations)]:
        spec = _spec_of(namespace.get(name))
        raw = annotations.get(name)
        if spec is None and (name in namespace or raw is None):
            continue
        annotation = None if raw is None else _resolve_annotation(klass, name, raw, spec)
        if typing.get_origin(annotation) is typing.ClassVar:
            continue
        if spec is None:
            # A bare annotation declares only node groups; other annotations are ordinary attributes.
            if not (isinstance(annotation, type) and issubclass(annotation, Node)):
                continue
            spec = Property()
        if name.startswith("_"):
            raise SchemaError(f"{klass.__name__}.{name}: property names may not start with '_'")
        properties[name] = spec if annotation is None else dataclasses.replace(spec, annotation=annotation)
    slots = {}
    for name, value in namespace.items():
        slot_spec = getattr(value, SLOT_ATTRIBUTE, None)
        if isinstance(slot_spec, SlotSpec):
            slots[name] = slot_spec
    overrides = {
        name: value
        for name, value in namespace.items()
        if not name.startswith("__")
        and name not in properties
        and not callable(value)
        and not isinstance(value, property | classmethod | staticmethod)
        and not hasattr(value, "__get__")
    }
    own = _OWN[klass] = _Own(properties, slots, overrides)
    return own


def _resolve_annotation(klass: type, name: str, raw: Any, spec: PropertySpec | None) -> Any:
    """A class annotation as an object, also when written as a string (``from __future__``)."""
    if not isinstance(raw, str):
        return raw
    module = sys.modules.get(klass.__module__)
    namespace = {**_node_classes(), **vars(klass)}
    try:
        return eval(raw, dict(vars(module)) if module else {}, namespace)  # the class's own source text
    except NameError:
        # A class defined inside a function cannot be named from its module: fall back on the default.
        if spec is not None and spec.has_default and type(spec.default).__name__ == raw:
            return type(spec.default)
        raise SchemaError(
            f"{klass.__name__}.{name}: cannot resolve the annotation {raw!r}; define the type at module level"
        ) from None


def _node_classes() -> dict[str, type]:
    found: dict[str, type] = {}
    pending = list(Node.__subclasses__())
    while pending:
        cls = pending.pop()
        found.setdefault(cls.__name__, cls)
        pending.extend(cls.__subclasses__())
    return found


def schema_of(cls: type) -> Schema:
    """The schema of a class: its and its bases' properties and slots, bases first. Cached per class."""
    schema = _SCHEMAS.get(cls)
    if schema is not None:
        return schema
    declared: dict[str, PropertySpec] = {}
    slots: dict[str, SlotSpec] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        own = _own_declarations(klass)
        for name, spec in own.properties.items():
            declared[name] = _override(declared[name], spec) if name in declared else spec
        for name, value in own.default_overrides.items():
            if name in declared:
                declared[name] = dataclasses.replace(declared[name], default=value)
        for slot_spec in own.slots.values():
            slots[slot_spec.name] = slot_spec
    properties: dict[str, PropertySpec] = {}
    for name, spec in declared.items():
        properties.update(resolve(name, spec, owner=cls.__name__))
    for path, slot_spec in _node_slots(properties):
        slots[path] = slot_spec
    clash = set(slots) & set(properties)
    if clash:
        raise SchemaError(f"{cls.__name__}: {sorted(clash)} are declared as both properties and slots")
    doc = cls.__dict__.get("__doc__")
    schema = Schema(cls.__name__, inspect.cleandoc(doc) if doc else "", properties, slots)
    _SCHEMAS[cls] = schema
    return schema


def _override(base: PropertySpec, new: PropertySpec) -> PropertySpec:
    """A subclass's re-declaration: complete with an annotation, else only what it states explicitly."""
    if new.annotation is not None:
        return new
    changes = {name: getattr(new, name) for name in new.explicit}
    return dataclasses.replace(base, explicit=base.explicit | new.explicit, **changes)


def _node_slots(properties: Mapping[str, PropertySpec]) -> Iterable[tuple[str, SlotSpec]]:
    for path, spec in properties.items():
        if spec.kind == "node":
            for name, slot_spec in schema_of(spec.node_type).slots.items():
                if "." not in name:
                    yield f"{path}.{name}", dataclasses.replace(slot_spec, name=f"{path}.{name}")


def resolve(path: str, spec: PropertySpec, *, owner: str = "") -> dict[str, PropertySpec]:
    """The spec with its kind worked out from its annotation (or default), plus a node's children."""
    where = f"{owner}.{path}" if owner else path
    annotation = spec.annotation if spec.annotation is not None else None
    if annotation is None:
        if not spec.has_default:
            raise SchemaError(f"property {where!r} has neither a type annotation nor a default")
        annotation = infer_annotation(spec.default)
    if isinstance(annotation, type) and issubclass(annotation, Node):
        if spec.has_default:
            raise SchemaError(f"node {where!r} takes its defaults from its own properties, not a default")
        node = dataclasses.replace(spec, annotation=annotation, path=path, kind="node", node_type=annotation)
        resolved = {path: node}
        for child_path, child in schema_of(annotation).properties.items():
            resolved[f"{path}.{child_path}"] = dataclasses.replace(child, path=f"{path}.{child_path}")
        return resolved
    try:
        described = describe_annotation(annotation)
    except SchemaError as exc:
        raise SchemaError(f"property {where!r}: {exc}") from None
    if described["kind"] == "ndarray" and spec.dtype is None and described.get("dtype"):
        spec = dataclasses.replace(spec, dtype=described["dtype"])
    enum_type = described.get("enum_type")
    enum_values = tuple(m.value for m in enum_type) if enum_type is not None else None
    return {
        path: dataclasses.replace(
            spec,
            annotation=annotation,
            path=path,
            kind=described["kind"],
            item_kind=described.get("item_kind", ""),
            enum_type=enum_type,
            enum_values=enum_values,
            enum_name=enum_type.__name__ if enum_type is not None else "",
        )
    }


# --- the schema -------------------------------------------------------------------------------------

_KNOWN_ENUMS: dict[str, type[enum.Enum]] = {"State": State, "AlarmCondition": AlarmCondition}
_DOC_ATTRIBUTES = (
    "description",
    "displayed_name",
    "unit",
    "metric_prefix",
    "ge",
    "gt",
    "le",
    "lt",
    "options",
    "warn_low",
    "warn_high",
    "alarm_low",
    "alarm_high",
    "tags",
    "dtype",
    "shape",
)


class Schema:
    """Properties and slots of one class (or one instance with run-time additions), and validation.

    ``properties`` maps dotted paths (node groups and their members) to resolved PropertySpecs in
    declaration order; ``slots`` maps slot names to SlotSpecs; ``model`` is the pydantic model.
    Validation results are flat ``{path: value}`` dicts of leaf properties.
    """

    def __init__(
        self,
        class_id: str,
        description: str,
        properties: Mapping[str, PropertySpec],
        slots: Mapping[str, SlotSpec],
    ) -> None:
        self.class_id = class_id
        self.description = description
        self.properties: dict[str, PropertySpec] = dict(properties)
        self.slots: dict[str, SlotSpec] = dict(slots)
        self._adapters: dict[str, TypeAdapter[Any]] = {}
        self._node_models: dict[str, type[BaseModel]] = {}
        self._check_defaults()
        self.model: type[BaseModel] = self._build_model("")

    def __repr__(self) -> str:
        return f"<Schema {self.class_id}: {len(self.properties)} properties, {len(self.slots)} slots>"

    # --- building -----------------------------------------------------------------------------
    def _children(self, prefix: str) -> list[tuple[str, PropertySpec]]:
        return [
            (path, spec)
            for path, spec in self.properties.items()
            if path.rpartition(".")[0] == prefix and (not prefix or path.startswith(prefix + "."))
        ]

    def _check_defaults(self) -> None:
        for path, spec in self.properties.items():
            if spec.kind != "node" and spec.has_default:
                try:
                    value = self.adapter(path).validate_python(spec.default)
                except pydantic.ValidationError as exc:
                    reason = _reason(exc.errors()[0])
                    raise SchemaError(
                        f"{self.class_id}.{path}: the default {spec.default!r} is invalid: {reason}"
                    ) from None
                self.properties[path] = dataclasses.replace(spec, default=value)

    def _build_model(self, prefix: str) -> type[BaseModel]:
        fields: dict[str, Any] = {}
        for path, spec in self._children(prefix):
            name = path.rpartition(".")[2]
            node_model = self._build_model(path) if spec.kind == "node" else None
            if node_model is not None:
                self._node_models[path] = node_model
            info: dict[str, Any] = {
                "alias": name,
                "description": spec.description or None,
                "title": spec.displayed_name or None,
                "json_schema_extra": {"x-karabo": _attributes(spec)},
            }
            if node_model is not None:
                if not self._has_mandatory(path):
                    info["default_factory"] = node_model
            elif spec.mandatory:
                pass
            elif spec.has_default:
                info["default"] = spec.default
            else:
                info["default"] = None  # optional: absent until given, but None itself is no value
            # Internal field names avoid clashes with BaseModel's own attributes; the alias is the name.
            fields[f"p_{len(fields)}"] = (value_annotation(spec, node_model), Field(**info))
        model_name = self.class_id + ("_" + prefix.replace(".", "_") if prefix else "")
        config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, populate_by_name=False)
        return pydantic.create_model(model_name, __config__=config, **fields)

    def _has_mandatory(self, prefix: str) -> bool:
        return any(s.mandatory for p, s in self.properties.items() if p.startswith(prefix + "."))

    def adapter(self, path: str) -> TypeAdapter[Any]:
        """The validator for one property's values (built on first use)."""
        adapter = self._adapters.get(path)
        if adapter is None:
            spec = self.properties[path]
            adapter = TypeAdapter(value_annotation(spec, self._node_models.get(path)))
            self._adapters[path] = adapter
        return adapter

    # --- documents ----------------------------------------------------------------------------
    def to_document(self) -> dict[str, Any]:
        """The schema as plain data (dicts, lists, str, numbers, bytes) for the wire and for storage."""
        properties = {}
        for path, spec in self.properties.items():
            entry: dict[str, Any] = {"type": spec.type_name, **_attributes(spec)}
            if spec.has_default and spec.kind != "node":
                entry["default"] = plain(spec.default)
            if spec.kind == "enum":
                entry["enum_name"] = spec.enum_name
                entry["enum_values"] = plain(spec.enum_values)
            properties[path] = entry
        return {
            "class_id": self.class_id,
            "description": self.description,
            "properties": properties,
            "slots": {name: s.to_document() for name, s in self.slots.items()},
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Schema:
        """Rebuild a schema, validation included, from :meth:`to_document`'s output."""
        try:
            properties = {path: _spec_from_document(path, entry) for path, entry in doc["properties"].items()}
            slots = {
                name: SlotSpec.from_document(name, entry) for name, entry in doc.get("slots", {}).items()
            }
            return cls(doc["class_id"], doc.get("description", ""), properties, slots)
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"malformed schema document: {type(exc).__name__}: {exc}") from exc

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema of the model; each property carries our attributes under ``"x-karabo"``."""
        result = self.model.model_json_schema(by_alias=True, schema_generator=_JsonSchemaGenerator)
        result["x-karabo"] = {
            "class_id": self.class_id,
            "description": self.description,
            "slots": {name: s.to_document() for name, s in self.slots.items()},
        }
        return result

    # --- questions about values ---------------------------------------------------------------
    def defaults(self) -> dict[str, Any]:
        """Fresh copies of the declared defaults of every leaf property, by path."""
        return {
            p: s.default_value() for p, s in self.properties.items() if s.kind != "node" and s.has_default
        }

    def alarm_level(self, path: str, value: Any) -> AlarmCondition:
        """The alarm condition of a value of property ``path`` against its warn/alarm limits."""
        return self._spec(path).alarm_level(value)

    def validate_value(self, path: str, value: Any) -> Any:
        """Validate a value the instance assigns itself (readonly allowed); ConfigurationError if invalid."""
        spec = self._spec(path)
        if spec.kind == "node":
            raise ConfigurationError([(path, "is a node; assign its properties one by one")])
        try:
            return self.adapter(path).validate_python(value)
        except pydantic.ValidationError as exc:
            raise ConfigurationError([(path, _reason(e)) for e in exc.errors()]) from None

    def validate_initial(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The full initial configuration: given values checked, defaults filled in, by path.

        Nested dicts and dotted keys are both accepted. Refuses unknown keys, readonly properties,
        missing mandatory ones and invalid values, listing every problem in one ConfigurationError.
        """
        errors: list[tuple[str, str]] = []
        given = self._flatten(config, errors)
        for path in given:
            if self._inherited(path, "readonly"):
                errors.append((path, "readonly: set by the device only"))
        nested: dict[str, Any] = {}
        for path, value in given.items():
            if not self._inherited(path, "readonly"):
                _put(nested, path, value)
        try:
            instance = self.model.model_validate(nested)
        except pydantic.ValidationError as exc:
            errors.extend(self._errors(exc))
            instance = None
        if errors or instance is None:
            raise ConfigurationError(errors)
        return self._extract(instance, given)

    def validate_reconfiguration(
        self, changes: Mapping[str, Any], *, state: State, access_level: AccessLevel
    ) -> dict[str, Any]:
        """Check a change to a running instance as a whole; the coerced values, or ReconfigurationError.

        Each key is refused if unknown, readonly, init-only, not allowed in ``state``, above the
        caller's ``access_level``, or if its value is invalid; one bad key refuses them all.
        """
        errors: list[tuple[str, str]] = []
        result: dict[str, Any] = {}
        for path, value in self._flatten(changes, errors).items():
            reason = self._refusal(path, state, access_level)
            if reason is not None:
                errors.append((path, reason))
                continue
            try:
                result[path] = self.adapter(path).validate_python(value)
            except pydantic.ValidationError as exc:
                errors.append((path, "; ".join(_reason(e) for e in exc.errors())))
        if errors:
            raise ReconfigurationError(errors)
        return result

    def with_properties(self, extra: Mapping[str, PropertySpec]) -> Schema:
        """A copy with properties added (e.g. at run time by one instance); this schema is unchanged.

        Each spec needs a type: ``Property(...).typed(float)``, or a default to infer it from. A dotted
        path adds to an existing node.
        """
        properties = dict(self.properties)
        for path, spec in extra.items():
            parent = path.rpartition(".")[0]
            if path in properties:
                raise SchemaError(f"{self.class_id}: property {path!r} exists already")
            if parent and (parent not in properties or properties[parent].kind != "node"):
                raise SchemaError(f"{self.class_id}: cannot add {path!r}: {parent!r} is not a node")
            properties.update(resolve(path, spec, owner=self.class_id))
        return Schema(self.class_id, self.description, properties, self.slots)

    # --- helpers --------------------------------------------------------------------------------
    def _spec(self, path: str) -> PropertySpec:
        spec = self.properties.get(path)
        if spec is None:
            raise ConfigurationError([(path, f"unknown property of {self.class_id}")])
        return spec

    def _flatten(self, config: Mapping[str, Any], errors: list[tuple[str, str]]) -> dict[str, Any]:
        """Leaf path -> value from nested dicts and/or dotted keys; unknown keys go to ``errors``."""
        flat: dict[str, Any] = {}

        def place(path: str, value: Any) -> None:
            spec = self.properties.get(path)
            if spec is None:
                errors.append((path, f"unknown property of {self.class_id}"))
            elif spec.kind == "node":
                if not isinstance(value, Mapping):
                    errors.append((path, f"is a node: give a mapping, not {type(value).__name__}"))
                    return
                for key, item in value.items():
                    place(f"{path}.{key}", item)
            elif path in flat:
                errors.append((path, "given twice"))
            else:
                flat[path] = value

        if not isinstance(config, Mapping):
            raise ConfigurationError([("", f"a configuration is a mapping, not {type(config).__name__}")])
        for key, value in config.items():
            place(str(key), value)
        return flat

    def _inherited(self, path: str, attribute: str) -> bool:
        """True if the property or a node containing it has the (boolean) attribute set."""
        parts = path.split(".")
        return any(getattr(self.properties[".".join(parts[:i])], attribute) for i in range(1, len(parts) + 1))

    def _refusal(self, path: str, state: State, access_level: AccessLevel) -> str | None:
        if self._inherited(path, "readonly"):
            return "readonly: set by the device only"
        if self._inherited(path, "init_only"):
            return "init_only: can only be set when the instance is created"
        parts = path.split(".")
        for spec in (self.properties[".".join(parts[:i])] for i in range(1, len(parts) + 1)):
            if not state_allowed(spec.allowed_states, state):
                return state_refusal(spec.allowed_states, state)
            if access_level < spec.access_level:
                return f"needs access level {spec.access_level.name}, caller has {AccessLevel(access_level).name}"
        return None

    def _errors(self, exc: pydantic.ValidationError) -> list[tuple[str, str]]:
        result = []
        for error in exc.errors():
            parts = [str(p) for p in error["loc"]]
            path = ".".join(parts)
            # The longest known path: list indices after it go into the reason.
            while parts and ".".join(parts) not in self.properties:
                parts.pop()
            key = ".".join(parts) or path
            reason = _reason(error)
            if key != path:
                reason = f"at {path[len(key) + 1 :]}: {reason}"
            result.append((key, reason))
        return result

    def _extract(self, instance: BaseModel, given: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for path, spec in self.properties.items():
            if spec.kind == "node" or (not spec.has_default and path not in given):
                continue
            value: Any = instance
            for name in path.split("."):
                value = getattr(value, _field_name(type(value), name))
            values[path] = value
        return values


class _JsonSchemaGenerator(GenerateJsonSchema):
    """Writes array, image and Hash defaults as plain lists and objects."""

    def encode_default(self, dft: Any) -> Any:
        return super().encode_default(plain(dft))


def _field_name(model: type[BaseModel], alias: str) -> str:
    for name, info in model.model_fields.items():
        if info.alias == alias:
            return name
    raise KeyError(alias)


def _put(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for name in parents:
        tree = tree.setdefault(name, {})
    tree[leaf] = value


def _reason(error: Any) -> str:
    if error["type"] == "missing":
        return "mandatory, but not given"
    if error["type"] == "extra_forbidden":
        return "unknown property"
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{error['msg']} (got {shown})"


def _attributes(spec: PropertySpec) -> dict[str, Any]:
    """The declared attributes as plain data: for documents and for JSON Schema's x-karabo."""
    attrs: dict[str, Any] = {
        "access_mode": spec.access_mode,
        "mandatory": spec.mandatory,
        "required_access_level": int(spec.access_level),
        "archive": spec.archive,
    }
    for name in _DOC_ATTRIBUTES:
        value = getattr(spec, name)
        if value not in (None, "", ()):
            attrs[name] = plain(value)
    if spec.allowed_states is not None:
        attrs["allowed_states"] = [s.value for s in spec.allowed_states]
    return attrs


def _spec_from_document(path: str, entry: Mapping[str, Any]) -> PropertySpec:
    type_name: str = entry["type"]
    kind, item_kind = ("list", type_name[5:-1]) if type_name.startswith("list[") else (type_name, "")
    attrs: dict[str, Any] = {name: entry[name] for name in _DOC_ATTRIBUTES if name in entry}
    for name in ("options", "tags", "shape"):
        if name in attrs:
            attrs[name] = tuple(attrs[name])
    states = entry.get("allowed_states")
    access_mode = entry.get("access_mode", "reconfigurable")
    enum_type = None
    enum_values = tuple(entry["enum_values"]) if kind == "enum" else None
    known = _KNOWN_ENUMS.get(entry.get("enum_name", ""))
    if known is not None and tuple(m.value for m in known) == enum_values:
        enum_type = known
    return PropertySpec(
        default=entry.get("default", MISSING),
        readonly=access_mode == "readonly",
        init_only=access_mode == "init_only",
        mandatory=bool(entry.get("mandatory", False)),
        allowed_states=None if states is None else tuple(State.from_name(s) for s in states),
        required_access_level=AccessLevel(entry.get("required_access_level", AccessLevel.USER)),
        archive=bool(entry.get("archive", True)),
        path=path,
        kind=kind,
        item_kind=item_kind,
        enum_type=enum_type,
        enum_values=enum_values,
        enum_name=entry.get("enum_name", ""),
        **attrs,
    )


__all__ = [
    "PROPERTY_ATTRIBUTE",
    "SLOT_ATTRIBUTE",
    "Configurable",
    "Image",
    "Node",
    "Property",
    "Schema",
    "SlotSpec",
    "resolve",
    "schema_of",
    "slot",
]
