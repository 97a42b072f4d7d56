"""The declarative state machine: the full state x event matrix, hooks, nesting, guards, errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from karabo_async import IllegalTransition, SchemaError, State, StateChange, StateMachine, Transition

# A FairMQ-like device machine.
EVENTS = ["init", "complete", "run", "stop", "reset", "fail", "recover"]
STATES = [State.IDLE, State.INITIALIZING, State.READY, State.RUNNING, State.RESETTING, State.ERROR]
LEGAL: dict[tuple[State, str], State] = {
    (State.IDLE, "init"): State.INITIALIZING,
    (State.INITIALIZING, "complete"): State.READY,
    (State.READY, "run"): State.RUNNING,
    (State.RUNNING, "stop"): State.READY,
    (State.READY, "reset"): State.RESETTING,
    (State.RESETTING, "complete"): State.IDLE,
    (State.ERROR, "recover"): State.IDLE,
    **{(s, "fail"): State.ERROR for s in STATES},
}
# Events that lead from IDLE to each state.
ROUTE = {
    State.IDLE: [],
    State.INITIALIZING: ["init"],
    State.READY: ["init", "complete"],
    State.RUNNING: ["init", "complete", "run"],
    State.RESETTING: ["init", "complete", "reset"],
    State.ERROR: ["fail"],
}


class FairDevice:
    fsm = StateMachine(
        initial=State.IDLE,
        transitions=[
            Transition(State.IDLE, "init", State.INITIALIZING, action="on_init"),
            Transition(State.INITIALIZING, "complete", State.READY),
            Transition(State.READY, "run", State.RUNNING, action="on_run"),
            Transition(State.RUNNING, "stop", State.READY),
            Transition(State.READY, "reset", State.RESETTING),
            Transition(State.RESETTING, "complete", State.IDLE),
            Transition("*", "fail", State.ERROR),
            Transition(State.ERROR, "recover", State.IDLE),
        ],
        error_state=State.ERROR,
    )

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def on_init(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("init", args, kwargs))

    async def on_run(self) -> None:
        self.calls.append("run")


async def device_in(state: State) -> FairDevice:
    device = FairDevice()
    for event in ROUTE[state]:
        await device.fsm.fire(event)
    assert device.fsm.state is state
    return device


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("event", EVENTS)
async def test_every_state_and_event(state: State, event: str) -> None:
    device = await device_in(state)
    if (state, event) in LEGAL:
        assert await device.fsm.fire(event) is LEGAL[(state, event)]
        assert device.fsm.state is LEGAL[(state, event)]
    else:
        with pytest.raises(IllegalTransition) as caught:
            await device.fsm.fire(event)
        assert caught.value.state == state.name
        assert caught.value.event == event
        assert state.name in str(caught.value) and repr(event) in str(caught.value)
        assert device.fsm.state is state


async def test_allowed_events_match_the_table() -> None:
    for state in STATES:
        device = await device_in(state)
        assert set(device.fsm.allowed_events()) == {e for (s, e) in LEGAL if s is state}
        assert device.fsm.can_fire("fail")


async def test_actions_get_the_event_arguments_sync_and_async() -> None:
    device = FairDevice()
    await device.fsm.fire("init", 1, mode="fast")
    await device.fsm.fire("complete")
    await device.fsm.fire("run")
    assert device.calls == [("init", (1,), {"mode": "fast"}), "run"]


async def test_each_instance_has_its_own_running_machine() -> None:
    a, b = FairDevice(), FairDevice()
    await a.fsm.fire("init")
    assert a.fsm.state is State.INITIALIZING
    assert b.fsm.state is State.IDLE
    assert a.fsm is a.fsm
    assert isinstance(FairDevice.fsm, StateMachine)


async def test_listener_hears_every_change_once() -> None:
    device = FairDevice()
    heard: list[StateChange] = []
    device.fsm.add_listener(heard.append)
    await device.fsm.fire("init")
    await device.fsm.fire("complete")
    assert [(c.old, c.new, c.event) for c in heard] == [
        (State.IDLE, State.INITIALIZING, "init"),
        (State.INITIALIZING, State.READY, "complete"),
    ]


async def test_async_listener_is_awaited_and_a_failing_listener_does_not_undo_the_change() -> None:
    device = FairDevice()
    heard: list[State] = []

    async def record(change: StateChange) -> None:
        heard.append(change.new)

    def broken(change: StateChange) -> None:
        raise RuntimeError("listener bug")

    device.fsm.add_listener(broken)
    device.fsm.add_listener(record)
    await device.fsm.fire("init")
    assert heard == [State.INITIALIZING]
    assert device.fsm.state is State.INITIALIZING


class Lamp:
    """Entry and exit hooks, a guard, an internal transition and a failing action."""

    def __init__(self, broken: bool = False) -> None:
        self.log: list[str] = []
        self.broken = broken
        self.power = True

    def has_power(self) -> bool:
        return self.power

    async def enter_on(self) -> None:
        self.log.append("enter ON")

    def exit_on(self) -> None:
        self.log.append("exit ON")

    def enter_off(self) -> None:
        self.log.append("enter OFF")

    def switching(self) -> None:
        self.log.append("action")
        if self.broken:
            raise ValueError("bulb blew")

    def dim(self, level: int) -> None:
        self.log.append(f"dim {level}")

    fsm = StateMachine(
        initial=State.OFF,
        transitions=[
            Transition(State.OFF, "switch", State.ON, action="switching", guard="has_power"),
            Transition(State.ON, "switch", State.OFF, action="switching"),
            Transition(State.ON, "dim", None, action="dim"),
            Transition(State.ON, "switch_again", State.ON),
            Transition(State.ERROR, "repair", State.OFF),
        ],
        entry={State.ON: "enter_on", State.OFF: "enter_off"},
        exit={State.ON: "exit_on"},
        error_state=State.ERROR,
    )


async def test_hooks_run_in_order_exit_action_entry() -> None:
    lamp = Lamp()
    await lamp.fsm.start()
    await lamp.fsm.fire("switch")
    await lamp.fsm.fire("switch")
    assert lamp.log == ["enter OFF", "action", "enter ON", "exit ON", "action", "enter OFF"]


async def test_self_transition_runs_hooks_internal_transition_does_not() -> None:
    lamp = Lamp()
    await lamp.fsm.fire("switch")
    lamp.log.clear()
    changes: list[StateChange] = []
    lamp.fsm.add_listener(changes.append)
    await lamp.fsm.fire("dim", 3)
    assert lamp.log == ["dim 3"]
    await lamp.fsm.fire("switch_again")
    assert lamp.log == ["dim 3", "exit ON", "enter ON"]
    assert changes == []  # the state never changed


async def test_guard_refusal_is_a_clear_illegal_transition() -> None:
    lamp = Lamp()
    lamp.power = False
    with pytest.raises(IllegalTransition, match=r"refused by guard .*has_power"):
        await lamp.fsm.fire("switch")
    assert lamp.fsm.state is State.OFF
    assert "action" not in lamp.log


async def test_an_exception_in_an_action_moves_to_the_error_state_with_the_reason() -> None:
    lamp = Lamp(broken=True)
    heard: list[StateChange] = []
    lamp.fsm.add_listener(heard.append)
    with pytest.raises(ValueError, match="bulb blew"):
        await lamp.fsm.fire("switch")
    assert lamp.fsm.state is State.ERROR
    assert lamp.fsm.error_reason is not None
    assert "ValueError: bulb blew" in lamp.fsm.error_reason
    assert "OFF --switch--> ON" in lamp.fsm.error_reason
    assert heard[-1].new is State.ERROR and heard[-1].reason == lamp.fsm.error_reason
    assert await lamp.fsm.fire("repair") is State.OFF


async def test_without_an_error_state_a_failed_action_leaves_the_source_state() -> None:
    def fail() -> None:
        raise RuntimeError("no")

    machine = StateMachine(
        initial=State.OFF, transitions=[Transition(State.OFF, "go", State.ON, action=fail)]
    )
    with pytest.raises(RuntimeError):
        await machine.fire("go")
    assert machine.state is State.OFF


async def test_guards_are_tried_in_order() -> None:
    machine = StateMachine(
        initial=State.STOPPED,
        transitions=[
            Transition(State.STOPPED, "go", State.MOVING, guard=lambda speed: speed > 0),
            Transition(State.STOPPED, "go", State.HOMING, guard=lambda speed: speed == 0),
        ],
    )
    assert await machine.fire("go", 0) is State.HOMING


async def test_standalone_machine_with_plain_callables() -> None:
    seen: list[int] = []

    async def act(x: int) -> None:
        seen.append(x)

    machine = StateMachine(initial="OFF", transitions=[Transition("OFF", "on", "ON", action=act)])
    assert machine.state is State.OFF
    await machine.fire("on", 5)
    assert machine.state is State.ON and seen == [5]


class NestedMotor:
    """ON holds a sub-machine STOPPED <-> MOVING; outer events leave it from any sub-state."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def enter_on(self) -> None:
        self.log.append("enter ON")

    def exit_on(self) -> None:
        self.log.append("exit ON")

    def exit_moving(self) -> None:
        self.log.append("exit MOVING")

    def start_move(self, target: float) -> None:
        self.log.append(f"move to {target}")
        self.fsm.post("arrived")

    fsm = StateMachine(
        initial=State.OFF,
        transitions=[
            Transition(State.OFF, "on", State.ON),
            Transition(State.ON, "off", State.OFF),
            Transition(State.OFF, "go", "ON.MOVING"),
        ],
        nested={
            State.ON: StateMachine(
                initial=State.STOPPED,
                transitions=[
                    Transition(State.STOPPED, "move", State.MOVING, action="start_move"),
                    Transition(State.MOVING, "stop", State.STOPPED),
                    Transition(State.MOVING, "arrived", State.STOPPED),
                ],
                exit={State.MOVING: "exit_moving"},
            )
        },
        entry={State.ON: "enter_on"},
        exit={State.ON: "exit_on"},
    )


async def test_nested_machine_enters_its_initial_state_and_handles_inner_events() -> None:
    motor = NestedMotor()
    assert await motor.fsm.fire("on") is State.STOPPED
    assert motor.fsm.path == (State.ON, State.STOPPED)
    assert motor.fsm.state_name == "ON.STOPPED"
    assert set(motor.fsm.allowed_events()) == {"move", "off"}
    with pytest.raises(IllegalTransition) as caught:
        await motor.fsm.fire("stop")
    assert caught.value.state == "ON.STOPPED"


async def test_posted_completion_event_runs_after_the_transition() -> None:
    motor = NestedMotor()
    await motor.fsm.fire("on")
    heard: list[State] = []
    motor.fsm.add_listener(lambda c: heard.append(c.new))
    assert await motor.fsm.fire("move", 3.0) is State.STOPPED
    assert heard == [State.MOVING, State.STOPPED]
    assert motor.log == ["enter ON", "move to 3.0", "exit MOVING"]


async def test_outer_event_leaves_nested_states_innermost_first() -> None:
    motor = NestedMotor()
    await motor.fsm.fire("go")
    assert motor.fsm.path == (State.ON, State.MOVING)
    await motor.fsm.fire("off")
    assert motor.fsm.path == (State.OFF,)
    assert motor.log == ["enter ON", "exit MOVING", "exit ON"]


async def test_firing_from_inside_a_transition_is_refused_with_advice() -> None:
    holder: dict[str, StateMachine] = {}

    async def reenter() -> None:
        await holder["m"].fire("back")

    holder["m"] = StateMachine(
        initial=State.OFF,
        transitions=[
            Transition(State.OFF, "on", State.ON, action=reenter),
            Transition(State.ON, "back", State.OFF),
        ],
    )
    with pytest.raises(RuntimeError, match="use post"):
        await holder["m"].fire("on")


async def test_concurrent_events_are_handled_one_after_the_other() -> None:
    gate = asyncio.Event()
    running = asyncio.Event()
    order: list[str] = []

    async def slow() -> None:
        order.append("slow start")
        running.set()
        await gate.wait()
        order.append("slow end")

    machine = StateMachine(
        initial=State.OFF,
        transitions=[
            Transition(State.OFF, "on", State.ON, action=slow),
            Transition(State.ON, "off", State.OFF),
        ],
    )
    first = asyncio.create_task(machine.fire("on"))
    second = asyncio.create_task(machine.fire("off"))
    await running.wait()
    gate.set()
    assert await first is State.ON
    assert await second is State.OFF
    assert order == ["slow start", "slow end"]


async def test_cancelled_transition_stays_in_the_source_state() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    machine = StateMachine(
        initial=State.OFF, transitions=[Transition(State.OFF, "on", State.ON, action=forever)]
    )
    task = asyncio.create_task(machine.fire("on"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert machine.state is State.OFF


def test_bad_declarations_are_refused_early() -> None:
    with pytest.raises(SchemaError, match="WALKING"):
        StateMachine(initial="WALKING", transitions=[])
    with pytest.raises(SchemaError, match="non-empty"):
        StateMachine(initial=State.OFF, transitions=[Transition(State.OFF, "", State.ON)])
    with pytest.raises(SchemaError, match="no nested machine"):
        StateMachine(initial=State.OFF, transitions=[Transition(State.OFF, "go", "ON.MOVING")])

    class Owner:
        fsm = StateMachine(
            initial=State.OFF, transitions=[Transition(State.OFF, "go", State.ON, action="nope")]
        )

    with pytest.raises(SchemaError, match="has no method 'nope'"):
        _ = Owner().fsm
    with pytest.raises(SchemaError, match="no owner"):
        _ = Owner.fsm.state


def test_docs_states_examples_run() -> None:
    from test_schema import run_markdown_examples

    run_markdown_examples("states.md")
