"""BufferedWriter: batches property changes into the store and rides out database outages.

A logger hands every change to :meth:`BufferedWriter.add` (never blocks, never raises for an outage);
a background task writes batches when ``batch_size`` rows are waiting or ``flush_interval`` has passed.
While the database is unavailable the rows stay in a bounded buffer and the task retries with
exponential backoff; when the buffer is full the *oldest* rows are dropped and counted (the newest
values are the ones a configuration query at "now" needs). Once the database is back the buffer is
written in order, in large batches, until it has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import structlog

from ..errors import ArchiveError, ArchiveUnavailable, ArchiveValueError
from .store import ArchiveStore, Change, PreparedChange, prepare_change

log = structlog.get_logger(__name__)

_CATCH_UP_BATCHES: Final = 10  # rows per write while catching up: this many batches at once


@dataclass(frozen=True)
class WriterState:
    """What the writer reports: ``ok`` False with a ``reason`` while rows cannot be written."""

    ok: bool
    reason: str
    buffered: int
    dropped: int
    written: int


class BufferedWriter:
    """Writes changes to ``store`` in batches, buffering through outages. Use as ``async with``.

    ``on_state`` is called with a :class:`WriterState` whenever ok/error or the reason changes, and
    whenever rows are dropped.
    """

    def __init__(
        self,
        store: ArchiveStore,
        *,
        batch_size: int = 1000,
        flush_interval: float = 0.5,
        max_buffer: int = 1_000_000,
        retry_initial: float = 0.2,
        retry_max: float = 10.0,
        on_state: Callable[[WriterState], None] | None = None,
    ) -> None:
        if batch_size < 1 or max_buffer < batch_size:
            raise ArchiveValueError(
                f"need 1 <= batch_size <= max_buffer, got batch_size={batch_size}, max_buffer={max_buffer}"
            )
        if flush_interval <= 0 or retry_initial <= 0 or retry_max < retry_initial:
            raise ArchiveValueError(
                "flush_interval, retry_initial must be > 0 and retry_max >= retry_initial"
            )
        self._store = store
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_buffer = max_buffer
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._on_state = on_state
        self._buffer: deque[PreparedChange] = deque()
        self._in_flight = 0  # rows taken from the buffer for the current write attempt
        self._dropped = 0
        self._written = 0
        self._ok = True
        self._reason = ""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> BufferedWriter:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def state(self) -> WriterState:
        return WriterState(
            self._ok, self._reason, len(self._buffer) + self._in_flight, self._dropped, self._written
        )

    def start(self) -> None:
        """Start the background writing task (in the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="archive-writer")

    def add(self, change: Change) -> None:
        """Queue one change. It is checked now (ArchiveTypeError/ArchiveValueError for a bad one), so
        that a bad row can never block the batches behind it."""
        idle = not self._buffer
        self._buffer.append(prepare_change(change))
        self._idle.clear()
        overflow = len(self._buffer) + self._in_flight - self._max_buffer
        if overflow > 0:
            self._drop(overflow)
        # The first row starts the flush-interval clock; a full batch is written at once.
        if idle or len(self._buffer) >= self._batch_size:
            self._wake.set()

    def add_many(self, changes: Iterable[Change]) -> None:
        for change in changes:
            self.add(change)

    async def flush(self) -> None:
        """Wait until everything added so far is written (forever, while the database is away)."""
        if self._buffer or self._in_flight:
            self.start()
            self._wake.set()
            await self._idle.wait()

    async def close(self, grace: float | None = 10.0) -> None:
        """Write what is buffered (waiting up to ``grace`` s), then stop; rows still unwritten then
        are logged as lost."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            lost = len(self._buffer) + self._in_flight
            log.error("archive writer closed with rows unwritten", lost=lost, reason=self._reason)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    # --- the background task ----------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._retry_initial
        while True:
            if not self._buffer:
                self._idle.set()
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            if len(self._buffer) < self._batch_size and not self._closing:
                await self._wait_for_batch()
            try:
                await self._write_batch()
            except ArchiveUnavailable as exc:
                self._set_state(False, exc.reason)
                await asyncio.sleep(delay)  # back off: the database is away
                delay = min(delay * 2, self._retry_max)
                continue
            except Exception as exc:
                # Unforeseen trouble: keep the rows and retry rather than let the task die and the
                # buffer grow unseen; the bounded buffer caps the cost if it never clears.
                log.exception("archive write failed unexpectedly; will retry")
                self._set_state(False, f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            delay = self._retry_initial
            self._set_state(True, "")

    async def _wait_for_batch(self) -> None:
        """Until ``batch_size`` rows wait, the flush interval passes, or a flush/close is asked for."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._flush_interval)
        self._wake.clear()

    async def _write_batch(self) -> None:
        limit = self._batch_size * (1 if self._ok else _CATCH_UP_BATCHES)
        count = min(limit, len(self._buffer))
        batch = [self._buffer.popleft() for _ in range(count)]
        self._in_flight = count
        try:
            await self._store.write_prepared(batch)
        except ArchiveError as exc:
            if isinstance(exc, ArchiveUnavailable):
                self._buffer.extendleft(reversed(batch))
                raise
            # Rows were checked in add(), so this is the database refusing them: retrying cannot help.
            log.error("archive refused a batch; dropping it", rows=count, error=str(exc))
            self._dropped += count
            self._set_state(False, f"batch refused: {exc}", force=True)
        except Exception:
            self._buffer.extendleft(reversed(batch))
            raise
        else:
            self._written += count
        finally:
            self._in_flight = 0
            overflow = len(self._buffer) - self._max_buffer
            if overflow > 0:
                self._drop(overflow)

    def _drop(self, count: int) -> None:
        count = min(count, len(self._buffer))
        for _ in range(count):
            self._buffer.popleft()
        self._dropped += count
        log.warning("archive buffer full; dropped oldest rows", dropped=count, total_dropped=self._dropped)
        self._set_state(self._ok, self._reason, force=True)

    def _set_state(self, ok: bool, reason: str, *, force: bool = False) -> None:
        if not force and ok == self._ok and reason == self._reason:
            return
        if ok != self._ok:
            if ok:
                log.info("archive writes recovered", buffered=len(self._buffer), dropped=self._dropped)
            else:
                log.warning("archive writes failing; buffering", reason=reason)
        self._ok, self._reason = ok, reason
        if self._on_state is not None:
            try:
                self._on_state(self.state)
            except Exception:
                log.exception("archive writer state callback raised")
