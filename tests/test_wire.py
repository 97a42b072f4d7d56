"""The envelope: headers readable in the console, and malformed headers refused with DecodeError."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from karabo_async.errors import DecodeError
from karabo_async.wire import Kind, Message, Names, message_from_headers

header_values = st.one_of(st.none(), st.text(max_size=8), st.integers(), st.floats(), st.binary(max_size=8))


def rebuild(headers: dict[str, Any] | None) -> Message:
    return message_from_headers(
        headers, b"", correlation_id=None, reply_to=None, timestamp=None, exchange="x", routing_key="k"
    )


@given(
    st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(["kind", "sender", "target", "slot", "signal", "deadline", "user", "x-death"])
            | st.text(max_size=5),
            header_values,
        ),
    )
)
def test_arbitrary_headers_give_message_or_decode_error(headers: dict[str, Any] | None) -> None:
    try:
        message = rebuild(headers)
    except DecodeError:
        return
    assert isinstance(message.kind, Kind)


def test_round_trip_of_headers() -> None:
    m = Message(Kind.REQUEST, "alice", "bob", "greet", user="ops", deadline=1234.5, error=None)
    h = m.headers()
    assert h == {
        "kind": "request",
        "sender": "alice",
        "target": "bob",
        "slot": "greet",
        "user": "ops",
        "deadline": 1234500,
    }
    back = rebuild(h)
    assert (back.kind, back.sender, back.target, back.name, back.user, back.deadline) == (
        Kind.REQUEST,
        "alice",
        "bob",
        "greet",
        "ops",
        1234.5,
    )
    assert Message(Kind.SIGNAL, "bob", "*", "changed").headers()["signal"] == "changed"


def test_names_are_readable() -> None:
    n = Names("lab")
    assert (n.slots, n.signals, n.broadcast, n.replies, n.heartbeats, n.returns) == (
        "lab.slots",
        "lab.signals",
        "lab.broadcast",
        "lab.replies",
        "lab.heartbeats",
        "lab.returns",
    )
    assert n.instance_queue("motor-1") == "lab.instance.motor-1"
    assert Names.call_key("bob", "greet", "alice") == "bob.greet.alice"
