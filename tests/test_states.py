"""State tree, severity, alarm condition ordering and access levels."""

from __future__ import annotations

import pytest

from karabo_async import AccessLevel, AlarmCondition, State


def test_state_value_is_its_name_and_travels_as_text() -> None:
    for state in State:
        assert state.value == state.name
        assert str(state) == state.name
    assert State.ON == "ON"


def test_there_are_about_forty_states_and_two_roots() -> None:
    assert len(State) >= 40
    assert {s for s in State if s.parent is None} == {State.UNKNOWN, State.KNOWN}


@pytest.mark.parametrize(
    ("state", "ancestor"),
    [
        (State.MOVING, State.CHANGING),
        (State.MOVING, State.NORMAL),
        (State.MOVING, State.KNOWN),
        (State.HEATING, State.INCREASING),
        (State.COOLING, State.DECREASING),
        (State.ON, State.ACTIVE),
        (State.ON, State.STATIC),
        (State.OFF, State.PASSIVE),
        (State.STOPPED, State.PASSIVE),
        (State.ACQUIRING, State.RUNNING),
        (State.PROCESSING, State.RUNNING),
        (State.ERROR, State.KNOWN),
        (State.INTERLOCKED, State.KNOWN),
        (State.IDLE, State.STATIC),
    ],
)
def test_is_derived_from(state: State, ancestor: State) -> None:
    assert state.is_derived_from(ancestor)
    assert not ancestor.is_derived_from(state)


def test_is_derived_from_is_reflexive_and_unrelated_states_are_not_derived() -> None:
    for state in State:
        assert state.is_derived_from(state)
    assert not State.ON.is_derived_from(State.CHANGING)
    assert not State.MOVING.is_derived_from(State.STATIC)
    assert not State.UNKNOWN.is_derived_from(State.KNOWN)
    assert not State.ERROR.is_derived_from(State.NORMAL)


def test_parent_chain_ends_at_a_root() -> None:
    for state in State:
        assert state.ancestors[0] is state
        assert state.ancestors[-1] in (State.UNKNOWN, State.KNOWN)
    assert State.MOVING.parent is State.CHANGING
    assert State.CHANGING.parent is State.NORMAL


def test_severity_order() -> None:
    assert State.ERROR.severity > State.UNKNOWN.severity > State.INIT.severity
    assert State.INIT.severity > State.INTERLOCKED.severity > State.MOVING.severity
    assert State.MOVING.severity == State.CHANGING.severity == State.HEATING.severity
    assert State.MOVING.severity > State.ACQUIRING.severity > State.ON.severity
    assert State.ON.severity == State.OFF.severity > State.DISABLED.severity
    assert State.most_significant(State.ON, State.MOVING, State.OFF) is State.MOVING
    assert State.most_significant(State.ON, State.ERROR, State.UNKNOWN) is State.ERROR
    assert State.most_significant() is State.UNKNOWN


def test_from_name() -> None:
    assert State.from_name("MOVING") is State.MOVING
    assert State.from_name(State.ON) is State.ON
    with pytest.raises(ValueError, match="unknown state 'WALKING'"):
        State.from_name("WALKING")


def test_alarm_condition_values_and_order() -> None:
    assert [c.value for c in AlarmCondition] == ["none", "warn", "alarm"]
    assert AlarmCondition.NONE < AlarmCondition.WARN < AlarmCondition.ALARM
    assert AlarmCondition.ALARM >= AlarmCondition.WARN
    assert max(AlarmCondition) is AlarmCondition.ALARM
    assert sorted([AlarmCondition.ALARM, AlarmCondition.NONE, AlarmCondition.WARN]) == list(AlarmCondition)
    assert {AlarmCondition.WARN: 1}[AlarmCondition("warn")] == 1


def test_alarm_condition_worst() -> None:
    assert AlarmCondition.worst() is AlarmCondition.NONE
    assert AlarmCondition.worst(AlarmCondition.WARN, AlarmCondition.NONE) is AlarmCondition.WARN
    assert AlarmCondition.worst([AlarmCondition.WARN, AlarmCondition.ALARM]) is AlarmCondition.ALARM
    assert AlarmCondition.worst("none", "warn") is AlarmCondition.WARN
    with pytest.raises(ValueError):
        AlarmCondition.worst("terrible")


def test_access_levels_compare_as_integers() -> None:
    order = [
        AccessLevel.OBSERVER,
        AccessLevel.USER,
        AccessLevel.OPERATOR,
        AccessLevel.EXPERT,
        AccessLevel.ADMIN,
    ]
    assert sorted(AccessLevel) == order
    assert AccessLevel.OPERATOR >= AccessLevel.USER
    assert AccessLevel(0) is AccessLevel.OBSERVER
