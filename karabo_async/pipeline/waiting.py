"""Wake every waiter when something changed; waiters re-check their own condition.

Unlike ``asyncio.Condition`` it can be notified from plain callbacks (protocol methods) without
taking a lock, and unlike a shared ``Event`` no waiter can clear a wake-up meant for another.
"""

from __future__ import annotations

import asyncio


class Notifier:
    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    async def wait(self) -> None:
        """Return at the next :meth:`notify_all` after this call."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def notify_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
