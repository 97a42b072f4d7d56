"""The archive store against real SQLite files and a real PostgreSQL (a throw-away database per test).

PostgreSQL is the server on 127.0.0.1:5432 (or KARABO_TEST_POSTGRES, an admin URL to a database
from which test databases can be created).
"""

from __future__ import annotations

import math
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from karabo_async.archive import LATEST_VERSION, ArchiveStore, ArrayRef, Change, open_store
from karabo_async.archive.reduce import bucket_width
from karabo_async.archive.values import timestamp_ns
from karabo_async.errors import (
    ArchiveTypeError,
    ArchiveUnavailable,
    ArchiveValueError,
    ArchiveVersionError,
    BeforeDeviceExisted,
    ConfigurationExists,
    InvalidTimeRange,
    UnknownConfiguration,
    UnknownDevice,
    UnknownProperty,
)
from karabo_async.timestamp import Timestamp

PG_ADMIN = os.environ.get("KARABO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1/postgres")
T0 = 1_700_000_000


def stamp(seconds: float, train_id: int = 0) -> Timestamp:
    whole = math.floor(seconds)
    return Timestamp(T0 + whole, round((seconds - whole) * 10**9) * 10**9, train_id)


async def create_pg_database() -> str:
    name = f"test_archive_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"


async def drop_pg_database(url: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path}/archive.db"
        return
    pg = await create_pg_database()
    try:
        yield pg
    finally:
        await drop_pg_database(pg)


@pytest.fixture
async def store(url: str) -> AsyncIterator[ArchiveStore]:
    async with await open_store(url) as opened:
        yield opened


# --- recording and reading back -------------------------------------------------------------------

VALUES: dict[str, Any] = {
    "float": 1.25,
    "int": -7,
    "bigint": 2**63 + 5,
    "bool": True,
    "str": "ÅSTRÖM ready",
    "bytes": b"\x00\x01",
    "none": None,
    "inf": -math.inf,
    "vector": [1.0, 2.5, -3.0],
    "strings": ["a", "b"],
    "node": {"x": 1, "y": [1, 2]},
}


async def test_every_kind_of_value_comes_back_with_its_stamp_and_train(store: ArchiveStore) -> None:
    changes = [
        Change("dev/a", path, value, stamp(i + 0.000123456, 100 + i))
        for i, (path, value) in enumerate(VALUES.items())
    ]
    changes.append(Change("dev/a", "array", np.arange(6.0).reshape(2, 3), stamp(50)))
    changes.append(Change("dev/a", "image", np.ones((300, 300), np.uint8), stamp(51), "warn"))
    assert await store.write_changes(changes) == len(changes)
    for i, (path, value) in enumerate(VALUES.items()):
        history = await store.property_history("dev/a", path)
        assert history.points == [(stamp(i + 0.000123456, 100 + i), value)], path
        assert not history.reduced and history.total == 1
    [(_, array)] = (await store.property_history("dev/a", "array")).points
    np.testing.assert_array_equal(array, np.arange(6.0).reshape(2, 3))
    [(_, image)] = (await store.property_history("dev/a", "image")).points
    assert image == ArrayRef((300, 300), "|u1", 90_000)
    assert await store.devices() == ["dev/a"]
    assert await store.properties("dev/a") == sorted([*VALUES, "array", "image"])


async def test_history_is_in_time_order_within_an_inclusive_range(store: ArchiveStore) -> None:
    order = list(range(100))
    random.Random(1).shuffle(order)
    for chunk in range(0, 100, 30):  # several batches, out of order
        await store.write_changes(
            [Change("dev/b", "x", i * 1.5, stamp(i, i)) for i in order[chunk : chunk + 30]]
        )
    history = await store.property_history("dev/b", "x", since=stamp(10), until=stamp(20).to_iso())
    assert history.points == [(stamp(i, i), i * 1.5) for i in range(10, 21)]
    since = stamp(95).to_datetime()
    assert [v for _, v in (await store.property_history("dev/b", "x", since=since)).points] == [
        i * 1.5 for i in range(95, 100)
    ]
    assert (await store.property_history("dev/b", "x", until=T0 + 2.5)).total == 3


def expected_reduction(points: list[tuple[int, Any]], max_points: int) -> set[tuple[int, Any]]:
    """What the database must return: per bucket the first, (earliest) min, max and last point."""
    first, last = points[0][0], points[-1][0]
    width = bucket_width(first, last, max_points)
    buckets: dict[int, list[tuple[int, Any]]] = {}
    for t, v in points:
        buckets.setdefault((t - first) // width, []).append((t, v))
    keep: set[tuple[int, Any]] = set()
    for members in buckets.values():
        keep |= {members[0], members[-1]}
        numbers = [m for m in members if isinstance(m[1], float)]
        if numbers:
            keep.add(min(numbers, key=lambda m: m[1]))
            keep.add(max(numbers, key=lambda m: m[1]))
    return keep


async def test_long_histories_are_reduced_in_the_database_keeping_extremes(store: ArchiveStore) -> None:
    rng = random.Random(7)
    times = sorted(rng.sample(range(10**6), 3000))
    values = [rng.gauss(0, 1) for _ in times]
    values[1234] = 99.0  # a spike must survive
    await store.write_changes(
        [Change("dev/c", "y", v, stamp(t / 1000)) for t, v in zip(times, values, strict=True)]
    )
    history = await store.property_history("dev/c", "y", max_points=100)
    assert history.reduced and history.total == 3000
    assert len(history.points) <= 100
    got = {(timestamp_ns(ts), v) for ts, v in history.points}
    stored = [(timestamp_ns(stamp(t / 1000)), v) for t, v in zip(times, values, strict=True)]
    assert got == expected_reduction(stored, 100)
    assert [p[0] for p in history.points] == sorted(p[0] for p in history.points)
    assert max(v for _, v in history.points) == 99.0
    assert history.points[0][1] == values[0] and history.points[-1][1] == values[-1]
    exactly = await store.property_history("dev/c", "y", since=stamp(0), until=stamp(1000), max_points=3000)
    assert not exactly.reduced and len(exactly.points) == 3000


async def test_reduction_of_non_numbers_keeps_first_and_last_per_bucket(store: ArchiveStore) -> None:
    stored = [(i, "on" if i % 3 else f"state {i}") for i in range(1000)]
    await store.write_changes([Change("dev/d", "state", v, stamp(i)) for i, v in stored])
    history = await store.property_history("dev/d", "state", max_points=40)
    assert history.reduced and history.total == 1000 and len(history.points) == 20
    got = {(timestamp_ns(ts), v) for ts, v in history.points}
    assert got == expected_reduction([(timestamp_ns(stamp(i)), v) for i, v in stored], 40)


async def test_configuration_at_a_past_time_reads_latest_values_and_the_schema_then(
    store: ArchiveStore,
) -> None:
    await store.write_event("dev/e", stamp(0), "new", {"host": "server-1"})
    await store.write_schema("dev/e", stamp(0), {"p0": {"type": "float"}})
    rows = [
        Change("dev/e", f"p{p}", float(p * 100 + c), stamp(1 + c * 10 + p * 0.01))
        for p in range(200)
        for c in range(5)
    ]
    rows.append(Change("dev/e", "late", "added", stamp(35)))  # a property added at run time
    await store.write_changes(rows)
    await store.write_schema("dev/e", stamp(35), {"p0": {"type": "float"}, "late": {"type": "str"}})

    config, schema = await store.configuration_at("dev/e", stamp(25))
    assert len(config) == 200 and "late" not in config
    assert config["p7"] == (7 * 100 + 2.0, stamp(1 + 20 + 0.07))
    assert schema == {"p0": {"type": "float"}}
    later = await store.configuration_at("dev/e", stamp(100).to_iso())
    assert later.values["late"] == ("added", stamp(35))
    assert later.schema is not None and "late" in later.schema
    assert await store.schema_at("dev/e", stamp(35)) == later.schema
    with pytest.raises(BeforeDeviceExisted, match=r"dev/e.*first record is at 2023-11-14T22:13:20"):
        await store.configuration_at("dev/e", stamp(-1))
    events = await store.events("dev/e")
    assert [(e.kind, e.info, e.timestamp) for e in events] == [("new", {"host": "server-1"}, stamp(0))]


async def test_a_late_older_row_moves_the_device_start_back(url: str) -> None:
    async with await open_store(url) as store:
        await store.write_changes([Change("dev/f", "x", 1.0, stamp(10))])
        with pytest.raises(BeforeDeviceExisted):
            await store.configuration_at("dev/f", stamp(5))
    async with await open_store(url) as reopened:  # fresh caches: the data is in the database
        await reopened.write_changes([Change("dev/f", "x", 0.5, stamp(2))])  # e.g. a buffer catching up
        assert (await reopened.configuration_at("dev/f", stamp(5))).values == {"x": (0.5, stamp(2))}


async def test_errors_name_what_is_wrong(store: ArchiveStore) -> None:
    await store.write_changes([Change("dev/g", "x", 1.0, stamp(10))])
    with pytest.raises(UnknownDevice, match="'dev/nope' was never archived"):
        await store.property_history("dev/nope", "x")
    with pytest.raises(UnknownProperty, match="property 'y' of device 'dev/g' was never archived"):
        await store.property_history("dev/g", "y")
    with pytest.raises(InvalidTimeRange, match=r"since .* is after until"):
        await store.property_history("dev/g", "x", since=stamp(20), until=stamp(10))
    with pytest.raises(BeforeDeviceExisted):
        await store.property_history("dev/g", "x", until=stamp(1))
    with pytest.raises(ArchiveTypeError, match="max_points must be an int"):
        await store.property_history("dev/g", "x", max_points="10")  # type: ignore[arg-type]
    with pytest.raises(ArchiveValueError, match="max_points must be at least 4"):
        await store.property_history("dev/g", "x", max_points=2)
    with pytest.raises(ArchiveTypeError, match="since must be a Timestamp"):
        await store.property_history("dev/g", "x", since=object())  # type: ignore[arg-type]
    with pytest.raises(ArchiveTypeError, match="device_id must be a str"):
        await store.configuration_at(42, stamp(1))  # type: ignore[arg-type]
    with pytest.raises(ArchiveTypeError, match="schema of 'dev/g' must be a dict"):
        await store.write_schema("dev/g", stamp(1), ["x"])  # type: ignore[arg-type]
    with pytest.raises(ArchiveTypeError, match=r"dev/g.bad: cannot archive"):
        await store.write_changes(
            [Change("dev/g", "ok", 1.0, stamp(11)), Change("dev/g", "bad", object(), stamp(11))]
        )
    assert await store.properties("dev/g") == ["x"]  # the batch with a bad row wrote nothing


# --- configuration manager ------------------------------------------------------------------------


async def test_saved_configurations_are_listed_fetched_refused_twice_and_deleted(store: ArchiveStore) -> None:
    await store.save_configuration(
        "beamtime-1",
        {"dev/m1": {"speed": 2.5}, "dev/m2": {"speed": 1.0, "mode": "fast"}},
        description="before alignment",
        user="alice",
        timestamp=stamp(1),
    )
    await store.save_configuration("beamtime-2", {"dev/m1": {"speed": 3.0}}, user="bob", timestamp=stamp(2))
    listed = await store.list_configurations("dev/m1")
    assert [(c.name, c.user, c.timestamp) for c in listed] == [
        ("beamtime-1", "alice", stamp(1)),
        ("beamtime-2", "bob", stamp(2)),
    ]
    assert len(await store.list_configurations()) == 3
    saved = await store.get_configuration("beamtime-1", "dev/m2")
    assert (saved.config, saved.description, saved.user) == (
        {"speed": 1.0, "mode": "fast"},
        "before alignment",
        "alice",
    )

    with pytest.raises(ConfigurationExists, match="'beamtime-1' is already saved for device 'dev/m1'"):
        await store.save_configuration("beamtime-1", {"dev/m3": {"a": 1}, "dev/m1": {"speed": 9.0}})
    assert await store.list_configurations("dev/m3") == []  # all or nothing
    await store.save_configuration("beamtime-1", {"dev/m1": {"speed": 9.0}}, overwrite=True)
    assert (await store.get_configuration("beamtime-1", "dev/m1")).config == {"speed": 9.0}

    await store.delete_configuration("beamtime-1", "dev/m1")
    with pytest.raises(
        UnknownConfiguration, match="no configuration named 'beamtime-1' is saved for device 'dev/m1'"
    ):
        await store.get_configuration("beamtime-1", "dev/m1")
    with pytest.raises(UnknownConfiguration):
        await store.delete_configuration("beamtime-1", "dev/m1")
    with pytest.raises(ArchiveTypeError, match="configuration of 'dev/m1' must be a dict"):
        await store.save_configuration("x", {"dev/m1": 5})  # type: ignore[dict-item]


# --- opening, migrations and unavailability -------------------------------------------------------


async def test_an_old_version_database_is_migrated_keeping_its_data(url: str) -> None:
    async with await open_store(url, target_version=1) as old:
        assert old.schema_version == 1
        await old.write_changes([Change("dev/h", "x", 4.0, stamp(1))])
        with pytest.raises(Exception, match="configurations"):  # that table came with version 2
            await old.list_configurations()
    async with await open_store(url) as new:
        assert new.schema_version == LATEST_VERSION == 2
        assert (await new.property_history("dev/h", "x")).points == [(stamp(1), 4.0)]
        await new.save_configuration("c", {"dev/h": {"x": 4.0}})
    async with await open_store(url) as again:  # opening a current database changes nothing
        assert again.schema_version == 2
        assert [c.name for c in await again.list_configurations("dev/h")] == ["c"]


async def test_a_database_from_a_newer_version_is_refused(url: str) -> None:
    async with await open_store(url):
        pass
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite://")) as conn:
            conn.execute("UPDATE archive_version SET version = 99")
    else:
        conn = await asyncpg.connect(url)
        await conn.execute("UPDATE archive_version SET version = 99")
        await conn.close()
    with pytest.raises(ArchiveVersionError, match=r"schema version 99.*upgrade karabo_async"):
        await open_store(url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_unreachable_database_fails_fast_naming_the_url_without_password(tmp_path: Path) -> None:
    url = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/archive"
    with pytest.raises(ArchiveUnavailable) as info:
        await open_store(url, connect_timeout=2.0)
    assert "hunter2" not in str(info.value) and "postgresql://postgres@127.0.0.1" in str(info.value)
    with pytest.raises(ArchiveUnavailable, match="does not exist"):
        await open_store(f"{PG_ADMIN.rsplit('/', 1)[0]}/no_such_db_{uuid.uuid4().hex[:8]}")
    with pytest.raises(ArchiveUnavailable, match=r"directory .*missing.* does not exist"):
        await open_store(f"sqlite://{tmp_path}/missing/archive.db")
    with pytest.raises(ArchiveValueError, match="must start with sqlite: or postgresql://"):
        await open_store("mysql://db/archive")
