"""An optional declarative finite state machine for devices.

A machine is declared once, as data: a table of :class:`Transition` rows, entry/exit hooks per state,
sub-machines nested inside states and an error state. Declared as a class attribute it acts as a
descriptor, so every instance of the class gets its own running copy bound to it, on which method names
given as strings resolve::

    class Motor(Device):
        fsm = StateMachine(
            initial=State.OFF,
            transitions=[
                Transition(State.OFF, "switch_on", State.ON, action="power_up"),
                Transition(State.ON, "switch_off", State.OFF),
                Transition("*", "fault", State.ERROR),
            ],
            error_state=State.ERROR,
        )

        async def power_up(self) -> None: ...

    await motor.fsm.fire("switch_on")   # -> State.ON, or IllegalTransition

Semantics (UML-like, kept small on purpose):

* An event goes to the innermost active machine first; a machine without a row for it passes it to the
  enclosing machine. Rows with source ``"*"`` match any state of their machine, after specific rows.
* Several rows for one (source, event) are tried in order; the first whose guard passes is taken. If
  all guards refuse, :class:`IllegalTransition` says so and nothing runs.
* An external transition runs: exit hooks (innermost first), the action, then entry hooks (outermost
  first, descending into nested machines' initial states). ``target=None`` makes an internal
  transition: only the action runs.
* An exception in an action or hook moves the machine to the nearest ``error_state`` (exit hooks are
  skipped: the machine is in trouble), records ``error_reason`` and is re-raised to the caller of
  :meth:`BoundStateMachine.fire`. Without an error state the machine stays in its source state.
* Listeners hear one :class:`StateChange` per completed transition that changed the state.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import structlog

from .errors import IllegalTransition, SchemaError
from .states import State

log = structlog.get_logger(__name__)

Callback = Callable[..., Any] | str
"""A callable, or the name of a method on the machine's owner."""

ANY = "*"


@dataclass(frozen=True)
class Transition:
    """One row of a transition table.

    ``source`` is a state, a dotted nested path (``"ON.MOVING"``), a sequence of these, or ``"*"``;
    ``target`` is a state or dotted path, or None for an internal transition. ``action`` receives the
    event's arguments; ``guard`` receives them too and returns (or awaits to) a bool.
    """

    source: State | str | Sequence[State | str]
    event: str
    target: State | str | None = None
    action: Callback | None = None
    guard: Callback | None = None


@dataclass(frozen=True)
class StateChange:
    """What a listener hears: the leaf state before and after, the event, and a reason for errors."""

    old: State
    new: State
    event: str | None
    path: tuple[State, ...]
    reason: str | None = None


Listener = Callable[[StateChange], Any]


@dataclass(frozen=True)
class _Row:
    source: tuple[State, ...] | None  # None matches any state of the machine
    event: str
    target: tuple[State, ...] | None
    action: Callback | None
    guard: Callback | None

    def describe(self) -> str:
        source = ".".join(self.source) if self.source else ANY
        target = ".".join(self.target) if self.target else "(internal)"
        return f"{source} --{self.event}--> {target}"


def _as_state(value: State | str, where: str) -> State:
    try:
        return State.from_name(value)
    except ValueError as exc:
        raise SchemaError(f"state machine {where}: {exc}") from None


def _name_of(callback: Callback) -> str:
    return callback if isinstance(callback, str) else getattr(callback, "__qualname__", repr(callback))


class StateMachine:
    """The declaration of a state machine; also usable directly (``await machine.fire(...)``)."""

    def __init__(
        self,
        initial: State | str,
        transitions: Iterable[Transition],
        *,
        entry: Mapping[State | str, Callback] | None = None,
        exit: Mapping[State | str, Callback] | None = None,
        nested: Mapping[State | str, StateMachine] | None = None,
        error_state: State | str | None = None,
    ) -> None:
        self.initial = _as_state(initial, "initial")
        self.error_state = None if error_state is None else _as_state(error_state, "error_state")
        self.entry = {_as_state(s, "entry"): cb for s, cb in (entry or {}).items()}
        self.exit = {_as_state(s, "exit"): cb for s, cb in (exit or {}).items()}
        self.nested = {_as_state(s, "nested"): m for s, m in (nested or {}).items()}
        self.transitions = tuple(transitions)
        self._attr_name: str | None = None
        self._standalone: BoundStateMachine | None = None
        self.states = self._collect_states()
        self._rows = [row for t in self.transitions for row in self._rows_of(t)]

    # --- declaration checks -------------------------------------------------------------------
    def _collect_states(self) -> frozenset[State]:
        states = {self.initial, *self.entry, *self.exit, *self.nested}
        if self.error_state is not None:
            states.add(self.error_state)
        for t in self.transitions:
            sources = [t.source] if isinstance(t.source, str | State) else list(t.source)
            for end in [*sources, t.target]:
                if end is None or end == ANY:
                    continue
                if isinstance(end, str) and not isinstance(end, State) and "." in end:
                    states.add(_as_state(end.split(".", 1)[0], f"transition on {t.event!r}"))
                    continue
                state = _as_state(end, f"transition on {t.event!r}")
                # A bare state a nested machine knows belongs to that machine, not to this one.
                if not any(sub.knows(state) for sub in self.nested.values()):
                    states.add(state)
        return frozenset(states)

    def _rows_of(self, t: Transition) -> list[_Row]:
        if not isinstance(t.event, str) or not t.event:
            raise SchemaError(f"state machine transition {t!r}: the event must be a non-empty string")
        sources = [t.source] if isinstance(t.source, str | State) else list(t.source)
        target = None if t.target is None else self.resolve_path(t.target)
        rows = []
        for source in sources:
            path = None if source == ANY else self.resolve_path(source)
            rows.append(_Row(path, t.event, target, t.action, t.guard))
        return rows

    def resolve_path(self, spec: State | str) -> tuple[State, ...]:
        """A state or dotted path as a tuple of states from this machine down.

        A bare state that only a nested machine knows is found there when it is unambiguous.
        """
        if isinstance(spec, State) or "." not in spec:
            state = _as_state(spec, "path")
            if state in self.states:
                return (state,)
            found = [
                (outer, *sub.resolve_path(state)) for outer, sub in self.nested.items() if sub.knows(state)
            ]
            if len(found) == 1:
                return tuple(found[0])
            why = "is ambiguous, give a dotted path" if found else "is not a state of this machine"
            raise SchemaError(f"state machine: state {state.name} {why}")
        head, rest = spec.split(".", 1)
        state = _as_state(head, "path")
        if state not in self.states:
            raise SchemaError(f"state machine: {spec!r} starts with {head}, not a state of this machine")
        if state not in self.nested:
            raise SchemaError(f"state machine: {spec!r} descends into {head}, which has no nested machine")
        return (state, *self.nested[state].resolve_path(rest))

    def knows(self, state: State) -> bool:
        """True if this machine or one nested in it has the state."""
        return state in self.states or any(sub.knows(state) for sub in self.nested.values())

    def rows_for(self, path: Sequence[State], event: str) -> list[_Row]:
        """The rows of this machine matching the active sub-path ``path`` for ``event``, best first."""
        specific = [
            r for r in self._rows if r.event == event and r.source is not None and _starts(path, r.source)
        ]
        specific.sort(key=lambda r: -len(r.source or ()))
        return specific + [r for r in self._rows if r.event == event and r.source is None]

    def events_for(self, path: Sequence[State]) -> set[str]:
        return {r.event for r in self._rows if r.source is None or _starts(path, r.source)}

    def callbacks(self) -> Iterable[tuple[str, Callback]]:
        """Every callback with a description of where it is used, including nested machines'."""
        for row in self._rows:
            for cb in (row.action, row.guard):
                if cb is not None:
                    yield row.describe(), cb
        for kind, hooks in (("entry", self.entry), ("exit", self.exit)):
            for state, cb in hooks.items():
                yield f"{kind} of {state.name}", cb
        for sub in self.nested.values():
            yield from sub.callbacks()

    # --- binding ------------------------------------------------------------------------------
    def bind(self, owner: object | None = None, *, listener: Listener | None = None) -> BoundStateMachine:
        """A running copy of this machine whose string callbacks are methods of ``owner``."""
        bound = BoundStateMachine(self, owner)
        if listener is not None:
            bound.add_listener(listener)
        return bound

    def __set_name__(self, owner: type, name: str) -> None:
        self._attr_name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> StateMachine: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> BoundStateMachine: ...
    def __get__(self, instance: object | None, owner: type | None = None) -> StateMachine | BoundStateMachine:
        if instance is None:
            return self
        # Stored under the attribute's own name: instance attributes win over this non-data
        # descriptor, so later look-ups do not come back here.
        bound = self.bind(instance)
        if self._attr_name is not None:
            instance.__dict__[self._attr_name] = bound
        return bound

    # --- standalone use: one running copy without an owner ------------------------------------
    @property
    def running(self) -> BoundStateMachine:
        """The machine's own running copy, used when the machine is not a class attribute."""
        if self._standalone is None:
            self._standalone = self.bind()
        return self._standalone

    @property
    def state(self) -> State:
        return self.running.state

    @property
    def path(self) -> tuple[State, ...]:
        return self.running.path

    @property
    def state_name(self) -> str:
        return self.running.state_name

    @property
    def error(self) -> BaseException | None:
        return self.running.error

    @property
    def error_reason(self) -> str | None:
        return self.running.error_reason

    async def start(self) -> State:
        return await self.running.start()

    async def fire(self, event: str, *args: Any, **kwargs: Any) -> State:
        return await self.running.fire(event, *args, **kwargs)

    def post(self, event: str, *args: Any, **kwargs: Any) -> None:
        self.running.post(event, *args, **kwargs)

    def can_fire(self, event: str) -> bool:
        return self.running.can_fire(event)

    def allowed_events(self) -> tuple[str, ...]:
        return self.running.allowed_events()

    def add_listener(self, listener: Listener) -> None:
        self.running.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        self.running.remove_listener(listener)


def _takes_no_parameters(function: Callable[..., Any]) -> bool:
    try:
        return not inspect.signature(function).parameters
    except (TypeError, ValueError):  # some builtins have no signature: pass them everything
        return False


def _starts(path: Sequence[State], prefix: Sequence[State]) -> bool:
    return tuple(path[: len(prefix)]) == tuple(prefix)


class BoundStateMachine:
    """One running copy of a :class:`StateMachine`: its current state, listeners and callbacks."""

    def __init__(self, machine: StateMachine, owner: object | None) -> None:
        self.machine = machine
        self.owner = owner
        self._callbacks = {id(cb): self._resolve(cb, where) for where, cb in machine.callbacks()}
        # Callbacks that take no parameters are called without the event's arguments: a guard like
        # ``has_power(self)`` need not accept what the action needs.
        self._no_parameters = {key for key, fn in self._callbacks.items() if _takes_no_parameters(fn)}
        self._path: list[State] = []
        self._enter_initial_path(machine, self._path)
        self._started = False
        self._listeners: list[Listener] = []
        self._deferred: deque[tuple[str, tuple[Any, ...], dict[str, Any]]] = deque()
        self._lock: asyncio.Lock | None = None
        self._running_task: asyncio.Task[Any] | None = None
        self.error: BaseException | None = None
        self.error_reason: str | None = None

    @staticmethod
    def _enter_initial_path(machine: StateMachine, path: list[State]) -> None:
        path.append(machine.initial)
        if machine.initial in machine.nested:
            BoundStateMachine._enter_initial_path(machine.nested[machine.initial], path)

    def _resolve(self, callback: Callback, where: str) -> Callable[..., Any]:
        if not isinstance(callback, str):
            name = getattr(callback, "__name__", None)
            # A plain function written in the owner's class body is that class's method: bind it.
            if self.owner is not None and name and getattr(type(self.owner), name, None) is callback:
                bound: Callable[..., Any] = getattr(self.owner, name)
                return bound
            return callback
        if self.owner is None:
            raise SchemaError(
                f"state machine {where}: callback {callback!r} is a name, but no owner is bound"
            )
        method: Callable[..., Any] | None = getattr(self.owner, callback, None)
        if method is None or not callable(method):
            raise SchemaError(
                f"state machine {where}: {type(self.owner).__name__} has no method {callback!r}"
            )
        return method

    # --- inspection -----------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """The innermost active state."""
        return self._path[-1]

    @property
    def path(self) -> tuple[State, ...]:
        """The active states from the outermost machine down."""
        return tuple(self._path)

    @property
    def state_name(self) -> str:
        """The active path as a dotted name, e.g. ``"ON.MOVING"``."""
        return ".".join(self._path)

    def _machines(self) -> list[StateMachine]:
        machines = [self.machine]
        for state in self._path[:-1]:
            machines.append(machines[-1].nested[state])
        return machines

    def allowed_events(self) -> tuple[str, ...]:
        """Events some row accepts in the current state (guards not consulted), sorted."""
        events: set[str] = set()
        for depth, machine in enumerate(self._machines()):
            events |= machine.events_for(self._path[depth:])
        return tuple(sorted(events))

    def can_fire(self, event: str) -> bool:
        return event in self.allowed_events()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(change)`` (sync or async) after every transition that changes the state."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    # --- running --------------------------------------------------------------------------------
    async def start(self) -> State:
        """Run the entry hooks of the initial states (once); ``fire`` does this itself if needed."""
        if self._started:
            return self.state
        self._started = True
        machines = self._machines()
        try:
            for machine, state in zip(machines, self._path, strict=True):
                if state in machine.entry:
                    await self._call(machine.entry[state])
        except Exception as exc:
            await self._fail(exc, 0, f"entry of initial state {self.state_name}", None)
            raise
        return self.state

    async def fire(self, event: str, *args: Any, **kwargs: Any) -> State:
        """Handle ``event`` and return the new state; raises IllegalTransition if it is not accepted.

        Concurrent calls are handled one after the other. From inside an action or hook, use
        :meth:`post` instead: the event then runs right after the current transition.
        """
        if self._running_task is not None and self._running_task is asyncio.current_task():
            raise RuntimeError(
                f"fire({event!r}) from inside a transition would deadlock; use post({event!r}) instead"
            )
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            self._running_task = asyncio.current_task()
            try:
                await self.start()
                await self._dispatch(event, args, kwargs)
                while self._deferred:
                    await self._dispatch(*self._deferred.popleft())
            finally:
                self._deferred.clear()
                self._running_task = None
        return self.state

    def post(self, event: str, *args: Any, **kwargs: Any) -> None:
        """Queue ``event`` to run when the transition in progress has finished (e.g. a completion)."""
        if self._running_task is None:
            raise RuntimeError(f"post({event!r}) outside a transition: await fire({event!r}) instead")
        self._deferred.append((event, args, kwargs))

    async def _dispatch(self, event: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        machines = self._machines()
        for depth in reversed(range(len(machines))):
            rows = machines[depth].rows_for(self._path[depth:], event)
            if rows:
                break
        else:
            raise IllegalTransition(self.state_name, event, allowed=self.allowed_events())
        for row in rows:
            if row.guard is None or await self._call(row.guard, *args, **kwargs):
                await self._execute(depth, row, event, args, kwargs)
                return
        guards = ", ".join(_name_of(r.guard) for r in rows if r.guard is not None)
        raise IllegalTransition(self.state_name, event, reason=f"refused by guard {guards}")

    async def _execute(
        self, depth: int, row: _Row, event: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        old_path = list(self._path)
        step = f"action of {row.describe()}"
        try:
            if row.target is not None:
                machines = self._machines()
                # States shared by source and target stay active (ON.MOVING -> ON.STOPPED keeps ON);
                # the target's own leaf is always left and re-entered, so self-transitions run hooks.
                shared = 0
                while shared < len(row.target) - 1 and depth + shared < len(self._path) - 1:
                    if self._path[depth + shared] != row.target[shared]:
                        break
                    shared += 1
                top = depth + shared
                step = f"exit hooks of {row.describe()}"
                for level in reversed(range(top, len(self._path))):
                    hook = machines[level].exit.get(self._path[level])
                    if hook is not None:
                        await self._call(hook)
                del self._path[top:]
                step = f"action of {row.describe()}"
            if row.action is not None:
                await self._call(row.action, *args, **kwargs)
            if row.target is not None:
                step = f"entry hooks of {row.describe()}"
                await self._enter(machines[top], list(row.target[shared:]))
        except Exception as exc:
            await self._fail(exc, depth, step, event, old_path)
            raise
        except BaseException:
            # Cancelled half-way: fall back to the source state rather than a half-entered one.
            self._path[:] = old_path
            raise
        if self._path != old_path:
            await self._notify(StateChange(old_path[-1], self.state, event, self.path))

    async def _enter(self, machine: StateMachine, targets: list[State]) -> None:
        state = targets.pop(0) if targets else machine.initial
        self._path.append(state)
        if state in machine.entry:
            await self._call(machine.entry[state])
        if state in machine.nested:
            await self._enter(machine.nested[state], targets)

    async def _fail(
        self, exc: Exception, depth: int, step: str, event: str | None, old_path: list[State] | None = None
    ) -> None:
        reason = f"{type(exc).__name__}: {exc} (in {step})"
        old_state = (old_path or self._path)[-1]
        machines = [self.machine]
        for state in (old_path or self._path)[:-1]:
            machines.append(machines[-1].nested[state])
        level = next((i for i in reversed(range(depth + 1)) if machines[i].error_state is not None), None)
        if level is None:
            log.warning("state machine action failed, staying in source state", reason=reason)
            if old_path is not None:
                self._path[:] = old_path
            return
        self.error, self.error_reason = exc, reason
        base = (old_path or self._path)[:level]
        self._path[:] = base
        error_state = machines[level].error_state
        assert error_state is not None
        log.error("state machine moves to its error state", state=error_state.name, reason=reason)
        try:
            await self._enter(machines[level], [error_state])
        except Exception:
            log.exception("entry hook of the error state failed", state=error_state.name)
            del self._path[level + 1 :]
        await self._notify(StateChange(old_state, self.state, event, self.path, reason))

    async def _call(self, callback: Callback, *args: Any, **kwargs: Any) -> Any:
        function = self._callbacks[id(callback)]
        if (args or kwargs) and id(callback) in self._no_parameters:
            args, kwargs = (), {}
        result = function(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _notify(self, change: StateChange) -> None:
        for listener in list(self._listeners):
            try:
                result = listener(change)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # A broken listener must not undo a transition that already happened.
                log.exception("state change listener failed", old=change.old.name, new=change.new.name)
