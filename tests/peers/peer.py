"""A SignalSlotable in a process of its own, for tests that kill processes or flood instances.

Usage: python tests/peers/peer.py BROKER DOMAIN INSTANCE_ID HEARTBEAT_INTERVAL
Prints "ready" once online; serves ``echo`` until killed or until its ``quit`` slot is called.
"""

from __future__ import annotations

import asyncio
import sys

from karabo_async import SignalSlotable


async def main(broker: str, domain: str, instance_id: str, interval: float) -> None:
    stop = asyncio.Event()
    async with SignalSlotable(instance_id, broker=broker, domain=domain, heartbeat_interval=interval) as peer:

        @peer.slot
        def echo(value: object) -> object:
            return value

        @peer.slot
        def quit() -> None:
            stop.set()

        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
