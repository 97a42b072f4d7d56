"""docker-compose.yml: it validates, and every device-server service's command runs here as a plain
process against the test broker, with the devices of its init file answering.

There is no container engine in the default test run; ``make container-smoke`` runs the image itself.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from devices_support import PYTHON, REPO_ROOT, running

from karabo_async import SignalSlotable, State

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def server_services() -> dict[str, dict[str, Any]]:
    return {
        name: svc for name, svc in compose()["services"].items() if svc.get("command", [None])[0] == "server"
    }


def docker_compose() -> str:
    tool = shutil.which("docker-compose")
    assert tool is not None, (
        "docker-compose is missing: `make test` installs it (Debian package docker-compose)"
    )
    return tool


def test_compose_file_validates(tmp_path: Path) -> None:
    result = subprocess.run(
        [docker_compose(), "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    broken = tmp_path / "docker-compose.yml"  # the check is real: a broken file fails it
    broken.write_text(COMPOSE_FILE.read_text().replace("restart: unless-stopped", "restart: [sometimes]", 1))
    result = subprocess.run(
        [docker_compose(), "-f", str(broken), "config", "-q"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "restart" in result.stderr


def test_services_have_what_operations_need() -> None:
    services = compose()["services"]
    broker = services["broker"]
    assert "15672:15672" in broker["ports"] and "5672:5672" in broker["ports"]
    mounted = " ".join(broker["volumes"])
    for name in ("definitions.json", "rabbitmq.conf", "enabled_plugins"):
        assert f"./broker/{name}" in mounted and (REPO_ROOT / "broker" / name).exists()
    servers = server_services()
    assert len(servers) >= 2
    for name, svc in {"broker": broker, **servers}.items():
        assert svc.get("restart") == "unless-stopped", name
        assert svc.get("healthcheck", {}).get("test"), name
    for name, svc in servers.items():
        assert svc["environment"]["KARABO_SERVER_ID"] == svc["command"][svc["command"].index("--id") + 1], (
            name
        )
        assert svc["depends_on"]["broker"]["condition"] == "service_healthy"


def local_command(svc: dict[str, Any], broker: str, domain: str) -> tuple[list[str], list[str]]:
    """The service's command as a plain process here: container paths mapped back through its volumes;
    also the ids of the devices its init file starts."""
    mounts = {}
    for volume in svc.get("volumes", []):
        host, container = volume.split(":")[:2]
        mounts[container] = (REPO_ROOT / host).resolve()

    def here(arg: str) -> str:
        for container, host in mounts.items():
            if arg == container or arg.startswith(container + "/"):
                return str(host) + arg[len(container) :]
        return arg

    args = [here(a) for a in svc["command"]]
    devices: list[str] = []
    if "--init" in args:
        init = yaml.safe_load(Path(args[args.index("--init") + 1]).read_text())
        devices = [entry["id"] for entry in init["devices"]]
    return [PYTHON, "-m", "karabo_async", "--broker", broker, "--domain", domain, *args], devices


@pytest.mark.parametrize("service", sorted(server_services()))
async def test_service_command_runs_as_a_plain_process(service: str, broker_url: str, domain: str) -> None:
    svc = server_services()[service]
    cmd, devices = local_command(svc, broker_url, domain)
    assert devices, f"{service} starts no devices"
    server_id = svc["environment"]["KARABO_SERVER_ID"]
    env = {"KARABO_SERVER_ID": server_id, "KARABO_BROKER": broker_url, "KARABO_DOMAIN": domain}
    with running(cmd, env=env) as proc:
        async with SignalSlotable("compose-check", broker=broker_url, domain=domain) as client:
            for instance in (server_id, *devices):
                await client.topology.wait_for(instance, timeout=30)
            for device in devices:
                state = await client.request(device, "get", "state", timeout=5)
                assert State(state) not in (State.ERROR, State.UNKNOWN), (device, state)
        assert await healthcheck(env) == 0
    assert proc.returncode == 0
    assert await healthcheck(env) == 1  # the server is gone: unhealthy


async def healthcheck(env: dict[str, str]) -> int:
    """docker/healthcheck.py, as the container runs it."""
    check = await asyncio.create_subprocess_exec(
        PYTHON, str(REPO_ROOT / "docker" / "healthcheck.py"), env={**os.environ, **env}
    )
    return await asyncio.wait_for(check.wait(), 30)
