"""Shared-memory pools: fixed slots in one pre-reserved segment per output, owned by one process.

Design (see docs/pipelines.md and the measured facts in the shared notes):

* Only the owning process changes slot state; receivers acknowledge over their socket, so no lock
  is ever shared between processes and a dying peer cannot deadlock anyone.
* The segment is reserved with ``posix_fallocate`` when created, so a full /dev/shm is a typed
  :class:`ShmFull` at once instead of a SIGBUS on some later write.
* Files are opened with ``os.open`` + ``mmap`` (never ``multiprocessing.shared_memory``), so Python's
  resource tracker cannot unlink a segment behind the owner's back.
* Names are ``karabo_<session>_<pid>_<n>``; beside them ``karabo_<session>_<pid>_owner`` holds the
  owner's pid, process start time and a heartbeat a thread refreshes, so a monitor can tell a dead
  owner (or a reused pid) from a live one and reclaim only what the dead one held.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import mmap
import os
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

import structlog

from ..errors import PipelineError, PoolExhausted, ShmFull
from .identity import check_session, process_start_time, session_id, shm_dir

log = structlog.get_logger(__name__)

PREFIX: Final = "karabo_"
OWNER_SUFFIX: Final = "owner"
OWNER_SIZE: Final = 64 * 1024
_OWNER_MAGIC: Final = b"KAOWNER1"
# magic, pid, process start time, heartbeat (wall clock), json length
_OWNER_HEAD: Final = struct.Struct("<8sqddI")
_OWNER_JSON_AT: Final = 64
HEARTBEAT_INTERVAL: Final = 0.5

_segment_numbers = itertools.count()


@dataclass(frozen=True, slots=True)
class SegmentName:
    session: str
    pid: int
    suffix: str

    @property
    def is_owner(self) -> bool:
        return self.suffix == OWNER_SUFFIX

    def __str__(self) -> str:
        return f"{PREFIX}{self.session}_{self.pid}_{self.suffix}"


def parse_name(name: str) -> SegmentName | None:
    """Split a file name of ours into session, pid and suffix; None for anything else."""
    if not name.startswith(PREFIX):
        return None
    parts = name[len(PREFIX) :].rsplit("_", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    session, pid, suffix = parts
    if not session or not (suffix.isdigit() or suffix == OWNER_SUFFIX):
        return None
    return SegmentName(session, int(pid), suffix)


@dataclass(slots=True)
class OwnerInfo:
    """What an owner record says about its process (read by the monitor)."""

    pid: int
    start_time: float
    heartbeat: float
    pools: list[dict[str, Any]]


def read_owner(path: str) -> OwnerInfo | None:
    """Read an owner record; None if missing or torn (the monitor then judges by pid alone)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(OWNER_SIZE)
        magic, pid, start, beat, n = _OWNER_HEAD.unpack_from(raw)
        if magic != _OWNER_MAGIC:
            return None
        pools = json.loads(raw[_OWNER_JSON_AT : _OWNER_JSON_AT + n] or b"[]")
        return OwnerInfo(pid, start, beat, pools if isinstance(pools, list) else [])
    except (OSError, struct.error, ValueError) as exc:
        log.debug("owner record unreadable", path=path, error=str(exc))
        return None


class OwnerRecord:
    """This process's record in one shm directory and session, shared by all its pools.

    A daemon thread writes the heartbeat, so a busy event loop does not make us look dead.
    """

    _records: dict[tuple[str, str], OwnerRecord] = {}

    def __init__(self, directory: str, session: str) -> None:
        self.directory = directory
        self.session = session
        self.pid = os.getpid()
        self.path = os.path.join(directory, str(SegmentName(session, self.pid, OWNER_SUFFIX)))
        self.pools: list[ShmPool] = []
        self._start_time = process_start_time(self.pid) or 0.0
        self._remove_leftovers_of_same_pid()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _reserve(fd, self.path, OWNER_SIZE)
            self._map = mmap.mmap(fd, OWNER_SIZE)
        except BaseException:
            os.unlink(self.path)
            raise
        finally:
            os.close(fd)
        self._write()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"karabo-shm-heartbeat-{session}", daemon=True
        )
        self._thread.start()

    @classmethod
    def acquire(cls, directory: str, session: str, pool: ShmPool) -> OwnerRecord:
        key = (directory, session)
        record = cls._records.get(key)
        if record is None or record.pid != os.getpid():
            record = cls._records[key] = OwnerRecord(directory, session)
        record.pools.append(pool)
        return record

    def release(self, pool: ShmPool) -> None:
        self.pools.remove(pool)
        if not self.pools:
            self._records.pop((self.directory, self.session), None)
            self._stop.set()
            self._thread.join()
            _unlink(self.path)
            self._map.close()

    def _remove_leftovers_of_same_pid(self) -> None:
        # A previous process with our pid died without cleaning up: its files carry our names.
        try:
            names = os.listdir(self.directory)
        except OSError as exc:
            raise PipelineError(f"shared-memory directory {self.directory!r} unusable: {exc}") from exc
        for name in names:
            parsed = parse_name(name)
            if parsed and parsed.session == self.session and parsed.pid == self.pid:
                log.warning("removing leftover of a dead process with our pid", file=name)
                _unlink(os.path.join(self.directory, name))

    def _write(self) -> None:
        pools = [p.describe() for p in list(self.pools)]
        body = json.dumps(pools).encode()[: OWNER_SIZE - _OWNER_JSON_AT]
        self._map[_OWNER_JSON_AT : _OWNER_JSON_AT + len(body)] = body
        self._map[: _OWNER_HEAD.size] = _OWNER_HEAD.pack(
            _OWNER_MAGIC, self.pid, self._start_time, time.time(), len(body)
        )

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            try:
                self._write()
            except (ValueError, OSError) as exc:  # the map was closed under us at shutdown
                log.debug("heartbeat stopped", error=str(exc))
                return


def _reserve(fd: int, path: str, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise ShmFull(path, size, os.strerror(exc.errno)) from exc
        raise PipelineError(f"cannot reserve {size} bytes for {path!r}: {exc}") from exc


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


class ShmPool:
    """``slots`` fixed slots of ``slot_size`` bytes in one segment, handed out and taken back here.

    A slot may have several holders (one per receiver an item was copied to); it is free again when
    every holder released it or its connection was lost.
    """

    def __init__(
        self,
        slots: int,
        slot_size: int,
        *,
        session: str | None = None,
        directory: str | None = None,
        label: str = "",
    ) -> None:
        self.slots = slots
        self.slot_size = slot_size
        self.label = label
        self.session = check_session(session) if session is not None else session_id()
        self.directory = directory or shm_dir()
        name = SegmentName(self.session, os.getpid(), str(next(_segment_numbers)))
        self.path = os.path.join(self.directory, str(name))
        self._owner = OwnerRecord.acquire(self.directory, self.session, self)
        try:
            self._map = self._create()
        except BaseException:
            self._owner.release(self)
            raise
        self._free: deque[int] = deque(range(slots))
        self._holders: dict[int, set[object]] = {}
        self._released = asyncio.Event()
        self.exhausted_count = 0
        self.closed = False

    def _create(self) -> mmap.mmap:
        size = self.slots * self.slot_size
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _reserve(fd, self.path, size)
            return mmap.mmap(fd, size)
        except BaseException:
            _unlink(self.path)
            raise
        finally:
            os.close(fd)

    @property
    def used(self) -> int:
        return self.slots - len(self._free)

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "label": self.label,
            "slots": self.slots,
            "slot_size": self.slot_size,
            "used": self.used,
        }

    def view(self, slot: int) -> memoryview:
        """Writable view of one slot (drop it before closing the pool)."""
        start = slot * self.slot_size
        return memoryview(self._map)[start : start + self.slot_size]

    def try_acquire(self) -> int | None:
        if self._free:
            slot = self._free.popleft()
            self._holders[slot] = set()
            return slot
        return None

    async def acquire(self, attempts: int, interval: float) -> int:
        """A free slot, waiting up to ``attempts`` x ``interval`` for a release; else PoolExhausted."""
        for _ in range(attempts):
            slot = self.try_acquire()
            if slot is not None:
                return slot
            self._released.clear()
            try:
                await asyncio.wait_for(self._released.wait(), interval)
            except TimeoutError:
                pass
        slot = self.try_acquire()
        if slot is not None:
            return slot
        self.exhausted_count += 1
        raise PoolExhausted(self.path, self.slots, attempts, interval)

    def hold(self, slot: int, holder: object) -> None:
        self._holders[slot].add(holder)

    def release(self, slot: int, holder: object) -> bool:
        """Drop ``holder``'s claim; False if it held no such slot (a confused or hostile peer)."""
        holders = self._holders.get(slot)
        if holders is None or holder not in holders:
            return False
        holders.discard(holder)
        if not holders:
            self._free_slot(slot)
        return True

    def release_unheld(self, slot: int) -> None:
        """Give back a slot nobody took (the item was not sent after all)."""
        if slot in self._holders and not self._holders[slot]:
            self._free_slot(slot)

    def release_all(self, holder: object) -> int:
        """Release every slot ``holder`` held (its connection is gone); returns how many."""
        held = [s for s, h in self._holders.items() if holder in h]
        for slot in held:
            self.release(slot, holder)
        return len(held)

    def _free_slot(self, slot: int) -> None:
        del self._holders[slot]
        self._free.append(slot)
        self._released.set()

    def close(self) -> None:
        """Unlink the segment; receivers that still map it keep valid data until they drop it."""
        if self.closed:
            return
        self.closed = True
        _unlink(self.path)
        try:
            self._map.close()
        except BufferError:
            # A view is still exported somewhere; the mapping goes when it is collected.
            log.debug("shm pool closed with views alive", path=self.path)
        self._owner.release(self)


def attach(path: str) -> mmap.mmap:
    """Map another process's segment read-only. Attaching never unlinks (no resource tracker)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise PipelineError(f"cannot open shared-memory segment {path!r}: {exc}") from exc
    try:
        size = os.fstat(fd).st_size
        return mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
