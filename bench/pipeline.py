"""Pipeline throughput per path, beside raw baselines measured in the same run.

    .venv/bin/python bench/pipeline.py [--seconds 1.0] [--uvloop]

For items of 1 KiB, 1 MiB and 8 MiB (one uint8 array plus a counter) it measures items/s and MB/s
over each path: same process (object hand-over), shared memory (writer in another process) and TCP
on loopback (writer in another process), for ``copy`` (one input) and ``shared`` (two inputs
sharing the items). Baselines: raw asyncio TCP on loopback (a BufferedProtocol receiving into a
preallocated buffer, no framing) and a plain memcpy into a shared-memory buffer.

The ``channel`` rows run the same through devices in one process (memory broker): a device's
``OutputChannel.write`` of a fresh ``Hash`` with a train-stamped ``Timestamp`` per item, to an
``InputChannel`` handler that gets a ``ChannelMeta`` -- what device code pays on top of the engine.

Each case writes as fast as it can for ``--seconds`` with back-pressure (``wait``), then sends end
of stream; the rate is what arrived between the first item and the last end of stream. The writer
reuses one array for speed (real writers must hand over a fresh item per write).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import mmap
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import structlog

from karabo_async import ChannelMeta, DeviceServer, Hash, InputChannel, OutputChannel
from karabo_async.device import Device
from karabo_async.pipeline import InputEndpoint, ItemMeta, OutputEndpoint

SIZES = {"1 KiB": 1024, "1 MiB": 1024**2, "8 MiB": 8 * 1024**2}
TARGETS = {"tcp 1 MiB": "TCP >= 70% of raw", "shm 8 MiB": "shm >= 5 GB/s", "local": ">= 100,000 items/s"}


@dataclass
class Result:
    path: str
    distribution: str
    size: str
    items: int
    seconds: float

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.items_per_s * SIZES[self.size] / 1e6


def _use_uvloop(flag: bool) -> None:
    if flag:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# --- the writer, in its own process for shm and tcp -------------------------------------------------


def _writer_process(
    conn: Connection, transport: str, size: int, seconds: float, uv: bool, env: dict[str, str]
) -> None:
    os.environ.update(env)
    _use_uvloop(uv)
    _quiet()
    asyncio.run(_writer(conn, transport, size, seconds))


async def _writer(conn: Connection, transport: str, size: int, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    out = OutputEndpoint("bench", "out", transport=transport, tcp_host="127.0.0.1", no_shared_ready="wait")  # type: ignore[arg-type]
    await out.start()
    conn.send(out.address_info())
    await loop.run_in_executor(None, conn.recv)
    written = await _write_for(out, size, seconds)
    conn.send(written)
    await loop.run_in_executor(None, conn.recv)
    await out.close()


async def _write_for(out: OutputEndpoint, size: int, seconds: float) -> int:
    arr = np.ones(size, np.uint8)
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(64):
            await out.write({"data": arr, "n": n}, ItemMeta(out.channel_id, 0.0, n))
            n += 1
    await out.write_end_of_stream()
    return n


class _Counter:
    def __init__(self, n_inputs: int) -> None:
        self.items = 0
        self.first = 0.0
        self.last = 0.0
        self.eos = 0
        self.n_inputs = n_inputs
        self.done = asyncio.Event()

    def on_data(self, data: Mapping[str, Any], meta: ItemMeta) -> None:
        if not self.items:
            self.first = time.perf_counter()
        self.items += 1

    def on_eos(self) -> None:
        self.eos += 1
        if self.eos == self.n_inputs:
            self.last = time.perf_counter()
            self.done.set()


def _inputs(counter: _Counter, distribution: str, transport: str) -> list[InputEndpoint]:
    n = 2 if distribution == "shared" else 1
    return [
        InputEndpoint(
            "bench-rx",
            f"in{i}",
            data_distribution=distribution,  # type: ignore[arg-type]
            transport=transport,  # type: ignore[arg-type]
            on_data=counter.on_data,
            on_end_of_stream=counter.on_eos,
        )
        for i in range(n)
    ]


async def bench_remote(transport: str, distribution: str, size: str, seconds: float, uv: bool) -> Result:
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    env = {k: v for k, v in os.environ.items() if k.startswith("KARABO_")}
    proc = ctx.Process(target=_writer_process, args=(there, transport, SIZES[size], seconds, uv, env))
    proc.start()
    loop = asyncio.get_running_loop()
    try:
        info = await loop.run_in_executor(None, here.recv)
        counter = _Counter(2 if distribution == "shared" else 1)
        inputs = _inputs(counter, distribution, transport)
        for inp in inputs:
            assert await inp.connect("bench:out", info), inp.stats
        here.send("go")
        await asyncio.wait_for(counter.done.wait(), seconds + 30)
        written = await loop.run_in_executor(None, here.recv)
        assert counter.items == written, (counter.items, written)
        here.send("bye")
        for inp in inputs:
            await inp.close()
    finally:
        await loop.run_in_executor(None, proc.join, 10)
    return Result(transport, distribution, size, counter.items, counter.last - counter.first)


async def bench_local(distribution: str, size: str, seconds: float) -> Result:
    counter = _Counter(2 if distribution == "shared" else 1)
    async with OutputEndpoint("bench", "out", transport="local", no_shared_ready="wait") as out:
        inputs = _inputs(counter, distribution, "local")
        for inp in inputs:
            assert await inp.connect("bench:out", out.address_info())
        await _write_for(out, SIZES[size], seconds)
        await asyncio.wait_for(counter.done.wait(), 30)
        for inp in inputs:
            await inp.close()
    return Result("local", distribution, size, counter.items, counter.last - counter.first)


class _BenchWriter(Device):
    output = OutputChannel(no_shared_ready="wait")

    async def write_for(self, size: int, seconds: float) -> int:
        arr = np.ones(size, np.uint8)
        n = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(64):
                await self.output.write(Hash(data=arr, n=n))
                n += 1
        await self.output.write_end_of_stream()
        return n


class _BenchReader(Device):
    input = InputChannel(on_slowness="wait")
    counter: Any = None

    @input.on_data
    def handle(self, data: Hash, meta: ChannelMeta) -> None:
        self.counter.on_data(data, meta)

    @input.on_end_of_stream
    def eos(self, meta: ChannelMeta) -> None:
        self.counter.on_eos()


async def bench_channel(size: str, seconds: float) -> Result:
    counter = _Counter(1)
    server = DeviceServer(
        "bench-srv", classes=[_BenchWriter, _BenchReader], broker="memory://bench", entry_points=False
    )
    async with server:
        await server.instantiate("_BenchWriter", "bench-cam", {})
        await server.instantiate(
            "_BenchReader", "bench-rx", {"input.connected_output_channels": ["bench-cam:output"]}
        )
        writer, reader = server.devices["bench-cam"], server.devices["bench-rx"]
        assert isinstance(writer, _BenchWriter) and isinstance(reader, _BenchReader)
        reader.counter = counter
        assert await reader.input.wait_connected("bench-cam:output")
        await writer.write_for(SIZES[size], seconds)
        await asyncio.wait_for(counter.done.wait(), 30)
    return Result("channel", "copy", size, counter.items, counter.last - counter.first)


# --- baselines ---------------------------------------------------------------------------------------


def _raw_sender_process(port: int, size: int, seconds: float, uv: bool) -> None:
    _use_uvloop(uv)
    asyncio.run(_raw_sender(port, size, seconds))


async def _raw_sender(port: int, size: int, seconds: float) -> None:
    class Sender(asyncio.Protocol):
        def __init__(self) -> None:
            self.writable = asyncio.Event()
            self.writable.set()

        def pause_writing(self) -> None:
            self.writable.clear()

        def resume_writing(self) -> None:
            self.writable.set()

    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(Sender, "127.0.0.1", port)
    transport.set_write_buffer_limits(high=8 * 1024 * 1024)
    payload = np.ones(size, np.uint8).data
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(64):
            transport.write(payload)
            if not proto.writable.is_set():
                await proto.writable.wait()
    transport.close()
    await asyncio.sleep(0)


async def bench_raw_tcp(size: str, seconds: float, uv: bool) -> Result:
    done = asyncio.get_running_loop().create_future()

    class Receiver(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(max(SIZES[size], 256 * 1024))
            self.nbytes = 0
            self.first = 0.0

        def get_buffer(self, sizehint: int) -> memoryview:
            return memoryview(self.buf)

        def buffer_updated(self, nbytes: int) -> None:
            if not self.nbytes:
                self.first = time.perf_counter()
            self.nbytes += nbytes

        def connection_lost(self, exc: Exception | None) -> None:
            done.set_result((self.nbytes, time.perf_counter() - self.first))

    server = await asyncio.get_running_loop().create_server(Receiver, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proc = mp.get_context("spawn").Process(target=_raw_sender_process, args=(port, SIZES[size], seconds, uv))
    proc.start()
    nbytes, elapsed = await asyncio.wait_for(done, seconds + 30)
    server.close()
    await asyncio.get_running_loop().run_in_executor(None, proc.join, 10)
    return Result("raw tcp", "-", size, nbytes // SIZES[size], elapsed)


def bench_memcpy_shm(size: str, seconds: float) -> Result:
    nbytes = SIZES[size]
    directory = os.environ.get("KARABO_SHM_DIR", "/dev/shm")
    fd, path = tempfile.mkstemp(dir=directory, prefix="bench_memcpy_")
    try:
        os.posix_fallocate(fd, 0, nbytes)
        with mmap.mmap(fd, nbytes) as mm:
            dst = np.frombuffer(mm, np.uint8)
            src = np.ones(nbytes, np.uint8)
            n = 0
            start = time.perf_counter()
            while time.perf_counter() - start < seconds / 2:
                np.copyto(dst, src)
                n += 1
            elapsed = time.perf_counter() - start
            del dst
    finally:
        os.close(fd)
        os.unlink(path)
    return Result("memcpy->shm", "-", size, n, elapsed)


# --- the run -----------------------------------------------------------------------------------------


async def run(seconds: float, uv: bool) -> list[Result]:
    results: list[Result] = []
    for size in SIZES:
        for dist in ("copy", "shared"):
            results.append(await bench_local(dist, size, seconds))
            for transport in ("shm", "tcp"):
                results.append(await bench_remote(transport, dist, size, seconds, uv))
        results.append(await bench_channel(size, seconds))
        results.append(await bench_raw_tcp(size, seconds, uv))
        results.append(bench_memcpy_shm(size, seconds))
        _print_rows(results[-9:])
    return results


def _print_rows(rows: list[Result]) -> None:
    for r in rows:
        print(
            f"{r.path:<12} {r.distribution:<7} {r.size:>6} {r.items_per_s:>14,.0f} {r.mb_per_s:>12,.0f}",
            flush=True,
        )


def _summary(results: list[Result]) -> None:
    def get(path: str, size: str, dist: str = "copy") -> Result:
        return next(r for r in results if r.path == path and r.size == size and r.distribution in (dist, "-"))

    tcp, raw = get("tcp", "1 MiB"), get("raw tcp", "1 MiB")
    shm = get("shm", "8 MiB")
    local = get("local", "1 KiB")
    channel = get("channel", "1 KiB")
    print()
    print(f"TCP 1 MiB vs raw: {100 * tcp.mb_per_s / raw.mb_per_s:.0f}%  (target >= 70%)")
    print(f"shm 8 MiB: {shm.mb_per_s / 1000:.1f} GB/s  (target >= 5 GB/s)")
    print(f"same process 1 KiB: {local.items_per_s:,.0f} items/s  (target >= 100,000)")
    print(f"same process 1 KiB through device channels: {channel.items_per_s:,.0f} items/s")


def _quiet() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.0, help="writing time per case (default 1.0)")
    parser.add_argument("--uvloop", action="store_true", help="run every loop (baselines too) on uvloop")
    args = parser.parse_args()
    _use_uvloop(args.uvloop)
    _quiet()
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, loop {'uvloop' if args.uvloop else 'asyncio'}"
    )
    print(f"{'path':<12} {'dist':<7} {'size':>6} {'items/s':>14} {'MB/s':>12}")
    results = asyncio.run(run(args.seconds, args.uvloop))
    _summary(results)


if __name__ == "__main__":
    main()
