"""Heartbeats, liveness and the topology lane, across real processes and a real RabbitMQ."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from karabo_async import SignalSlotable

PEER = str(Path(__file__).parent / "peers" / "peer.py")


async def start_peer(
    broker: str, domain: str, instance_id: str, interval: float
) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        PEER,
        broker,
        domain,
        instance_id,
        str(interval),
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"ready", line
    return proc


@pytest.fixture
async def peers() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sigkilled_process_reported_gone_within_three_intervals(
    broker_url: str, domain: str, peers: list[asyncio.subprocess.Process]
) -> None:
    interval = 1.0
    async with SignalSlotable("watcher", broker=broker_url, domain=domain, heartbeat_interval=interval) as me:
        peers.append(await start_peer(broker_url, domain, "victim", interval))
        await me.topology.wait_for("victim", timeout=10)
        assert me.topology["victim"]["pid"] == peers[0].pid
        assert await me.request("victim", "echo", 5, timeout=5) == 5
        gone = asyncio.Event()
        me.on_instance_gone(lambda iid, info: gone.set() if iid == "victim" else None)
        killed_at = time.monotonic()
        peers[0].send_signal(signal.SIGKILL)
        await asyncio.wait_for(gone.wait(), 10)
        # the contract: gone within 3 heartbeat intervals of the kill
        assert time.monotonic() - killed_at < 3 * interval
        assert "victim" not in me.topology


async def test_clean_exit_of_other_process_reported_at_once(
    broker_url: str, domain: str, peers: list[asyncio.subprocess.Process]
) -> None:
    async with SignalSlotable("watcher", broker=broker_url, domain=domain, heartbeat_interval=30) as me:
        peers.append(await start_peer(broker_url, domain, "leaver", 30))
        await me.topology.wait_for("leaver", timeout=10)
        await me.call("leaver", "quit")
        # with 30 s heartbeats, only the goodbye message can explain a quick gone
        await me.topology.wait_for("leaver", timeout=10, gone=True)
        assert await peers[0].wait() == 0


async def test_heartbeats_handled_during_slot_flood(
    broker_url: str, domain: str, peers: list[asyncio.subprocess.Process]
) -> None:
    """5,000 slow slot calls queued at a tracker must not delay heartbeats: nobody is taken for dead."""
    interval = 0.3
    async with SignalSlotable(
        "tracker", broker=broker_url, domain=domain, heartbeat_interval=interval
    ) as tracker:
        peers.append(await start_peer(broker_url, domain, "alive", interval))
        await tracker.topology.wait_for("alive", timeout=10)
        gone: list[str] = []
        tracker.on_instance_gone(lambda iid, info: gone.append(iid))
        done = asyncio.Event()
        handled = 0
        release = asyncio.Event()

        @tracker.slot
        async def slow(i: int) -> None:
            nonlocal handled
            await release.wait()
            handled += 1
            if handled == 5000:
                done.set()

        proc_state = tracker.hub.topology._processes["alive"]
        seen: list[float] = []

        async with SignalSlotable(
            "flooder", broker=broker_url, domain=domain, heartbeat_interval=5
        ) as flooder:
            for i in range(5000):
                await flooder.call("tracker", "slow", i)
            # while 5,000 slow calls are queued or running, the peer's heartbeats keep arriving
            for _ in range(4):
                before = proc_state.last_seen
                await wait_until(lambda before=before: proc_state.last_seen > before, 5 * interval)  # type: ignore[misc]
                seen.append(proc_state.last_seen)
            release.set()
            await asyncio.wait_for(done.wait(), 60)
        assert "alive" not in gone  # the flooder's own clean exit is the only gone event
        assert gone in ([], ["flooder"])
        assert "alive" in tracker.topology
        assert len(seen) == 4


async def wait_until(predicate: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
