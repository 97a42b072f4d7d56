"""Device states, alarm conditions and access levels.

States form a tree, as in Karabo: every concrete state (``MOVING``) derives from broader ones
(``CHANGING``, ``NORMAL``, ``KNOWN``). Code that only cares whether a device is busy asks
``state.is_derived_from(State.CHANGING)`` instead of listing every busy state, and a property or slot
allowed in ``STATIC`` is allowed in every static state.

The tree::

    UNKNOWN
    KNOWN
    ├── INIT
    ├── ERROR
    ├── DISABLED
    ├── INTERLOCKED
    └── NORMAL
        ├── STATIC
        │   ├── ACTIVE: ON, STARTED, CLOSED, INSERTED, LOCKED, ENGAGED
        │   ├── PASSIVE: OFF, STOPPED, OPENED, EXTRACTED, UNLOCKED, DISENGAGED
        │   ├── IDLE
        │   └── READY
        ├── CHANGING
        │   ├── INCREASING: HEATING
        │   ├── DECREASING: COOLING
        │   └── MOVING, STARTING, STOPPING, INITIALIZING, RESETTING, HOMING, SWITCHING,
        │       OPENING, CLOSING, INSERTING, EXTRACTING
        └── RUNNING: ACQUIRING, PROCESSING, MONITORING

Severity (higher is worse) decides which state a composite device shows when its parts disagree
(:meth:`State.most_significant`): ERROR 7 > UNKNOWN 6 > INIT 5 > INTERLOCKED 4 > CHANGING 3 >
RUNNING 2 > STATIC (and NORMAL, KNOWN) 1 > DISABLED 0.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any


class State(enum.StrEnum):
    """A device state; the value is the name (``State.ON.value == "ON"``) so it travels as plain text."""

    UNKNOWN = "UNKNOWN"
    KNOWN = "KNOWN"
    INIT = "INIT"
    ERROR = "ERROR"
    DISABLED = "DISABLED"
    INTERLOCKED = "INTERLOCKED"
    NORMAL = "NORMAL"
    STATIC = "STATIC"
    ACTIVE = "ACTIVE"
    ON = "ON"
    STARTED = "STARTED"
    CLOSED = "CLOSED"
    INSERTED = "INSERTED"
    LOCKED = "LOCKED"
    ENGAGED = "ENGAGED"
    PASSIVE = "PASSIVE"
    OFF = "OFF"
    STOPPED = "STOPPED"
    OPENED = "OPENED"
    EXTRACTED = "EXTRACTED"
    UNLOCKED = "UNLOCKED"
    DISENGAGED = "DISENGAGED"
    IDLE = "IDLE"
    READY = "READY"
    CHANGING = "CHANGING"
    INCREASING = "INCREASING"
    HEATING = "HEATING"
    DECREASING = "DECREASING"
    COOLING = "COOLING"
    MOVING = "MOVING"
    STARTING = "STARTING"
    STOPPING = "STOPPING"
    INITIALIZING = "INITIALIZING"
    RESETTING = "RESETTING"
    HOMING = "HOMING"
    SWITCHING = "SWITCHING"
    OPENING = "OPENING"
    CLOSING = "CLOSING"
    INSERTING = "INSERTING"
    EXTRACTING = "EXTRACTING"
    RUNNING = "RUNNING"
    ACQUIRING = "ACQUIRING"
    PROCESSING = "PROCESSING"
    MONITORING = "MONITORING"

    @property
    def parent(self) -> State | None:
        """The broader state this one derives from; None for the roots UNKNOWN and KNOWN."""
        return _PARENTS[self]

    @property
    def ancestors(self) -> tuple[State, ...]:
        """This state and every state it derives from, nearest first."""
        chain: list[State] = []
        state: State | None = self
        while state is not None:
            chain.append(state)
            state = _PARENTS[state]
        return tuple(chain)

    def is_derived_from(self, other: State) -> bool:
        """True if this state is ``other`` or lies below it in the tree."""
        return other in self.ancestors

    @property
    def severity(self) -> int:
        """How bad this state is, from DISABLED (0) to ERROR (7); see the module docstring."""
        for state in self.ancestors:
            if state in _SEVERITY:
                return _SEVERITY[state]
        return _SEVERITY[State.KNOWN]

    @classmethod
    def from_name(cls, name: str | State) -> State:
        """The state called ``name`` (exactly as in the enum, e.g. ``"ON"``); ValueError if none is."""
        if isinstance(name, State):
            return name
        try:
            return cls[name]
        except KeyError:
            raise ValueError(f"unknown state {name!r}; states are {', '.join(s.name for s in cls)}") from None

    @classmethod
    def most_significant(cls, *states: State) -> State:
        """The state with the highest severity (the first one on a tie); UNKNOWN if none are given."""
        if not states:
            return cls.UNKNOWN
        return max(states, key=lambda state: state.severity)


_TREE: dict[State, tuple[State, ...]] = {
    State.KNOWN: (State.INIT, State.ERROR, State.DISABLED, State.INTERLOCKED, State.NORMAL),
    State.NORMAL: (State.STATIC, State.CHANGING, State.RUNNING),
    State.STATIC: (State.ACTIVE, State.PASSIVE, State.IDLE, State.READY),
    State.ACTIVE: (State.ON, State.STARTED, State.CLOSED, State.INSERTED, State.LOCKED, State.ENGAGED),
    State.PASSIVE: (
        State.OFF,
        State.STOPPED,
        State.OPENED,
        State.EXTRACTED,
        State.UNLOCKED,
        State.DISENGAGED,
    ),
    State.CHANGING: (
        State.INCREASING,
        State.DECREASING,
        State.MOVING,
        State.STARTING,
        State.STOPPING,
        State.INITIALIZING,
        State.RESETTING,
        State.HOMING,
        State.SWITCHING,
        State.OPENING,
        State.CLOSING,
        State.INSERTING,
        State.EXTRACTING,
    ),
    State.INCREASING: (State.HEATING,),
    State.DECREASING: (State.COOLING,),
    State.RUNNING: (State.ACQUIRING, State.PROCESSING, State.MONITORING),
}

_PARENTS: dict[State, State | None] = {state: None for state in State}
for _parent, _children in _TREE.items():
    for _child in _children:
        _PARENTS[_child] = _parent

_SEVERITY: dict[State, int] = {
    State.DISABLED: 0,
    State.KNOWN: 1,
    State.RUNNING: 2,
    State.CHANGING: 3,
    State.INTERLOCKED: 4,
    State.INIT: 5,
    State.UNKNOWN: 6,
    State.ERROR: 7,
}


_ALARM_RANK = {"none": 0, "warn": 1, "alarm": 2}


class AlarmCondition(enum.StrEnum):
    """How far a value is outside its limits; ordered NONE < WARN < ALARM (not alphabetically)."""

    NONE = "none"
    WARN = "warn"
    ALARM = "alarm"

    @property
    def rank(self) -> int:
        """0, 1 or 2: the position in the NONE < WARN < ALARM order."""
        return _ALARM_RANK[self.value]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, AlarmCondition):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, AlarmCondition):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, AlarmCondition):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, AlarmCondition):
            return NotImplemented
        return self.rank >= other.rank

    # The comparisons above replace str's, so the hash must be restated for the class to stay hashable.
    __hash__ = enum.StrEnum.__hash__

    @classmethod
    def worst(cls, *conditions: AlarmCondition | str | Iterable[AlarmCondition | str]) -> AlarmCondition:
        """The most severe of the conditions (given as arguments or one iterable); NONE if there are none."""
        flat: list[Any] = []
        for item in conditions:
            if isinstance(item, str):
                flat.append(item)
            else:
                flat.extend(item)
        return max((cls(item) for item in flat), key=lambda c: c.rank, default=cls.NONE)


class AccessLevel(enum.IntEnum):
    """Who may do what; compared as integers, so ``level >= AccessLevel.OPERATOR`` reads naturally."""

    OBSERVER = 0
    USER = 1
    OPERATOR = 2
    EXPERT = 3
    ADMIN = 4
