"""Value and time encoding of the archive (karabo_async.archive.values), without a database."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from karabo_async.archive import LARGE_VALUE_BYTES, ArrayRef
from karabo_async.archive.reduce import bucket_width, merge_bucket_rows
from karabo_async.archive.store import Change, prepare_change, redact_url, time_ns
from karabo_async.archive.values import (
    KIND_FLOAT,
    KIND_INT,
    KIND_REF,
    decode_value,
    encode_value,
    timestamp_from_ns,
    timestamp_ns,
    train_from_db,
    train_to_db,
)
from karabo_async.errors import ArchiveTypeError, ArchiveValueError
from karabo_async.timestamp import Timestamp


def round_trip(value: object) -> object:
    return decode_value(*encode_value(value))


scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary()


@given(scalars)
def test_scalars_round_trip_exactly(value: object) -> None:
    back = round_trip(value)
    assert back == value
    assert type(back) is type(value)


@given(st.lists(st.floats(allow_nan=False) | st.integers(-(2**60), 2**60) | st.text(max_size=5), max_size=20))
def test_vectors_round_trip(value: list[object]) -> None:
    assert round_trip(value) == value


def test_non_finite_floats_keep_their_value_but_no_number_column() -> None:
    for value in (math.inf, -math.inf):
        kind, num, _ = encode_value(value)
        assert (kind, num) == (KIND_FLOAT, None)  # so min/max in SQL ignore them
        assert round_trip(value) == value
    assert math.isnan(round_trip(math.nan))  # type: ignore[arg-type]


def test_large_integers_stay_exact_beyond_float_precision() -> None:
    value = 2**62 + 1
    kind, num, _ = encode_value(value)
    assert kind == KIND_INT and num == float(value)
    assert round_trip(value) == value
    assert round_trip(np.uint64(2**64 - 1)) == 2**64 - 1


def test_numpy_scalars_become_python_numbers() -> None:
    assert round_trip(np.float32(1.5)) == 1.5
    assert round_trip(np.int16(-3)) == -3
    assert round_trip(np.bool_(True)) is True


def test_small_arrays_are_stored_and_large_ones_become_references() -> None:
    small = np.arange(12, dtype=np.int32).reshape(3, 4)
    np.testing.assert_array_equal(round_trip(small), small)
    image = np.zeros((512, 512), dtype=np.uint16)  # 512 KiB
    kind, _, blob = encode_value(image)
    assert kind == KIND_REF and blob is not None and len(blob) < 100
    assert round_trip(image) == ArrayRef((512, 512), "<u2", image.nbytes)


def test_large_lists_strings_and_bytes_become_references() -> None:
    assert round_trip([1.0] * 20_000) == ArrayRef((20_000,), "<f8", pytest.approx(180_000, rel=0.2))  # type: ignore[arg-type]
    assert round_trip(b"x" * (LARGE_VALUE_BYTES + 1)) == ArrayRef((LARGE_VALUE_BYTES + 1,), "bytes", 65537)
    text = "é" * LARGE_VALUE_BYTES
    assert round_trip(text) == ArrayRef((LARGE_VALUE_BYTES,), "str", 2 * LARGE_VALUE_BYTES)
    assert round_trip({"image": np.ones(40_000)}).dtype == "dict"  # type: ignore[attr-defined]


def test_unencodable_values_are_refused_with_their_type() -> None:
    with pytest.raises(ArchiveTypeError, match="object"):
        encode_value(object())
    with pytest.raises(ArchiveTypeError, match=r"dev/1.p"):
        prepare_change(Change("dev/1", "p", {1, 2}, Timestamp(1)))


@given(st.integers(-(2**62), 2**62), st.integers(0, 2**64 - 1))
def test_times_round_trip_to_the_nanosecond(ns: int, train_id: int) -> None:
    stamp = timestamp_from_ns(ns, train_to_db(train_id))
    assert stamp.train_id == train_id
    assert timestamp_ns(stamp) == ns
    assert -(2**63) <= train_to_db(train_id) < 2**63
    assert train_from_db(train_to_db(train_id)) == train_id


def test_times_keep_microseconds_and_beyond() -> None:
    stamp = Timestamp.from_iso("2024-05-01T12:00:00.123456789Z")
    assert timestamp_from_ns(timestamp_ns(stamp)) == stamp
    assert time_ns("2024-05-01T12:00:00.000001Z", "since") - time_ns("2024-05-01T12:00:00Z", "since") == 1000


def test_time_arguments_are_checked() -> None:
    with pytest.raises(ArchiveTypeError, match="since must be a Timestamp"):
        time_ns([1], "since")  # type: ignore[arg-type]
    with pytest.raises(ArchiveValueError, match="until: cannot read 'yesterday'"):
        time_ns("yesterday", "until")
    with pytest.raises(ArchiveValueError, match="finite"):
        time_ns(math.nan, "when")
    with pytest.raises(ArchiveValueError, match="outside"):
        timestamp_ns(Timestamp(2**40))


bad_rows = st.sampled_from(
    [
        ("dev", "p", 1.0),
        ("dev", "p", 1.0, 5.0),
        (5, "p", 1.0, Timestamp(1)),
        ("", "p", 1.0, Timestamp(1)),
        ("dev", None, 1.0, Timestamp(1)),
        ("dev", "p", 1.0, Timestamp(1), 3),
        "dev.p=1",
    ]
)


@given(bad_rows)
def test_bad_change_rows_raise_errors_naming_the_problem(row: object) -> None:
    with pytest.raises((ArchiveTypeError, ArchiveValueError)) as info:
        prepare_change(row)  # type: ignore[arg-type]
    assert any(word in str(info.value) for word in ("device_id", "path", "timestamp", "alarm", "Change("))


@given(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(4, 5000))
def test_buckets_cover_the_range_with_at_most_max_points_over_four(
    first: int, span: int, max_points: int
) -> None:
    width = bucket_width(first, first + span, max_points)
    assert span // width < max(1, max_points // 4)


def test_merge_keeps_each_row_once_and_counts_each_bucket_once() -> None:
    rows = [
        (0, 3, "a", 10, 0, KIND_FLOAT, 1.0, None),
        (0, 3, "c", 30, 0, KIND_FLOAT, 0.0, None),
        (0, 3, "a", 10, 0, KIND_FLOAT, 1.0, None),  # first row was also the max
        (1, 2, "d", 40, 0, KIND_FLOAT, 5.0, None),
        (1, 2, "e", 35, 0, KIND_FLOAT, 2.0, None),
    ]
    points, total = merge_bucket_rows(rows)
    assert [p[0] for p in points] == [10, 30, 35, 40]
    assert total == 5


def test_redacted_urls_have_no_password() -> None:
    assert (
        redact_url("postgresql://bob:s3cret@db.example:5433/archive")
        == "postgresql://bob@db.example:5433/archive"
    )
    assert redact_url("postgresql://bob@db/archive") == "postgresql://bob@db/archive"
    assert redact_url("sqlite:///tmp/a.db") == "sqlite:///tmp/a.db"
