"""``make container-smoke``: run the device-server image with podman on the host network against the
local RabbitMQ and check from outside that its devices answer; then stop it and check it left cleanly.

    python docker/smoke.py [--image IMAGE] [--broker URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import uuid

import yaml

from karabo_async import SignalSlotable

HERE = os.path.dirname(os.path.abspath(__file__))
INIT = "devices/init/motion.yaml"
PODMAN_LIMITS = ["--ulimit", "nofile=1024:4096", "--ulimit", "nproc=1024:1024"]  # what podman needs here
# No systemd here to run health-check timers: the smoke test runs the image's check once itself.
NO_HEALTH_TIMER = ["--health-interval", "disable"]


async def check(broker: str, domain: str, server_id: str, devices: list[str]) -> None:
    async with SignalSlotable(f"smoke-{os.getpid()}", broker=broker, domain=domain) as client:
        for instance in (server_id, *devices):
            await client.topology.wait_for(instance, timeout=60)
            print(f"  {instance}: online ({client.topology[instance]['host']})")
        for device in devices:
            state = await client.request(device, "get", "state", timeout=10)
            print(f"  {device}: state {state}")
            if state in ("ERROR", "UNKNOWN"):
                raise SystemExit(f"{device} is in state {state}")
        await client.request("motor-1", "set", {"target_position": 1.0}, timeout=10)
        await client.request("motor-1", "move", timeout=10)
        print("  motor-1: move accepted")
        health = await asyncio.create_subprocess_exec("podman", "healthcheck", "run", server_id)
        if await health.wait() != 0:
            raise SystemExit(f"the image's health check calls {server_id} unhealthy")
        print(f"  {server_id}: healthy (the image's HEALTHCHECK)")
        gone = asyncio.ensure_future(client.topology.wait_for(server_id, timeout=30, gone=True))
        stop = await asyncio.create_subprocess_exec("podman", "stop", "--time", "15", server_id)
        if await stop.wait() != 0:
            raise SystemExit(f"podman stop {server_id} failed")
        await gone
        print(f"  {server_id}: stopped, reported gone")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", default="localhost/karabo-async/device-server:latest")
    parser.add_argument(
        "--broker", default=os.environ.get("KARABO_BROKER", "amqp://guest:guest@127.0.0.1:5672/")
    )
    args = parser.parse_args()
    domain = f"smoke_{uuid.uuid4().hex[:8]}"
    server_id = f"smoke-server-{uuid.uuid4().hex[:6]}"
    with open(os.path.join(HERE, "..", INIT)) as f:
        devices = [entry["id"] for entry in yaml.safe_load(f)["devices"]]
    cmd = [
        "podman",
        "run",
        "--rm",
        "-d",
        "--name",
        server_id,
        "--network",
        "host",
        *PODMAN_LIMITS,
        *NO_HEALTH_TIMER,
    ]
    cmd += [
        "-e",
        f"KARABO_BROKER={args.broker}",
        "-e",
        f"KARABO_DOMAIN={domain}",
        "-e",
        f"KARABO_SERVER_ID={server_id}",
    ]
    cmd += [
        args.image,
        "server",
        "--id",
        server_id,
        "--plugin-dir",
        "/opt/karabo/devices",
        "--init",
        f"/opt/karabo/{INIT}",
    ]
    print("$", " ".join(cmd))
    subprocess.run(cmd, check=True)
    try:
        asyncio.run(check(args.broker, domain, server_id, devices))
    except BaseException:
        logs = subprocess.run(["podman", "logs", server_id], capture_output=True, text=True)
        print(logs.stdout, logs.stderr, file=sys.stderr)
        raise
    finally:
        subprocess.run(["podman", "rm", "-f", server_id], capture_output=True)
    print("container smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
