"""Hash: the ordered, nested, attributed mapping every configuration and message body is made of.

Karabo's central data structure. It is a tree: keys are plain words, a path like ``"motor.position"``
walks into nested Hashes, and every key may carry attributes (unit, limits, the timestamp of its
value, ...) beside its value. Insertion order is kept because configurations are shown to people.

>>> h = Hash()
>>> h["motor.position"] = 1.5
>>> h.set_attribute("motor.position", "unit", "mm")
>>> h["motor"]
Hash({'position': 1.5}, attrs={'position': {'unit': 'mm'}})
>>> h.paths()
['motor.position']
"""

from __future__ import annotations

import copy as _copy
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, MutableMapping, ValuesView
from typing import Any, Final

import numpy as np

SEPARATOR: Final = "."


def _check_key(key: object) -> str:
    """A key is one path component: a non-empty str without the separator."""
    if type(key) is not str:
        raise TypeError(f"Hash keys must be str, got {type(key).__name__} ({key!r})")
    if not key or SEPARATOR in key:
        raise ValueError(f"invalid Hash key {key!r}: keys are non-empty and contain no {SEPARATOR!r}")
    return key


def _split(path: object) -> list[str]:
    if type(path) is not str:
        raise TypeError(f"Hash paths must be str, got {type(path).__name__} ({path!r})")
    parts = path.split(SEPARATOR)
    if "" in parts:
        raise ValueError(f"invalid Hash path {path!r}: empty component")
    return parts


def values_equal(a: Any, b: Any) -> bool:
    """Equality that understands numpy arrays (same dtype incl. byte order, shape and content),
    and containers holding them, where ``==`` would give an array or raise."""
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b))
        )
    if isinstance(a, Hash):
        return isinstance(b, Hash) and a == b
    if isinstance(a, list | tuple):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(values_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(values_equal(v, b[k]) for k, v in a.items())
        )
    return bool(a == b)


class Hash(MutableMapping[str, Any]):
    """An ordered mapping of str keys to values, where ``"a.b.c"`` addresses nested Hashes and each
    key may carry attributes.

    - ``h["a.b.c"] = 1`` creates the Hash nodes ``a`` and ``a.b`` as needed; setting a path through a
      value that is not a Hash raises TypeError. A missing path raises ``KeyError(path)``.
    - Iteration, ``keys()``, ``values()``, ``items()`` and ``len`` see the top level only, in insertion
      order; ``paths()`` lists every leaf path depth first.
    - Replacing a value keeps its attributes; deleting a key drops them.
    - Equality ignores key order (like ``dict``): the same keys, equal values (numpy arrays by dtype,
      shape and content) and equal attributes. NaN is unequal to itself, as in Python.
    - ``copy()`` copies the tree of Hash nodes (also Hashes inside lists) and the attributes; leaf
      values such as arrays are shared. ``copy.deepcopy`` copies everything.
    """

    __slots__ = ("_attrs", "_data")

    _data: dict[str, Any]
    # only keys that have attributes appear here, never with an empty dict
    _attrs: dict[str, dict[str, Any]]

    def __init__(
        self, mapping_or_pairs: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /, **kwargs: Any
    ):
        self._data = {}
        self._attrs = {}
        if mapping_or_pairs:
            self.update(mapping_or_pairs)
        if kwargs:
            self.update(kwargs)

    @classmethod
    def _from_trusted(cls, data: dict[str, Any], attrs: dict[str, dict[str, Any]]) -> Hash:
        """Wrap already validated dicts without copying (the codec's decode path)."""
        h = cls.__new__(cls)
        h._data = data
        h._attrs = attrs
        return h

    # --- path resolution ----------------------------------------------------------------------------

    def _parent(self, path: str, create: bool) -> tuple[Hash, str]:
        """The Hash holding the last component of ``path``, and that component."""
        parts = _split(path)
        node = self
        for depth, part in enumerate(parts[:-1]):
            child = node._data.get(part)
            if not isinstance(child, Hash):
                if not create:
                    raise KeyError(path)
                if child is not None or part in node._data:
                    where = SEPARATOR.join(parts[: depth + 1])
                    held = type(child).__name__
                    raise TypeError(
                        f"cannot set {path!r}: {where!r} holds a value of type {held}, not a Hash"
                    )
                child = Hash()
                node._data[part] = child
            node = child
        return node, parts[-1]

    def _find(self, path: object) -> tuple[Hash, str]:
        """Like ``_parent`` for an existing key: KeyError naming the path otherwise."""
        if type(path) is str and path in self._data:
            return self, path
        try:
            node, key = self._parent(path, create=False)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise KeyError(path) from None
        if key not in node._data:
            raise KeyError(path)
        return node, key

    # --- mapping protocol -------------------------------------------------------------------------

    def __getitem__(self, path: str) -> Any:
        try:
            return self._data[path]
        except (KeyError, TypeError):
            node, key = self._find(path)
            return node._data[key]

    def __setitem__(self, path: str, value: Any) -> None:
        if type(path) is str and SEPARATOR not in path and path:
            self._data[path] = value
            return
        node, key = self._parent(path, create=True)
        node._data[key] = value

    def __delitem__(self, path: str) -> None:
        node, key = self._find(path)
        del node._data[key]
        node._attrs.pop(key, None)

    def __contains__(self, path: object) -> bool:
        try:
            self._find(path)
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> KeysView[str]:
        return self._data.keys()

    def values(self) -> ValuesView[Any]:
        return self._data.values()

    def items(self) -> ItemsView[str, Any]:
        return self._data.items()

    def clear(self) -> None:
        self._data.clear()
        self._attrs.clear()

    def paths(self) -> list[str]:
        """Every leaf path, depth first in insertion order. An empty Hash node counts as a leaf;
        a list of Hashes is a leaf (it is one value)."""
        out: list[str] = []
        self._collect_paths("", out)
        return out

    def _collect_paths(self, prefix: str, out: list[str]) -> None:
        for key, value in self._data.items():
            path = prefix + key
            if isinstance(value, Hash) and value._data:
                value._collect_paths(path + SEPARATOR, out)
            else:
                out.append(path)

    # --- attributes -------------------------------------------------------------------------------

    def get_attribute(self, path: str, name: str) -> Any:
        """The attribute ``name`` of ``path``; KeyError naming both if either is missing."""
        node, key = self._find(path)
        try:
            return node._attrs[key][name]
        except KeyError:
            raise KeyError(f"{path}@{name}") from None

    def get_attributes(self, path: str) -> dict[str, Any]:
        """A copy of all attributes of ``path`` (empty if it has none)."""
        node, key = self._find(path)
        return dict(node._attrs.get(key, ()))

    def set_attribute(self, path: str, name: str, value: Any) -> None:
        """Set one attribute of an existing ``path``."""
        node, key = self._find(path)
        _check_attribute_name(name)
        node._attrs.setdefault(key, {})[name] = value

    def set_attributes(self, path: str, attributes: Mapping[str, Any]) -> None:
        """Replace all attributes of an existing ``path`` with ``attributes``."""
        node, key = self._find(path)
        fresh = dict(attributes)
        for name in fresh:
            _check_attribute_name(name)
        if fresh:
            node._attrs[key] = fresh
        else:
            node._attrs.pop(key, None)

    def has_attribute(self, path: str, name: str) -> bool:
        node, key = self._find(path)
        return name in node._attrs.get(key, ())

    # --- merging and copying ----------------------------------------------------------------------

    def update(  # type: ignore[override]
        self, other: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), /, **kwargs: Any
    ) -> None:
        """Merge ``other`` in: where both sides hold a Hash the merge recurses, otherwise the value
        is replaced. Attributes of ``other`` are merged into ours. Keys of a plain mapping (and of
        pairs) are paths."""
        if isinstance(other, Hash):
            self._merge_hash(other)
        else:
            pairs = other.items() if isinstance(other, Mapping) else other
            for path, value in pairs:
                self._merge_value(path, value)
        for path, value in kwargs.items():
            self._merge_value(path, value)

    def _merge_value(self, path: str, value: Any) -> None:
        if isinstance(value, Hash):
            node, key = self._parent(path, create=True)
            mine = node._data.get(key)
            if isinstance(mine, Hash):
                mine._merge_hash(value)
            else:
                node._data[key] = value.copy()
            return
        self[path] = value

    def _merge_hash(self, other: Hash) -> None:
        for key, value in other._data.items():
            mine = self._data.get(key)
            if isinstance(value, Hash) and isinstance(mine, Hash):
                mine._merge_hash(value)
            else:
                self._data[key] = _copy_tree(value)
        for key, attrs in other._attrs.items():
            self._attrs.setdefault(key, {}).update(attrs)

    def copy(self) -> Hash:
        """A copy of the Hash tree and its attributes; leaf values are shared."""
        data = {key: _copy_tree(value) for key, value in self._data.items()}
        attrs = {key: dict(attrs) for key, attrs in self._attrs.items()}
        return Hash._from_trusted(data, attrs)

    def __copy__(self) -> Hash:
        return self.copy()

    def __deepcopy__(self, memo: dict[int, Any]) -> Hash:
        result = Hash._from_trusted({}, {})
        memo[id(self)] = result
        result._data = _copy.deepcopy(self._data, memo)
        result._attrs = _copy.deepcopy(self._attrs, memo)
        return result

    def __reduce__(self) -> tuple[Any, ...]:
        return (Hash._from_trusted, (self._data, self._attrs))

    # --- conversion -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dicts (Hashes inside lists too); attributes are dropped."""
        return {key: _to_plain(value) for key, value in self._data.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Hash:
        """Build a Hash in which every nested dict (also inside lists) becomes a Hash. Keys with
        dots are paths, as for ``h[path] = value``."""
        h = cls()
        for key, value in d.items():
            h[key] = _from_plain(value)
        return h

    # --- comparison and display -------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Hash):
            return NotImplemented
        if self is other:
            return True
        if self._data.keys() != other._data.keys() or self._attrs.keys() != other._attrs.keys():
            return False
        return all(values_equal(value, other._data[key]) for key, value in self._data.items()) and all(
            values_equal(attrs, other._attrs[key]) for key, attrs in self._attrs.items()
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        if self._attrs:
            return f"Hash({self._data!r}, attrs={self._attrs!r})"
        return f"Hash({self._data!r})"


def _check_attribute_name(name: object) -> None:
    if type(name) is not str or not name:
        raise TypeError(f"attribute names must be non-empty str, got {name!r}")


def _copy_tree(value: Any) -> Any:
    if isinstance(value, Hash):
        return value.copy()
    if isinstance(value, list) and any(isinstance(item, Hash) for item in value):
        return [_copy_tree(item) for item in value]
    return value


def _to_plain(value: Any) -> Any:
    if isinstance(value, Hash):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return type(value)(_to_plain(item) for item in value)
    if isinstance(value, dict):
        return {key: _to_plain(item) for key, item in value.items()}
    return value


def _from_plain(value: Any) -> Any:
    if isinstance(value, Hash):
        return value.copy()
    if isinstance(value, Mapping):
        return Hash.from_dict(value)
    if isinstance(value, list | tuple):
        return type(value)(_from_plain(item) for item in value)
    return value


__all__ = ["SEPARATOR", "Hash", "values_equal"]
