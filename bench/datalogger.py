"""Benchmark of the data logger's storage (karabo_async.archive) on SQLite and PostgreSQL.

Measures, per backend, in one run:
- ingest: property changes stored per second through ``ArchiveStore.write_changes`` (batched), beside
  a raw baseline that inserts the same rows, already encoded, with the driver's bulk path
  (``executemany`` on SQLite, ``copy_records_to_table`` on PostgreSQL) into the same table;
- history: one property with 1,000,000 stored points, reduced to 1,000 in the database;
- configuration: a device with 200 properties, read as it was at a past time;
- end to end: changes a device publishes, through RabbitMQ and a ``karabo-async logger`` process
  (its durable queue, BufferedWriter, the store) until written, per second (``--no-e2e`` skips it).

Usage: ``python bench/datalogger.py [--pg postgresql://postgres@127.0.0.1/postgres] [--rows 200000]``.
PostgreSQL runs in a throw-away database created and dropped by the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from karabo_async.archive import ArchiveStore, Change, open_store
from karabo_async.archive.store import prepare_change
from karabo_async.timestamp import Timestamp

T0 = 1_700_000_000  # epoch seconds of the first generated change
BATCH = 5000
HISTORY_POINTS = 1_000_000
CONFIG_PROPERTIES = 200
CONFIG_CHANGES_PER_PROPERTY = 50


def logger_rows(count: int) -> list[Change]:
    """What a logger sees: 20 devices x 50 properties, mostly floats, some ints, bools and strings."""
    rows = []
    for i in range(count):
        device, prop = divmod(i % 1000, 50)
        stamp = Timestamp(T0 + i // 1000, (i % 1000) * 10**15, 1_000_000 + i // 1000)
        kind = prop % 10
        value: Any = float(i) * 0.5
        if kind >= 6:
            value = i if kind < 8 else bool(i & 1) if kind == 8 else f"state {i % 7}"
        rows.append(Change(f"bench/dev/{device}", f"prop{prop}", value, stamp, None))
    return rows


async def timed(action: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


async def ingest(store: ArchiveStore, rows: list[Change]) -> float:
    async def run() -> None:
        for i in range(0, len(rows), BATCH):
            await store.write_changes(rows[i : i + BATCH])

    return len(rows) / await timed(run)


async def raw_ingest(store: ArchiveStore, rows: list[Change], pg_url: str | None) -> float:
    """The same rows through the driver's bulk insert, encoded beforehand (not timed)."""
    await store.write_changes(rows[:1000])  # registers every property; their ids are then cached
    keys = store._property_keys  # the ids the store assigned
    prepared = [prepare_change(r) for r in rows]
    records = [(keys[(d, p)][0], t, tid, k, n, v, a) for d, p, t, tid, k, n, v, a in prepared]
    if pg_url is None:
        db = store._db  # type: ignore[attr-defined]
        sql = (
            "INSERT INTO changes (property, t, train_id, kind, num, val, alarm) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )

        async def run() -> None:
            for i in range(0, len(records), BATCH):
                await db.execute("BEGIN IMMEDIATE")
                await db.executemany(sql, records[i : i + BATCH])
                await db.execute("COMMIT")

    else:
        conn = await asyncpg.connect(pg_url)
        columns = ("property", "t", "train_id", "kind", "num", "val", "alarm")

        async def run() -> None:
            for i in range(0, len(records), BATCH):
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "changes", records=records[i : i + BATCH], columns=columns
                    )

    try:
        return len(records) / await timed(run)
    finally:
        if pg_url is not None:
            await conn.close()


async def fill_history(store: ArchiveStore) -> None:
    """1,000,000 points of one property, 10 per second (written through the store)."""
    rows: list[Change] = []
    for i in range(HISTORY_POINTS):
        seconds, tenth = divmod(i, 10)
        rows.append(Change("bench/history", "value", float(i % 977), Timestamp(T0 + seconds, tenth * 10**17)))
        if len(rows) == 50_000:
            await store.write_changes(rows)
            rows = []
    await store.write_changes(rows)


async def fill_configuration(store: ArchiveStore) -> None:
    rows = [
        Change("bench/config", f"prop{p}", float(p * c), Timestamp(T0 + c * 60 + p, 0))
        for c in range(CONFIG_CHANGES_PER_PROPERTY)
        for p in range(CONFIG_PROPERTIES)
    ]
    await store.write_changes(rows)


async def best_of(action: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, float]:
    times = [await timed(action) for _ in range(repeat)]
    return min(times), statistics.median(times)


async def bench_backend(
    name: str, url: str, raw_url: str, pg_url: str | None, rows: list[Change]
) -> dict[str, Any]:
    result: dict[str, Any] = {"backend": name}
    store = await open_store(url)
    raw_store = await open_store(raw_url)
    try:
        # Interleaved, best of two: the machine is shared, and a fresh table is slower to grow.
        raw_urls = None if pg_url is None else raw_url
        store_rates, raw_rates = [], []
        for _ in range(2):
            store_rates.append(await ingest(store, rows))
            raw_rates.append(await raw_ingest(raw_store, rows, raw_urls))
        result["ingest"], result["raw"] = max(store_rates), max(raw_rates)
        start = time.perf_counter()
        await fill_history(store)
        result["fill"] = HISTORY_POINTS / (time.perf_counter() - start)
        await fill_configuration(store)
        if pg_url is not None:
            conn = await asyncpg.connect(url)
            await conn.execute("VACUUM ANALYZE changes")  # what autovacuum does soon after a bulk load
            await conn.close()
        else:
            await store._db.execute("ANALYZE")  # type: ignore[attr-defined]

        history = await store.property_history("bench/history", "value", max_points=1000)
        assert history.reduced and history.total == HISTORY_POINTS and len(history.points) <= 1000, (
            history.total
        )
        result["history"] = await best_of(
            lambda: store.property_history("bench/history", "value", max_points=1000), 3
        )
        when = T0 + (CONFIG_CHANGES_PER_PROPERTY // 2) * 60 + 30.5
        config = await store.configuration_at("bench/config", when)
        assert len(config.values) == CONFIG_PROPERTIES
        result["config"] = await best_of(lambda: store.configuration_at("bench/config", when), 20)
    finally:
        await store.close()
        await raw_store.close()
    return result


def table(results: list[dict[str, Any]], rows: int) -> str:
    lines = [
        f"{'backend':<11}{'store rows/s':>14}{'raw rows/s':>13}{'ratio':>7}{'1M->1000 query (min/med)':>27}"
        f"{'config@t 200 props':>22}",
    ]
    for r in results:
        hmin, hmed = r["history"]
        cmin, cmed = r["config"]
        lines.append(
            f"{r['backend']:<11}{r['ingest']:>14,.0f}{r['raw']:>13,.0f}{r['ingest'] / r['raw']:>7.2f}"
            f"{hmin * 1000:>16.0f} / {hmed * 1000:>4.0f} ms{cmin * 1000:>13.1f} / {cmed * 1000:.1f} ms"
        )
    lines.append(
        f"(ingest: {rows:,} mixed changes in batches of {BATCH}; 1M points written at"
        + "".join(f" {r['backend']} {r['fill']:,.0f}/s" for r in results)
        + ")"
    )
    e2e = [f"{r['backend']} {r['e2e']:,.0f}/s" for r in results if "e2e" in r]
    if e2e:
        lines.append(
            f"end to end (device -> RabbitMQ -> logger process -> database, {E2E_SIGNALS} signals x"
            f" {E2E_PROPERTIES} properties): " + ", ".join(e2e)
        )
    return "\n".join(lines)


E2E_PROPERTIES = 50
E2E_SIGNALS = 2000
E2E_PLUGIN = f"""
import asyncio
from karabo_async import Device, Property, slot


class BenchSource(Device):
{chr(10).join(f"    p{i}: float = Property(0.0)" for i in range(E2E_PROPERTIES))}

    @slot
    async def burst(self, signals: int) -> int:
        for n in range(signals):
            self.set_properties({{f"p{{i}}": float(n) for i in range({E2E_PROPERTIES})}})
            await asyncio.sleep(0)
        return signals
"""


def _start_processes(env: dict[str, str], plugins: Path, init: Path, url: str) -> list[Any]:
    import subprocess
    import sys

    python = [sys.executable, "-m", "karabo_async"]
    return [
        subprocess.Popen([*python, "server", "--id", "bench-srv", "--plugin-dir", str(plugins), "--init", str(init)], env=env),
        subprocess.Popen([*python, "logger", "--database", url, "--id", "bench-log", "--batch-size", "5000"], env=env),
    ]  # fmt: skip


async def end_to_end(url: str, folder: Path) -> float:
    """Changes per second from a device's ``set_properties`` to rows written by a logger process."""
    from karabo_async.signalslot import SignalSlotable

    domain = f"bench_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "KARABO_DOMAIN": domain}
    plugins = folder / f"plugins_{domain}"
    plugins.mkdir()
    (plugins / "bench_source.py").write_text(E2E_PLUGIN)
    init = plugins / "init.json"
    init.write_text('{"devices": [{"id": "bench-source", "class": "BenchSource"}]}')
    procs = _start_processes(env, plugins, init, url)
    logger = "bench-log-logger-bench-srv"
    try:
        async with SignalSlotable(f"bench-client-{os.getpid()}", domain=domain) as client:
            await client.topology.wait_for("bench-source", timeout=30)
            await client.topology.wait_for(logger, timeout=30)
            # the logger offers counters, not events: poll them
            while "bench-source" not in await client.request(logger, "get", "logged_devices"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await client.request(logger, "flush")
            before = await client.request(logger, "get", "written")
            total = E2E_SIGNALS * E2E_PROPERTIES
            start = time.perf_counter()
            await client.request("bench-source", "burst", E2E_SIGNALS, timeout=120)
            while await client.request(logger, "get", "written") < before + total:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            return total / (time.perf_counter() - start)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1/postgres", help="server to bench on")
    parser.add_argument("--rows", type=int, default=200_000, help="changes for the ingest test")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end logger measurement")
    args = parser.parse_args()
    rows = logger_rows(args.rows)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        results.append(
            await bench_backend("sqlite", f"sqlite://{base}/a.db", f"sqlite://{base}/raw.db", None, rows)
        )
        if not args.no_e2e:
            results[-1]["e2e"] = await end_to_end(f"sqlite://{base}/e2e.db", base)
    if not args.no_pg:
        admin = await asyncpg.connect(args.pg)
        names = [f"bench_archive_{os.getpid()}_{uuid.uuid4().hex[:8]}" for _ in range(2)]
        try:
            for db in names:
                await admin.execute(f'CREATE DATABASE "{db}"')
            root = args.pg.rsplit("/", 1)[0]
            url, raw = (f"{root}/{db}" for db in names)
            results.append(await bench_backend("postgresql", url, raw, url, rows))
            if not args.no_e2e:
                with tempfile.TemporaryDirectory() as folder:
                    results[-1]["e2e"] = await end_to_end(url, Path(folder))
        finally:
            for db in names:
                await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            await admin.close()
    print(table(results, args.rows))


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main())
