"""What a logger takes from a device's messages: archivable (path, value, stamp, alarm) rows.

A ``changed`` signal and a ``get_configuration`` reply are the same kind of Hash: every leaf property
carries a ``timestamp`` attribute (and ``alarm`` when raised), nodes carry none. That tells nodes from
values without the schema, so an image (a Hash-valued leaf) stays one value. The schema is needed
only for the ``archive`` attribute: properties with ``archive=False``, or inside a node that has it,
are never recorded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..archive import ArrayRef
from ..hash import Hash
from ..timestamp import Timestamp

Row = tuple[str, Any, Timestamp, str | None]
"""(property path, value, timestamp, alarm condition or None)."""


@dataclass(frozen=True)
class RecordingRules:
    """Which paths of a device are not archived, from its schema document."""

    not_archived: frozenset[str]

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any] | None) -> RecordingRules:
        if not schema:
            return cls(frozenset())
        properties = schema.get("properties", {})
        return cls(frozenset(p for p, e in properties.items() if not e.get("archive", True)))

    def archived(self, path: str) -> bool:
        if not self.not_archived:
            return True
        if path in self.not_archived:
            return False
        parts = path.split(".")
        return not any(".".join(parts[:i]) in self.not_archived for i in range(1, len(parts)))


def rows_of(changes: Hash, rules: RecordingRules, fallback: Timestamp) -> Iterator[Row]:
    """Every archived leaf of ``changes`` (a value without a stamp gets ``fallback``)."""
    yield from _walk(changes, "", rules, fallback)


def _walk(node: Hash, prefix: str, rules: RecordingRules, fallback: Timestamp) -> Iterator[Row]:
    for key in node:
        value = node[key]
        path = prefix + key
        attrs = node.get_attributes(key)
        stamp = attrs.get("timestamp")
        if isinstance(value, Hash) and stamp is None and len(value):
            yield from _walk(value, path + ".", rules, fallback)
            continue
        if not rules.archived(path):
            continue
        alarm = attrs.get("alarm")
        yield (
            path,
            value,
            stamp if isinstance(stamp, Timestamp) else fallback,
            None if alarm is None else str(alarm),
        )


def flat_values(config: Hash) -> dict[str, Any]:
    """A configuration Hash as ``{path: value}`` of its leaf properties (what saved configurations hold)."""
    return {path: value for path, value, _, _ in rows_of(config, RecordingRules(frozenset()), Timestamp(0))}


_REF_KEY = "__array_ref__"


def ref_to_wire(value: Any) -> Any:
    """An :class:`ArrayRef` as plain data for the wire (the codec does not know it); others as they are."""
    if isinstance(value, ArrayRef):
        return {_REF_KEY: True, "shape": list(value.shape), "dtype": value.dtype, "nbytes": value.nbytes}
    return value


def ref_from_wire(value: Any) -> Any:
    if isinstance(value, Mapping) and value.get(_REF_KEY) is True:
        return ArrayRef(tuple(value["shape"]), str(value["dtype"]), int(value["nbytes"]))
    return value


__all__ = ["RecordingRules", "Row", "flat_values", "ref_from_wire", "ref_to_wire", "rows_of"]
