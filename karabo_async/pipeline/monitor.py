"""The shared-memory monitor: list pools and owners, reclaim what dead processes left behind.

``karabo-async shm monitor [--cleanup] [--timeout MS] [--self-destruct] [--list]`` runs
:func:`monitor_main`; a device server calls :func:`cleanup_session` at start for its session.

An owner is dead when its pid is gone, when the pid now belongs to a process that started at
another time (a reused pid), or when its heartbeat is older than the timeout. Only a dead owner's
files are removed, and only in the session asked for: other sessions on the host are never touched.
Slots that a dead *receiver* held are not the monitor's business: the owner reclaims them itself
when the receiver's socket closes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from .identity import check_session, process_alive, process_start_time, session_id, shm_dir
from .shm import OWNER_SUFFIX, OwnerInfo, SegmentName, parse_name, read_owner

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT = 5.0


@dataclass(slots=True)
class OwnerStatus:
    """One process's files in the shm directory and the verdict on its liveness."""

    session: str
    pid: int
    alive: bool
    reason: str
    heartbeat_age: float | None
    files: dict[str, int] = field(default_factory=dict)  # name -> size
    pools: list[dict[str, object]] = field(default_factory=list)


def scan(
    session: str | None = None, *, timeout: float = DEFAULT_TIMEOUT, directory: str | None = None
) -> list[OwnerStatus]:
    """Every owner with files in ``directory`` (all sessions if ``session`` is None)."""
    directory = directory or shm_dir()
    groups: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
    for entry in os.scandir(directory):
        parsed = parse_name(entry.name)
        if parsed is None or (session is not None and parsed.session != session):
            continue
        try:
            groups[(parsed.session, parsed.pid)][entry.name] = entry.stat().st_size
        except FileNotFoundError:
            continue  # removed while we looked
    now = time.time()
    result = []
    for (sess, pid), files in sorted(groups.items()):
        owner_path = os.path.join(directory, str(SegmentName(sess, pid, OWNER_SUFFIX)))
        info = read_owner(owner_path)
        alive, reason = _judge(pid, info, files, directory, now, timeout)
        age = now - info.heartbeat if info else None
        result.append(OwnerStatus(sess, pid, alive, reason, age, files, info.pools if info else []))
    return result


def _judge(
    pid: int, info: OwnerInfo | None, files: dict[str, int], directory: str, now: float, timeout: float
) -> tuple[bool, str]:
    if info is not None:
        if not process_alive(pid, info.start_time):
            return False, "process gone (or pid reused)"
        if now - info.heartbeat > timeout:
            return False, f"heartbeat {now - info.heartbeat:.1f} s old"
        return True, "heartbeat fresh"
    started = process_start_time(pid)
    if started is None or not process_alive(pid, None):
        return False, "process gone, no owner record"
    oldest = min(_mtime(os.path.join(directory, n)) for n in files)
    if oldest < started - 1.0:
        return False, "files older than the process with that pid (pid reused)"
    return True, "process runs (no owner record yet)"


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return time.time()


def cleanup_session(
    session: str | None = None, *, timeout: float = DEFAULT_TIMEOUT, directory: str | None = None
) -> list[OwnerStatus]:
    """Remove the files of dead owners of ``session`` (default: this process's); return whom it removed.

    Safe to call from any process at any time: live owners and other sessions are left alone.
    Receivers that still map a removed segment keep their data until they drop it.
    """
    session = check_session(session) if session is not None else session_id()
    directory = directory or shm_dir()
    removed = []
    for status in scan(session, timeout=timeout, directory=directory):
        if status.alive or status.pid == os.getpid():
            continue
        for name in status.files:
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                continue
        log.info(
            "removed shared memory of a dead owner",
            session=session,
            pid=status.pid,
            reason=status.reason,
            files=sorted(status.files),
        )
        removed.append(status)
    return removed


def format_table(statuses: Sequence[OwnerStatus]) -> str:
    lines = [
        f"{'session':<16} {'pid':>8} {'state':<6} {'beat age':>9} {'MiB':>8}  pools (used/slots) / reason"
    ]
    for s in statuses:
        age = f"{s.heartbeat_age:.1f}s" if s.heartbeat_age is not None else "-"
        mib = sum(s.files.values()) / 2**20
        pools = ", ".join(
            f"{p.get('label') or p.get('path')} {p.get('used')}/{p.get('slots')}" for p in s.pools
        )
        lines.append(
            f"{s.session:<16} {s.pid:>8} {'alive' if s.alive else 'DEAD':<6} {age:>9} {mib:>8.1f}"
            f"  {pools or '-'} / {s.reason}"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="karabo-async shm monitor", description="List and clean karabo shared memory."
    )
    p.add_argument("--cleanup", action="store_true", help="keep removing dead owners' segments while running")
    p.add_argument(
        "--timeout",
        type=int,
        default=int(DEFAULT_TIMEOUT * 1000),
        metavar="MS",
        help="heartbeat age after which an owner counts as dead (default %(default)s)",
    )
    p.add_argument("--self-destruct", action="store_true", help="exit after one cleanup")
    p.add_argument("--list", action="store_true", help="print segments and owners of all sessions and exit")
    p.add_argument("--session", default=None, help="session to look after (default $KARABO_SESSION)")
    p.add_argument(
        "--interval", type=int, default=1000, metavar="MS", help="scan interval (default %(default)s)"
    )
    p.add_argument(
        "--dir", default=None, help="shared-memory directory (default $KARABO_SHM_DIR or /dev/shm)"
    )
    return p


async def monitor_main(argv: Sequence[str]) -> int:
    """Run the monitor; returns the exit status. Stops on SIGINT/SIGTERM or when cancelled."""
    args = _parser().parse_args(list(argv))
    session = check_session(args.session) if args.session else session_id()
    directory = args.dir or shm_dir()
    timeout = args.timeout / 1000
    if not _is_dir(directory):
        print(f"shared-memory directory {directory!r} does not exist")
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        removed = cleanup_session(session, timeout=timeout, directory=directory)
        print(f"startup cleanup of session {session!r}: removed {len(removed)} dead owner(s)", flush=True)
        if args.list:
            print(format_table(scan(None, timeout=timeout, directory=directory)), flush=True)
            return 0
        if args.self_destruct:
            return 0
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), args.interval / 1000)
            except TimeoutError:
                pass
            if args.cleanup:
                for status in cleanup_session(session, timeout=timeout, directory=directory):
                    print(f"removed pid {status.pid}: {status.reason}", flush=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


def main() -> None:
    raise SystemExit(asyncio.run(monitor_main(sys.argv[1:])))


if __name__ == "__main__":
    main()
