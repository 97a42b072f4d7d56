"""The data logger on a real PostgreSQL server, which goes away while the logger runs: the logger
buffers, reports ERROR with the reason, and catches up without losing what it buffered."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from broker_support import TcpProxy
from test_datalogger import LoggerSetup, until

PG_ADMIN = os.environ.get("KARABO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1/postgres")


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    name = f"test_logger_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_postgres_outage_is_buffered_reported_and_caught_up(
    broker_url: str, domain: str, tmp_path: Path, pg_database: str
) -> None:
    host, port = "127.0.0.1", 5432
    async with TcpProxy(host, port) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/{pg_database}"
        async with LoggerSetup(broker_url, domain, tmp_path, database=url) as setup:
            c = setup.client
            await setup.start_server("srvP", ["sensor-1"])
            await setup.start_logger()
            await setup.wait_value("sensor-1", "counter", 0)
            await c.request("sensor-1", "count", 1, 10)
            await setup.wait_value("sensor-1", "counter", 10)
            logger = setup.logger_of("srvP")

            await proxy.cut()
            await c.request("sensor-1", "count", 11, 60)

            async def reports_error() -> bool:
                now = await c.request(logger, "get", "state", "status")
                return bool(now["state"] == "ERROR" and "unavailable" in now["status"])

            await until(reports_error, what="logger in ERROR naming the outage")
            assert await c.request(logger, "get", "buffered") > 0

            proxy.restore()

            async def caught_up() -> bool:
                state = await c.request(logger, "get", "state")
                points = await setup.history("sensor-1", "counter", max_points=10_000)
                return state == "ON" and len(points) >= 61

            await until(caught_up, seconds=40, what="logger back ON with every change written")
            values = [v for _, v in await setup.history("sensor-1", "counter", max_points=10_000)]
            assert values == list(range(61))
