"""Timestamp: construction limits, conversions that round trip exactly, ordering and identity."""

from __future__ import annotations

import pickle
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from karabo_async import Timestamp

seconds_in_datetime_range = st.integers(-62135596800, 253402300799)
fractions = st.integers(0, 10**18 - 1)
train_ids = st.integers(0, 2**64 - 1)


def test_fields_and_defaults() -> None:
    ts = Timestamp(1_700_000_000, 5 * 10**17, train_id=42)
    assert (ts.seconds, ts.fraction, ts.train_id) == (1_700_000_000, 5 * 10**17, 42)
    assert Timestamp(3) == Timestamp(3, 0, 0)
    assert ts.time == 1_700_000_000.5 == float(ts)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((1, 10**18), ValueError),
        ((1, -1), ValueError),
        ((2**63, 0), ValueError),
        ((1, 0, -1), ValueError),
        ((1, 0, 2**64), ValueError),
        ((1.5,), TypeError),
        ((True,), TypeError),
        (("1",), TypeError),
    ],
)
def test_rejects_out_of_range_or_wrong_types(args: tuple[object, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        Timestamp(*args)  # type: ignore[arg-type]


def test_immutable() -> None:
    ts = Timestamp(1)
    with pytest.raises(AttributeError):
        ts.seconds = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ts.anything = 2


def test_now_is_current_and_carries_train_id() -> None:
    before = time.time()
    ts = Timestamp.now(train_id=9)
    after = time.time()
    assert before - 0.001 <= ts.time <= after + 0.001
    assert ts.train_id == 9


def test_to_datetime_is_utc_aware() -> None:
    dt = Timestamp(0, 123_456_789 * 10**9).to_datetime()
    assert dt == datetime(1970, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert dt.utcoffset() == timedelta(0)


def test_from_datetime_naive_is_utc_and_offsets_are_honoured() -> None:
    naive = datetime(2024, 5, 1, 12, 0, 0, 250000)
    assert Timestamp.from_datetime(naive) == Timestamp(1714564800, 25 * 10**16)
    plus_two = datetime(2024, 5, 1, 14, 0, 0, 250000, tzinfo=timezone(timedelta(hours=2)))
    assert Timestamp.from_datetime(plus_two, train_id=3) == Timestamp(1714564800, 25 * 10**16, 3)


@given(seconds_in_datetime_range, st.integers(0, 999_999))
def test_datetime_round_trip_at_microsecond_resolution(seconds: int, micros: int) -> None:
    ts = Timestamp(seconds, micros * 10**12)
    assert Timestamp.from_datetime(ts.to_datetime()) == ts


@given(seconds_in_datetime_range, fractions, train_ids)
def test_iso_round_trip_is_exact_to_the_attosecond(seconds: int, fraction: int, train_id: int) -> None:
    ts = Timestamp(seconds, fraction, train_id)
    assert Timestamp.from_iso(ts.to_iso(), train_id=train_id) == ts


def test_iso_forms() -> None:
    assert Timestamp(1714564800, 25 * 10**16).to_iso() == "2024-05-01T12:00:00.250000+00:00"
    assert Timestamp(0, 1).to_iso() == "1970-01-01T00:00:00.000000000000000001+00:00"
    expected = Timestamp(1714564800, 123456789 * 10**9)
    assert Timestamp.from_iso("2024-05-01T12:00:00.123456789Z") == expected
    assert Timestamp.from_iso("2024-05-01T14:00:00.123456789+02:00") == expected
    assert Timestamp.from_iso("2024-05-01 12:00:00.123456789") == expected  # naive means UTC
    assert Timestamp.from_iso("2024-05-01") == Timestamp(1714521600)


@pytest.mark.parametrize("text", ["", "yesterday", "2024-13-01", "2024-05-01T12:00:00." + "1" * 19])
def test_from_iso_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match=r"ISO|fractional"):
        Timestamp.from_iso(text)


def test_from_float_uses_shortest_decimal() -> None:
    assert Timestamp.from_float(0.1) == Timestamp(0, 10**17)
    assert Timestamp.from_float(-0.5) == Timestamp(-1, 5 * 10**17)
    assert Timestamp.from_float(1714564800.25, train_id=2) == Timestamp(1714564800, 25 * 10**16, 2)
    with pytest.raises(ValueError):
        Timestamp.from_float(float("nan"))


@given(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False))
def test_float_round_trip(t: float) -> None:
    back = Timestamp.from_float(t).time
    if abs(t) >= 1:  # at most 16 fractional digits: nothing below an attosecond is cut
        assert back == t
    else:
        assert abs(back - t) <= 1e-18


def test_parse_accepts_every_user_form() -> None:
    ts = Timestamp(1714564800, 25 * 10**16)
    assert Timestamp.parse(ts) is ts
    assert Timestamp.parse(ts.to_datetime()) == ts
    assert Timestamp.parse("2024-05-01T12:00:00.25Z") == ts
    assert Timestamp.parse(1714564800.25) == ts
    assert Timestamp.parse(1714564800) == Timestamp(1714564800)
    with pytest.raises(TypeError):
        Timestamp.parse([1])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Timestamp.parse(True)


def test_ordering_by_time_equality_includes_train_id() -> None:
    a, b = Timestamp(1, 5), Timestamp(1, 6)
    assert a < b <= b and b > a >= a
    assert sorted([b, a, Timestamp(0, 10**18 - 1)]) == [Timestamp(0, 10**18 - 1), a, b]
    same_time_other_train = a.with_train_id(1)
    assert same_time_other_train != a
    assert not same_time_other_train < a and not a < same_time_other_train
    assert same_time_other_train <= a
    assert a.with_train_id(0) == a


def test_hashable_and_picklable() -> None:
    a = Timestamp(1, 2, 3)
    assert {a: 1}[Timestamp(1, 2, 3)] == 1
    assert len({a, a.with_train_id(4)}) == 2
    assert pickle.loads(pickle.dumps(a)) == a


def test_repr_is_readable() -> None:
    ts = Timestamp(1714564800, 25 * 10**16, 7)
    assert repr(ts) == "<Timestamp 2024-05-01T12:00:00.250000+00:00 train_id=7>"
    assert str(ts) == "2024-05-01T12:00:00.250000+00:00"
    assert "s+" in repr(Timestamp(2**62))  # outside what datetime shows, still printable
