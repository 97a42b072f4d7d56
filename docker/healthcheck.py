"""Container health check: exit 0 when the device server named by KARABO_SERVER_ID answers a ping.

Run by the image's HEALTHCHECK and by docker-compose.yml; uses the same KARABO_BROKER and
KARABO_DOMAIN as the server, so a server cut off from its broker is reported unhealthy too.
"""

from __future__ import annotations

import asyncio
import os
import sys

from karabo_async import KaraboError, SignalSlotable


async def ping(server_id: str) -> None:
    async with SignalSlotable(f"healthcheck-{os.getpid()}", track_topology=False) as probe:
        await probe.request(server_id, "get_devices", timeout=5)


def main() -> int:
    server_id = os.environ.get("KARABO_SERVER_ID")
    if not server_id:
        print("healthcheck: KARABO_SERVER_ID is not set", file=sys.stderr)
        return 2
    try:
        asyncio.run(ping(server_id))
    except (KaraboError, OSError, TimeoutError) as exc:
        print(f"healthcheck: {server_id} does not answer: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
