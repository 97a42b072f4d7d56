"""Slot declarations: ``@slot`` marks a method as callable from outside, with who may call it when.

The decorator only attaches a :class:`SlotSpec` to the function; :func:`karabo_async.schema.schema_of`
collects them and the device layer dispatches calls.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from .errors import SchemaError
from .states import AccessLevel, State

F = TypeVar("F", bound=Callable[..., Any])

SLOT_ATTRIBUTE = "__karabo_slot__"


@dataclass(frozen=True)
class SlotSpec:
    """A slot's declaration: its public name, the method behind it and who may call it when."""

    name: str
    method: str
    description: str = ""
    displayed_name: str = ""
    allowed_states: tuple[State, ...] | None = None
    required_access_level: AccessLevel = AccessLevel.USER
    is_async: bool = False
    arguments: tuple[str, ...] = ()

    def refusal(self, state: State | None, access_level: AccessLevel | None) -> str | None:
        """Why a call is refused in this state at this level, or None if it is allowed."""
        if state is not None and not state_allowed(self.allowed_states, state):
            return state_refusal(self.allowed_states, state)
        if access_level is not None and access_level < self.required_access_level:
            return f"needs access level {self.required_access_level.name}, caller has {access_level.name}"
        return None

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "description": self.description,
            "displayed_name": self.displayed_name,
            "required_access_level": int(self.required_access_level),
            "arguments": list(self.arguments),
        }
        if self.allowed_states is not None:
            doc["allowed_states"] = [s.value for s in self.allowed_states]
        return doc

    @classmethod
    def from_document(cls, name: str, doc: Mapping[str, Any]) -> SlotSpec:
        states = doc.get("allowed_states")
        return cls(
            name=name,
            method=name.rsplit(".", 1)[-1],
            description=doc.get("description", ""),
            displayed_name=doc.get("displayed_name", ""),
            allowed_states=None if states is None else tuple(State.from_name(s) for s in states),
            required_access_level=AccessLevel(doc.get("required_access_level", AccessLevel.USER)),
            arguments=tuple(doc.get("arguments", ())),
        )


@overload
def slot(fn: F, /) -> F: ...
@overload
def slot(
    name: str | None = None,
    /,
    *,
    allowed_states: Iterable[State | str] | None = None,
    required_access_level: AccessLevel | int = AccessLevel.USER,
    description: str = "",
    displayed_name: str = "",
) -> Callable[[F], F]: ...
def slot(
    target: Any = None,
    /,
    *,
    allowed_states: Iterable[State | str] | None = None,
    required_access_level: AccessLevel | int = AccessLevel.USER,
    description: str = "",
    displayed_name: str = "",
) -> Any:
    """Mark a method (sync or async) as a slot: ``@slot``, ``@slot("name")`` or ``@slot(allowed_states=...)``.

    The method itself is returned unchanged (a SlotSpec is attached to it), so ``self`` binds normally.
    ``"name"`` is the slot's public name when it should differ from the method's.
    """
    states = None if allowed_states is None else tuple(State.from_name(s) for s in allowed_states)

    def mark(fn: F, name: str | None = None) -> F:
        if not callable(fn):
            raise SchemaError(f"@slot decorates functions, not {fn!r}")
        params = list(inspect.signature(fn).parameters.values())[1:]
        doc = inspect.getdoc(fn) or ""
        spec = SlotSpec(
            name=name or fn.__name__,
            method=fn.__name__,
            description=description or (doc.splitlines()[0] if doc else ""),
            displayed_name=displayed_name,
            allowed_states=states,
            required_access_level=AccessLevel(required_access_level),
            is_async=inspect.iscoroutinefunction(fn),
            arguments=tuple(p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)),
        )
        setattr(fn, SLOT_ATTRIBUTE, spec)
        return fn

    if callable(target):
        return mark(target)
    if target is not None and not isinstance(target, str):
        raise SchemaError(f"@slot takes a function or a slot name, not {target!r}")
    return lambda fn: mark(fn, target)


def state_allowed(allowed: tuple[State, ...] | None, state: State) -> bool:
    return allowed is None or any(state.is_derived_from(a) for a in allowed)


def state_refusal(allowed: tuple[State, ...] | None, state: State) -> str:
    names = ", ".join(a.name for a in allowed or ())
    return f"not allowed in state {state.name} (allowed in: {names})"
