"""Helpers for the pipeline tests that use shared memory: a private shm directory and session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest


def private_shm_dir(monkeypatch: pytest.MonkeyPatch, left_message: str) -> Iterator[str]:
    """Body of an autouse fixture: a fresh shm directory and session for one test; afterwards the
    directory is emptied and removed, and the test fails with ``left_message`` if anything was left."""
    directory = f"/dev/shm/karabo-test-{uuid.uuid4().hex[:8]}"
    os.mkdir(directory)
    monkeypatch.setenv("KARABO_SHM_DIR", directory)
    monkeypatch.setenv("KARABO_SESSION", f"t{uuid.uuid4().hex[:8]}")
    yield directory
    left = os.listdir(directory)
    for name in left:
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)
    assert left == [], left_message
