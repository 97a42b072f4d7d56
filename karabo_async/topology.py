"""Who is alive in the domain: a live view built from heartbeats and announcements.

Heartbeats are per *process* (a device server sends one for itself and all its devices), so the
traffic grows with processes, not devices. Each process numbers the changes of its instance set
(``generation``, starting from the process's start time in milliseconds so that a restarted process
continues the sequence); stale messages are ignored, and a heartbeat carries the current number, so a tracker that missed an announcement
notices the gap and asks that process for its full list instead of waiting for it to repeat itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger(__name__)

INSTANCE_NEW = "instance_new"
INSTANCE_UPDATED = "instance_updated"
INSTANCE_GONE = "instance_gone"

# A process is gone when nothing was heard of it for this many of its heartbeat intervals; below 3 so
# that a killed process is reported within 3 intervals, with the check period on top.
MISSED_INTERVALS = 2.4
CHECK_FRACTION = 0.2


@dataclass(frozen=True, slots=True)
class TopologyEvent:
    """One change of the topology: ``kind`` is instance_new, instance_updated or instance_gone."""

    kind: str
    instance_id: str
    info: dict[str, Any]


@dataclass(slots=True)
class _Process:
    interval: float
    generation: int = -1
    last_seen: float = field(default_factory=time.monotonic)
    instances: set[str] = field(default_factory=set)


Listener = Callable[[TopologyEvent], None]


class EventStream(AsyncIterator[TopologyEvent]):
    """Topology events as an async iterator; subscribed from creation until ``aclose()``."""

    def __init__(self, subscribers: list[asyncio.Queue[TopologyEvent]]) -> None:
        self._queue: asyncio.Queue[TopologyEvent] = asyncio.Queue()
        self._subscribers: list[asyncio.Queue[TopologyEvent]] | None = subscribers
        subscribers.append(self._queue)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> TopologyEvent:
        if self._subscribers is None:
            raise StopAsyncIteration
        return await self._queue.get()

    async def aclose(self) -> None:
        self._unsubscribe()

    def _unsubscribe(self) -> None:
        if self._subscribers is not None:
            if self._queue in self._subscribers:
                self._subscribers.remove(self._queue)
            self._subscribers = None

    def __del__(self) -> None:
        # an iterator left behind (``break`` out of ``async for``) must not collect events forever
        self._unsubscribe()


class Topology(Mapping[str, dict[str, Any]]):
    """A read-only mapping ``{instance_id: info}`` of live instances, with change events.

    ``info`` holds type (server/device/client/macro), class, server, host, pid, status,
    heartbeat_interval, version and process (the id of the process that hosts the instance).
    """

    def __init__(self, query: Callable[[str], None] | None = None) -> None:
        self._instances: dict[str, dict[str, Any]] = {}
        self._processes: dict[str, _Process] = {}
        self._listeners: list[Listener] = []
        self._queues: list[asyncio.Queue[TopologyEvent]] = []
        self._query = query
        self._paused = False
        self._last_check = time.monotonic()

    # --- Mapping ---------------------------------------------------------------------------------
    def __getitem__(self, instance_id: str) -> dict[str, Any]:
        return self._instances[instance_id]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._instances))

    def __len__(self) -> int:
        return len(self._instances)

    def __repr__(self) -> str:
        return f"Topology({sorted(self._instances)})"

    def of_type(self, instance_type: str) -> dict[str, dict[str, Any]]:
        """Instances of one type (server, device, client, macro)."""
        return {k: v for k, v in self._instances.items() if v.get("type") == instance_type}

    # --- events ----------------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> Listener:
        self._listeners.append(listener)
        return listener

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def events(self) -> EventStream:
        """Every event from this call on, as an async iterator.

        It subscribes here, not when first awaited, so that an event caused right after this call (an
        instance started next) is never missed. ``aclose()`` (or dropping the iterator) unsubscribes.
        """
        return EventStream(self._queues)

    async def wait_for(self, instance_id: str, timeout: float | None = None, *, gone: bool = False) -> None:
        """Wait until an instance is present (or, with ``gone``, absent); TimeoutError otherwise."""
        if (instance_id in self._instances) != gone:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        wanted = INSTANCE_GONE if gone else INSTANCE_NEW

        def listener(event: TopologyEvent) -> None:
            if event.instance_id == instance_id and event.kind == wanted and not done.done():
                done.set_result(None)

        self.add_listener(listener)
        try:
            async with asyncio.timeout(timeout):
                await done
        finally:
            self.remove_listener(listener)

    def _emit(self, kind: str, instance_id: str, info: dict[str, Any]) -> None:
        event = TopologyEvent(kind, instance_id, info)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("topology listener failed", event=kind, instance=instance_id)
        for queue in self._queues:
            queue.put_nowait(event)

    # --- input from the topology lane ------------------------------------------------------------
    def heartbeat(self, process_id: str, interval: float, generation: int) -> None:
        proc = self._processes.get(process_id)
        if proc is None:
            proc = self._processes[process_id] = _Process(interval)
        proc.last_seen = time.monotonic()
        proc.interval = interval
        if generation > proc.generation and self._query is not None:
            self._query(process_id)

    def announce(
        self, process_id: str, interval: float, generation: int, instances: Mapping[str, Any]
    ) -> None:
        """New or updated instances of a process (instance_new / instance_updated messages)."""
        proc = self._process(process_id, interval)
        if generation < proc.generation:
            return  # older than what we know: a full state overtook it
        proc.generation = generation
        for instance_id, info in instances.items():
            self._put(proc, instance_id, info)

    def retire(self, process_id: str, generation: int, instance_ids: list[str]) -> None:
        """Instances that went away cleanly, or whose death the hosting process reports."""
        proc = self._processes.get(process_id)
        if proc is not None:
            if generation < proc.generation:
                return
            proc.generation = generation
            proc.last_seen = time.monotonic()
        for instance_id in instance_ids:
            self._remove(instance_id, proc)
        if proc is not None and not proc.instances:
            self._processes.pop(process_id, None)

    def full_state(
        self, process_id: str, interval: float, generation: int, instances: Mapping[str, Any]
    ) -> None:
        """The complete instance list of a process: everything else it hosted is gone."""
        proc = self._process(process_id, interval)
        if generation < proc.generation:
            return  # an answer computed before changes we already heard of
        proc.generation = generation
        for instance_id in list(proc.instances - set(instances)):
            self._remove(instance_id, proc)
        for instance_id, info in instances.items():
            self._put(proc, instance_id, info)

    def _process(self, process_id: str, interval: float) -> _Process:
        proc = self._processes.get(process_id)
        if proc is None:
            proc = self._processes[process_id] = _Process(interval)
        proc.interval = interval
        proc.last_seen = time.monotonic()
        return proc

    def _put(self, proc: _Process, instance_id: str, info: dict[str, Any]) -> None:
        old = self._instances.get(instance_id)
        proc.instances.add(instance_id)
        self._instances[instance_id] = info
        if old is None:
            self._emit(INSTANCE_NEW, instance_id, info)
        elif old != info:
            self._emit(INSTANCE_UPDATED, instance_id, info)

    def _remove(self, instance_id: str, proc: _Process | None) -> None:
        if proc is not None:
            proc.instances.discard(instance_id)
        info = self._instances.pop(instance_id, None)
        if info is not None:
            self._emit(INSTANCE_GONE, instance_id, info)

    # --- liveness --------------------------------------------------------------------------------
    def check_period(self) -> float:
        intervals = [p.interval for p in self._processes.values()] or [1.0]
        return max(0.02, min(intervals) * CHECK_FRACTION)

    def pause(self) -> None:
        """While our own link to the broker is down, silence proves nothing about others."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        now = time.monotonic()
        for proc in self._processes.values():
            proc.last_seen = now

    def check(self) -> None:
        """Declare processes gone whose heartbeats stopped. If this check itself ran late, our own loop
        was stalled and the silence of others may only be heartbeats still waiting in our socket."""
        now = time.monotonic()
        late = now - self._last_check > 3 * self.check_period() + 0.1
        self._last_check = now
        if self._paused or late:
            return
        for process_id, proc in list(self._processes.items()):
            if now - proc.last_seen > MISSED_INTERVALS * proc.interval:
                log.info(
                    "process stopped sending heartbeats", process=process_id, instances=len(proc.instances)
                )
                del self._processes[process_id]
                for instance_id in list(proc.instances):
                    self._remove(instance_id, None)
