"""The configuration manager end to end: saving, listing, showing and applying named configurations of
devices running in another process, through the logger service's ConfigurationManager."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_datalogger import LoggerSetup

from karabo_async import (
    ArchiveError,
    ConfigurationExists,
    Timestamp,
    UnknownConfiguration,
    apply_configuration,
    get_saved_configuration,
    list_configurations,
    save_configuration,
)
from karabo_async.errors import ArchiveTypeError, ArchiveValueError


@pytest.fixture
async def setup(broker_url: str, domain: str, tmp_path: Path) -> AsyncIterator[LoggerSetup]:
    async with LoggerSetup(broker_url, domain, tmp_path) as s:
        await s.start_server("srvA", ["sensor-1", "sensor-2"])
        await s.start_logger()
        yield s


async def test_save_list_show_apply(setup: LoggerSetup) -> None:
    c = setup.client
    await c.request("sensor-1", "set", {"value": 12.5, "settings": {"gain": 3.0}, "mode": "manual"})
    before = Timestamp.now()
    saved = await save_configuration("aligned", ["sensor-1", "sensor-2"], "after alignment")
    assert saved == ["sensor-1", "sensor-2"]

    infos = await list_configurations("sensor-1")
    assert [(i.name, i.device_id, i.description) for i in infos] == [
        ("aligned", "sensor-1", "after alignment")
    ]
    assert infos[0].user and infos[0].timestamp >= before
    assert {i.device_id for i in await list_configurations()} == {"sensor-1", "sensor-2"}
    one = await get_saved_configuration("aligned", "sensor-1")
    assert (
        one.config["value"] == 12.5 and one.config["settings.gain"] == 3.0 and one.config["mode"] == "manual"
    )

    with pytest.raises(ConfigurationExists, match="aligned"):
        await save_configuration("aligned", ["sensor-2"])
    await save_configuration("aligned", ["sensor-2"], "again", overwrite=True)

    # drift, then restore: only what differs is sent, readonly values are skipped
    await c.request("sensor-1", "set", {"value": 99.0, "settings": {"gain": 50.0}})
    results = await apply_configuration("aligned", ["sensor-1"])
    r = results["sensor-1"]
    assert r.ok and r.applied == {"value": 12.5, "settings.gain": 3.0}
    assert "mode" in r.unchanged and "reading" in r.skipped and "device_id" in r.skipped
    live = await c.request("sensor-1", "get_configuration")
    assert live["value"] == 12.5 and live["settings.gain"] == 3.0

    # refused by the device's own validation, atomically: nothing of that device is applied
    await c.request("sensor-1", "set", {"value": 1.0, "mode": "auto"})
    await c.request("sensor-1", "go_off")
    results = await apply_configuration("aligned")  # every device saved under the name
    assert set(results) == {"sensor-1", "sensor-2"}
    r = results["sensor-1"]
    assert not r.ok and "not allowed in state OFF" in r.refused["mode"] and "value" in r.refused
    assert r.applied == {}
    live = await c.request("sensor-1", "get_configuration")
    assert live["value"] == 1.0 and live["mode"] == "auto"
    assert results["sensor-2"].ok

    # the command line sees the same
    listed = setup.cli("config", "list", "sensor-1").stdout
    assert "aligned" in listed and "after alignment" in listed
    shown = setup.cli("config", "show", "aligned", "sensor-1", "--diff-now").stdout
    assert "value" in shown and "12.5" in shown
    applied = setup.cli("config", "apply", "aligned", "sensor-2", check=False)
    assert applied.returncode == 0 and "sensor-2: applied 0" in applied.stdout


async def test_bad_requests_name_the_problem(setup: LoggerSetup) -> None:
    with pytest.raises(UnknownConfiguration, match="nothing-saved"):
        await get_saved_configuration("nothing-saved", "sensor-1")
    with pytest.raises(ArchiveValueError, match="nothing-saved"):
        await apply_configuration("nothing-saved")
    with pytest.raises(ArchiveTypeError, match="device_ids"):
        await save_configuration("x", 42)  # type: ignore[arg-type]
    with pytest.raises(ArchiveValueError, match="at least one"):
        await save_configuration("x", [])
    with pytest.raises(ArchiveTypeError, match="description"):
        await save_configuration("x", ["sensor-1"], description=3)  # type: ignore[arg-type]
    with pytest.raises(ArchiveError, match="twice"):
        await save_configuration("x", ["sensor-1", "sensor-1"])
    # a device that does not exist: nothing is saved for the others either
    with pytest.raises(Exception, match="no-such-device"):
        await save_configuration("x", ["sensor-1", "no-such-device"])
    assert await list_configurations("sensor-1") == []
