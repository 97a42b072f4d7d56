"""Shared memory with real processes and a real shm directory: pools, faults, the monitor.

Helper processes run this file as a script (``python tests/test_pipeline_shm.py <role> ...``), so
they are real, separately killable processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from shm_support import private_shm_dir

from karabo_async.errors import PoolExhausted, ShmFull
from karabo_async.pipeline import InputEndpoint, ItemMeta, OutputEndpoint, cleanup_session, monitor_main
from karabo_async.pipeline.identity import process_start_time
from karabo_async.pipeline.monitor import scan
from karabo_async.pipeline.shm import ShmPool

ARRAY = 200_000  # float32 elements: 800 kB, through shared memory


@pytest.fixture(autouse=True)
def shm_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield from private_shm_dir(monkeypatch, "files left in the shm directory")


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class Helper:
    """A helper process running one role of this file; line-based conversation over stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, role: str, *args: str, env: Mapping[str, str] | None = None) -> Helper:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, role, *args,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(env or os.environ),
        )  # fmt: skip
        return cls(proc)

    async def line(self, timeout: float = 10.0) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert raw, "helper process ended early"
        return raw.decode().strip()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


@pytest.fixture
async def helpers() -> AsyncIterator[list[Helper]]:
    started: list[Helper] = []
    yield started
    for h in started:
        if h.proc.returncode is None:
            await h.kill()


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def touch(path: str) -> None:
    Path(path).touch()


def shm_files(directory: str) -> list[str]:
    return sorted(os.listdir(directory))


# --- pools -------------------------------------------------------------------------------------------


async def test_pool_slots_are_handed_out_and_taken_back(shm_env: str) -> None:
    pool = ShmPool(2, 4096, label="t")
    assert os.stat(pool.path).st_size == 2 * 4096
    a = await pool.acquire(1, 0.01)
    b = await pool.acquire(1, 0.01)
    pool.hold(a, "x")
    pool.hold(a, "y")  # copied to two receivers
    pool.hold(b, "x")
    assert pool.used == 2
    assert pool.release(a, "x") and pool.used == 2
    assert not pool.release(a, "x")  # not held twice
    assert pool.release(a, "y") and pool.used == 1
    assert pool.release_all("x") == 1 and pool.used == 0
    pool.close()
    assert shm_files(shm_env) == []


async def test_exhausted_pool_retries_a_bounded_number_of_times_then_raises(shm_env: str) -> None:
    pool = ShmPool(1, 4096)
    slot = await pool.acquire(1, 0.01)
    pool.hold(slot, "r")
    started = time.monotonic()
    with pytest.raises(PoolExhausted, match="all 1 slots still in use after 3 attempts"):
        await pool.acquire(3, 0.02)
    assert time.monotonic() - started >= 0.05
    waiter = asyncio.create_task(pool.acquire(50, 0.1))
    pool.release(slot, "r")
    assert await waiter == slot  # a release wakes the retry at once
    pool.close()


async def test_pool_exhausted_reaches_the_writer_and_the_output_keeps_running(shm_env: str) -> None:
    async with OutputEndpoint("src", "out", transport="shm", pool_slots=1, slot_size=1 << 20,
                              alloc_attempts=2, alloc_interval=0.01) as out:  # fmt: skip
        held = asyncio.Event()
        gate = asyncio.Event()
        got: list[int] = []

        async def on_data(data: Mapping[str, Any], meta: ItemMeta) -> None:
            held.set()
            await gate.wait()
            got.append(data["n"])

        inp = InputEndpoint("dst", "in", transport="shm", on_data=on_data, credit_window=4)
        assert await inp.connect(out.channel_id, out.address_info())
        await out.write({"n": 0, "a": np.zeros(ARRAY, np.float32)})
        await held.wait()
        with pytest.raises(PoolExhausted):
            await out.write({"n": 1, "a": np.zeros(ARRAY, np.float32)})
        assert out.stats["pool"]["exhausted"] == 1
        assert out.stats["inputs"]["dst:in"]["dropped"] == 1
        gate.set()
        await until(lambda: out.stats["pool"]["used"] == 0)
        await out.write({"n": 2, "a": np.zeros(ARRAY, np.float32)})
        await until(lambda: got == [0, 2])
        await inp.close()


def test_full_shm_directory_is_a_typed_error_at_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mnt)], check=True)
    try:
        with pytest.raises(ShmFull, match="cannot reserve 4194304 bytes"):
            ShmPool(4, 1 << 20, directory=str(mnt))
        monkeypatch.setenv("KARABO_SHM_DIR", str(mnt))
        out = OutputEndpoint("src", "out", transport="shm", pool_slots=8, slot_size=1 << 20)
        with pytest.raises(ShmFull):
            asyncio.run(out.start())
        assert os.listdir(mnt) == []  # nothing half-made left behind
        small = ShmPool(2, 64 * 1024, directory=str(mnt))  # what fits still works
        small.close()
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


async def test_normal_shutdown_leaves_nothing_in_the_shm_directory(shm_env: str) -> None:
    out = OutputEndpoint("src", "out", tcp_host="127.0.0.1")
    await out.start()
    inp = InputEndpoint("dst", "in", transport="shm")
    assert await inp.connect(out.channel_id, out.address_info())
    await out.write({"a": np.ones(ARRAY, np.float32)})
    await until(lambda: inp.stats["processed"] == 1)
    assert len(shm_files(shm_env)) == 2  # the pool's segment and the owner record
    await inp.close()
    await out.close()
    assert shm_files(shm_env) == []


# --- faults with real processes ----------------------------------------------------------------------


async def test_sender_killed_after_allocating_is_cleaned_up(shm_env: str, helpers: list[Helper]) -> None:
    h = await Helper.start("alloc")
    helpers.append(h)
    assert (await h.line()).startswith("ready")
    files = shm_files(shm_env)
    assert len(files) == 2 and all(f"_{h.proc.pid}_" in f for f in files)
    assert cleanup_session() == []  # alive: left alone
    await h.kill()
    removed = cleanup_session()
    assert [s.pid for s in removed] == [h.proc.pid]
    assert removed[0].reason.startswith("process gone")
    assert shm_files(shm_env) == []


async def test_data_stays_valid_at_the_receiver_after_the_sender_died(
    shm_env: str, helpers: list[Helper]
) -> None:
    writer = await Helper.start("writer")
    helpers.append(writer)
    info = json.loads(await writer.line())
    inside = asyncio.Event()
    gate = asyncio.Event()
    checked: list[bool] = []

    async def on_data(data: Mapping[str, Any], meta: ItemMeta) -> None:
        inside.set()
        await gate.wait()
        checked.append(bool(np.all(data["a"] == 7)) and data["a"].shape == (ARRAY,))

    inp = InputEndpoint("dst", "in", transport="shm", on_data=on_data, reconnect_delay=(0.05, 0.2))
    assert await inp.connect("proc:out", info)
    writer.send("write 7")
    await asyncio.wait_for(inside.wait(), 10)
    await writer.kill()
    assert [s.pid for s in cleanup_session()] == [writer.proc.pid]  # its segment is unlinked now
    await until(lambda: inp.missing_connections == ["proc:out"])
    gate.set()
    await until(lambda: checked == [True])
    await inp.close()


async def test_slots_held_by_a_killed_receiver_come_back(shm_env: str, helpers: list[Helper]) -> None:
    async with OutputEndpoint("src", "out", transport="shm", pool_slots=2, slot_size=1 << 20) as out:
        reader = await Helper.start("reader", json.dumps(out.address_info()))
        helpers.append(reader)
        assert await reader.line() == "connected"
        await out.write({"n": 0, "a": np.full(ARRAY, 3, np.float32)})
        assert await reader.line() == "got 0 ok"
        assert out.stats["pool"]["used"] == 1  # the reader holds it, never releasing
        await reader.kill()
        await until(lambda: out.stats["pool"]["used"] == 0 and out.inputs == [])


async def test_an_attaching_process_never_unlinks_the_segment(shm_env: str, helpers: list[Helper]) -> None:
    async with OutputEndpoint("src", "out", transport="shm", pool_slots=2, slot_size=1 << 20) as out:
        reader = await Helper.start("reader", json.dumps(out.address_info()), "exit")
        helpers.append(reader)
        assert await reader.line() == "connected"
        await out.write({"n": 0, "a": np.full(ARRAY, 3, np.float32)})
        assert await reader.line() == "got 0 ok"
        assert await reader.proc.wait() == 0
        assert out.stats["pool"]["path"] in [os.path.join(shm_env, f) for f in shm_files(shm_env)]


# --- the monitor -------------------------------------------------------------------------------------


def fake_owner(directory: str, session: str, pid: int, start: float, beat: float, segments: int = 1) -> None:
    """Files as a crashed (or live) owner would have left them."""
    body = json.dumps([{"path": "x", "label": "fake", "slots": 4, "used": 1, "slot_size": 1}]).encode()
    head = struct.pack("<8sqddI", b"KAOWNER1", pid, start, beat, len(body))
    with open(os.path.join(directory, f"karabo_{session}_{pid}_owner"), "wb") as f:
        f.write(head.ljust(64, b"\0") + body)
    for n in range(segments):
        with open(os.path.join(directory, f"karabo_{session}_{pid}_{n}"), "wb") as f:
            f.write(b"\0" * 4096)


async def test_stale_segments_are_removed_at_start_live_ones_kept(shm_env: str, capsys: Any) -> None:
    session = os.environ["KARABO_SESSION"]
    live = ShmPool(1, 4096)  # this process: alive, heartbeat fresh
    gone = dead_pid()
    fake_owner(shm_env, session, gone, 1.0, time.time())
    parent = os.getppid()
    parent_start = process_start_time(parent)
    assert parent_start is not None
    fake_owner(shm_env, session, parent, parent_start - 100, time.time())  # pid reused by another process
    touch(os.path.join(shm_env, f"karabo_{session}_{dead_pid()}_0"))  # no owner record (crashed in between)

    assert await monitor_main(["--self-destruct"]) == 0
    assert "removed" in capsys.readouterr().out
    assert sorted(shm_files(shm_env)) == sorted(os.path.basename(p) for p in (live.path, live._owner.path))
    live.close()


async def test_an_owner_whose_heartbeat_stopped_is_dead_after_the_timeout(shm_env: str) -> None:
    session = os.environ["KARABO_SESSION"]
    parent = os.getppid()
    start = process_start_time(parent)
    assert start is not None
    fake_owner(shm_env, session, parent, start, time.time() - 3.0)
    assert [s.alive for s in scan(session, timeout=10.0)] == [True]
    assert await monitor_main(["--self-destruct", "--timeout", "10000"]) == 0
    assert len(shm_files(shm_env)) == 2
    assert await monitor_main(["--self-destruct", "--timeout", "1000"]) == 0
    assert shm_files(shm_env) == []


async def test_two_sessions_on_one_host_do_not_touch_each_other(shm_env: str) -> None:
    gone = dead_pid()
    fake_owner(shm_env, "alpha", gone, 1.0, time.time())
    fake_owner(shm_env, "beta", gone, 1.0, time.time())
    removed = cleanup_session("alpha")
    assert [(s.session, s.pid) for s in removed] == [("alpha", gone)]
    assert shm_files(shm_env) == [f"karabo_beta_{gone}_0", f"karabo_beta_{gone}_owner"]
    cleanup_session("beta")
    assert shm_files(shm_env) == []


async def test_list_shows_owners_pools_and_use(shm_env: str, capsys: Any) -> None:
    pool = ShmPool(4, 4096, label="cam:output")
    slot = await pool.acquire(1, 0.01)
    pool.hold(slot, "r")
    pool._owner._write()  # what the heartbeat thread does every half second
    assert await monitor_main(["--list"]) == 0
    out = capsys.readouterr().out
    assert os.environ["KARABO_SESSION"] in out and str(os.getpid()) in out
    assert "alive" in out and "cam:output 1/4" in out
    pool.close()


async def test_a_killed_monitor_cleans_up_at_its_next_start(shm_env: str, helpers: list[Helper]) -> None:
    monitor = await Helper.start("monitor", "--cleanup", "--interval", "20")
    helpers.append(monitor)
    assert (await monitor.line()).startswith("startup cleanup")
    session = os.environ["KARABO_SESSION"]
    gone = dead_pid()
    fake_owner(shm_env, session, gone, 1.0, time.time())
    await until(lambda: shm_files(shm_env) == [])  # the running monitor reclaims it
    await monitor.kill()
    fake_owner(shm_env, session, gone, 1.0, time.time())
    again = await Helper.start("monitor", "--self-destruct")
    helpers.append(again)
    assert await again.line() == f"startup cleanup of session {session!r}: removed 1 dead owner(s)"
    assert await again.proc.wait() == 0
    assert shm_files(shm_env) == []


async def test_monitor_stops_on_sigterm(helpers: list[Helper]) -> None:
    monitor = await Helper.start("monitor", "--cleanup")
    helpers.append(monitor)
    await monitor.line()
    monitor.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(monitor.proc.wait(), 10) == 0


# --- helper roles --------------------------------------------------------------------------------------


async def _role_alloc() -> None:
    pool = ShmPool(4, 1 << 20)
    slot = await pool.acquire(1, 0.01)
    pool.hold(slot, "me")
    print("ready", pool.path, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def _role_writer() -> None:
    loop = asyncio.get_running_loop()
    async with OutputEndpoint("proc", "out", transport="shm", pool_slots=2, slot_size=1 << 20) as out:
        print(json.dumps(out.address_info()), flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            n = int(line.split()[1])
            await out.write({"n": n, "a": np.full(ARRAY, n, np.float32)})


async def _role_reader(info: str, mode: str) -> None:
    done = asyncio.Event()

    async def on_data(data: Mapping[str, Any], meta: ItemMeta) -> None:
        ok = bool(np.all(data["a"] == 3))
        print(f"got {data['n']} {'ok' if ok else 'bad'}", flush=True)
        done.set()
        if mode != "exit":
            await asyncio.Event().wait()  # hold the slot until killed

    inp = InputEndpoint("reader", "in", transport="shm", on_data=on_data)
    assert await inp.connect("src:out", json.loads(info))
    print("connected", flush=True)
    await done.wait()
    if mode != "exit":
        await asyncio.Event().wait()  # until killed
    await inp.close()


def _run_role(argv: list[str]) -> int:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is our protocol
    role = argv[0]
    if role == "alloc":
        asyncio.run(_role_alloc())
    elif role == "writer":
        asyncio.run(_role_writer())
    elif role == "reader":
        asyncio.run(_role_reader(argv[1], argv[2] if len(argv) > 2 else "hold"))
    elif role == "monitor":
        return asyncio.run(monitor_main(argv[1:]))
    else:
        raise SystemExit(f"unknown role {role!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_run_role(sys.argv[1:]))
