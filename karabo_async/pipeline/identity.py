"""Who and where we are: host id, session id, shared-memory directory, process start times.

The host id decides between shared memory and TCP, so it must differ between machines yet agree
between processes of one machine: /etc/machine-id plus the host name (containers may share one).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket

import psutil

from ..errors import PipelineError

DEFAULT_SHM_DIR = "/dev/shm"
DEFAULT_SESSION = "default"
_SESSION_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")


@functools.cache
def host_id() -> str:
    """A short stable id of this machine (same for every process on it)."""
    try:
        with open("/etc/machine-id", encoding="ascii") as f:
            machine = f.read().strip()
    except OSError:
        machine = ""
    return hashlib.sha256(f"{machine}|{socket.gethostname()}".encode()).hexdigest()[:16]


def shm_dir() -> str:
    """Where pools live: ``$KARABO_SHM_DIR``, else /dev/shm (read each time so tests can redirect it)."""
    return os.environ.get("KARABO_SHM_DIR", DEFAULT_SHM_DIR)


def session_id() -> str:
    """The session segment names carry (``$KARABO_SESSION``), so sessions on one host never collide."""
    return check_session(os.environ.get("KARABO_SESSION", DEFAULT_SESSION))


def check_session(session: str) -> str:
    # No "_": it separates the parts of segment names.
    if not _SESSION_RE.match(session):
        raise PipelineError(f"session id must be 1-64 letters, digits or '-'; got {session!r}")
    return session


def process_start_time(pid: int) -> float | None:
    """Start time of ``pid``, or None if no such process: with the pid it names a process uniquely."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def process_alive(pid: int, start_time: float | None) -> bool:
    """True if ``pid`` runs and (when known) started at ``start_time``: a reused pid is not alive."""
    actual = process_start_time(pid)
    if actual is None:
        return False
    if start_time is None:
        return True
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.Error:
        return False
    return abs(actual - start_time) < 0.01
