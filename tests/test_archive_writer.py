"""BufferedWriter through real database outages: a cut TCP proxy and a terminated backend on
PostgreSQL, a vanished directory on SQLite. No mocks of the database."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
from broker_support import TcpProxy

from karabo_async.archive import ArchiveStore, BufferedWriter, Change, WriterState, open_store
from karabo_async.errors import ArchiveTypeError, ArchiveUnavailable, ArchiveValueError
from karabo_async.timestamp import Timestamp

PG_ADMIN = os.environ.get("KARABO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1/postgres")
T0 = 1_700_000_000


def change(i: int) -> Change:
    return Change("dev/w", "counter", i, Timestamp(T0 + i, 0, i))


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll ``condition`` until true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class States:
    """Collects what the writer reports."""

    def __init__(self) -> None:
        self.seen: list[WriterState] = []

    def __call__(self, state: WriterState) -> None:
        self.seen.append(state)

    def failing(self) -> bool:
        return bool(self.seen) and not self.seen[-1].ok

    def ok_again(self) -> bool:
        return any(not s.ok for s in self.seen) and self.seen[-1].ok


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    name = f"test_archive_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def through(proxy: TcpProxy, url: str) -> str:
    return url.replace("127.0.0.1/", f"127.0.0.1:{proxy.port}/", 1)


async def counters(store: ArchiveStore) -> list[int]:
    history = await store.property_history("dev/w", "counter", max_points=100_000)
    return [value for _, value in history.points]


def make_writer(store: ArchiveStore, states: States, **options: int) -> BufferedWriter:
    return BufferedWriter(
        store,
        batch_size=50,
        flush_interval=0.05,
        retry_initial=0.02,
        retry_max=0.2,
        on_state=states,
        **options,
    )


async def test_postgres_outage_is_buffered_reported_and_caught_up(pg_url: str, proxy: TcpProxy) -> None:
    states = States()
    async with await open_store(through(proxy, pg_url), connect_timeout=2.0) as store:
        async with make_writer(store, states) as writer:
            writer.add_many(change(i) for i in range(200))
            await writer.flush()
            await proxy.cut()
            with pytest.raises(ArchiveUnavailable, match=f"127.0.0.1:{proxy.port}"):
                await store.write_changes([change(10_000)])
            writer.add_many(change(i) for i in range(200, 500))
            await until(states.failing)
            assert states.seen[-1].reason and states.seen[-1].buffered > 0
            proxy.restore()
            await writer.flush()
            await until(states.ok_again)
            assert writer.state.dropped == 0 and writer.state.written == 500
        assert await counters(store) == list(range(500))


async def test_a_terminated_backend_loses_nothing(pg_url: str) -> None:
    states = States()
    async with await open_store(pg_url) as store, make_writer(store, states) as writer:
        writer.add_many(change(i) for i in range(100))
        await writer.flush()
        admin = await asyncpg.connect(PG_ADMIN)
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
            pg_url.rsplit("/", 1)[1],
        )
        await admin.close()
        assert killed >= 1
        writer.add_many(change(i) for i in range(100, 300))
        await writer.flush()
        assert await counters(store) == list(range(300))
        assert writer.state.dropped == 0


async def test_a_full_buffer_drops_the_oldest_rows_and_counts_them(pg_url: str, proxy: TcpProxy) -> None:
    states = States()
    async with await open_store(through(proxy, pg_url), connect_timeout=2.0) as store:
        async with make_writer(store, states, max_buffer=100) as writer:
            await proxy.cut()
            writer.add_many(change(i) for i in range(250))
            await until(states.failing)
            assert writer.state.dropped == 150 and writer.state.buffered == 100
            assert any(s.dropped == 150 for s in states.seen)  # drops are reported as they happen
            proxy.restore()
            await writer.flush()
        kept = await counters(store)
        assert len(kept) == 100 and kept[-1] == 249 and 0 not in kept


async def test_sqlite_directory_gone_and_back(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    folder.mkdir()
    states = States()
    async with await open_store(f"sqlite://{folder}/log.db") as store:
        async with make_writer(store, states) as writer:
            writer.add_many(change(i) for i in range(100))
            await writer.flush()
            folder.rename(tmp_path / "elsewhere")  # e.g. an unmounted volume
            with pytest.raises(ArchiveUnavailable, match="is gone"):
                await store.write_changes([change(10_000)])
            writer.add_many(change(i) for i in range(100, 250))
            await until(states.failing)
            (tmp_path / "elsewhere").rename(folder)
            await writer.flush()
            assert states.seen[-1].ok and writer.state.written == 250
        assert await counters(store) == list(range(250))


async def test_sqlite_file_deleted_is_not_silently_recreated(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with await open_store(f"sqlite://{path}") as store:
        await store.write_changes([change(1)])
        for suffix in ("", "-wal", "-shm"):
            os.unlink(f"{path}{suffix}")
        with pytest.raises(ArchiveUnavailable, match="is gone"):
            await store.write_changes([change(2)])
        with pytest.raises(ArchiveUnavailable, match="is missing"):
            await store.write_changes([change(2)])
        assert not path.exists()


async def test_bad_rows_are_refused_when_added_and_options_are_checked(tmp_path: Path) -> None:
    async with await open_store(f"sqlite://{tmp_path}/log.db") as store:
        writer = BufferedWriter(store)
        with pytest.raises(ArchiveTypeError, match=r"timestamp of dev\.x must be a Timestamp"):
            writer.add(Change("dev", "x", 1.0, 12.0))  # type: ignore[arg-type]
        assert writer.state.buffered == 0
        with pytest.raises(ArchiveValueError, match="batch_size"):
            BufferedWriter(store, batch_size=0)
        async with writer:
            writer.add(change(1))
        assert await counters(store) == [1]  # close() wrote what was buffered
