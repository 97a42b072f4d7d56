"""Command-line subcommands of the archive services: ``logger``, ``history``, ``config-at``, ``config``.

``register(subparsers)`` is called by :mod:`karabo_async.cli`; every parser sets ``run`` to an
``async def (args) -> int``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import structlog

from ..archive import ArrayRef, SavedConfiguration, open_store, redact_url
from ..archive.store import DEFAULT_MAX_POINTS
from ..hash import Hash, values_equal
from ..hub import short_hostname
from ..jsondata import json_data
from ..signalslot import SignalSlotable, pop_default_instance, push_default_instance
from ..timestamp import Timestamp
from . import api
from .recording import flat_values

log = structlog.get_logger(__name__)

DEFAULT_SERVICE_ID = "datalogger"


def register(subparsers: Any) -> None:
    logger = subparsers.add_parser("logger", help="run the data logger and configuration manager service")
    logger.add_argument("--database", required=True, help="sqlite:///path.db or postgresql://user@host/db")
    logger.add_argument("--id", dest="service_id", default=DEFAULT_SERVICE_ID, help="service (server) id")
    # extend: `--exclude a b` and `--exclude a --exclude b` both exclude a and b
    logger.add_argument(
        "--exclude",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATTERN",
        help="device-id patterns not to log",
    )
    logger.add_argument("--max-loggers", type=int, default=0, help="0: one logger per device server")
    logger.add_argument("--batch-size", type=int, default=1000)
    logger.add_argument("--flush-interval", type=float, default=0.5, help="seconds")
    logger.add_argument("--heartbeat-interval", type=float, default=5.0)
    logger.set_defaults(run=run_logger)

    history = subparsers.add_parser("history", help="print, save or plot a property's history")
    history.add_argument("device")
    history.add_argument("property")
    history.add_argument("--since", required=True, help="ISO 8601 time")
    history.add_argument("--until", default=None, help="ISO 8601 time (default: now)")
    history.add_argument("--max-points", type=int, default=DEFAULT_MAX_POINTS)
    history.add_argument("--csv", default=None, metavar="FILE", help="write CSV instead of a table")
    history.add_argument("--plot", default=None, metavar="FILE.png", help="write a PNG plot")
    history.set_defaults(run=run_history)

    config_at = subparsers.add_parser("config-at", help="a device's configuration at a past time")
    config_at.add_argument("device")
    config_at.add_argument("time", help="ISO 8601 time")
    config_at.add_argument("--diff-now", action="store_true", help="show only what differs from now")
    config_at.set_defaults(run=run_config_at)

    config = subparsers.add_parser("config", help="saved configurations")
    actions = config.add_subparsers(dest="config_command", required=True)
    save = actions.add_parser("save", help="save the current configuration of devices under a name")
    save.add_argument("name")
    save.add_argument("devices", nargs="+")
    save.add_argument("--description", default="")
    save.add_argument("--overwrite", action="store_true")
    save.set_defaults(run=run_config_save)
    listing = actions.add_parser("list", help="list saved configurations (of one device)")
    listing.add_argument("device", nargs="?", default=None)
    listing.set_defaults(run=run_config_list)
    show = actions.add_parser("show", help="show a saved configuration")
    show.add_argument("name")
    show.add_argument("device")
    diff = show.add_mutually_exclusive_group()
    diff.add_argument("--diff-now", action="store_true", help="show only what differs from now")
    diff.add_argument("--diff", metavar="OTHER", default=None, help="show only what differs from OTHER saved")
    show.set_defaults(run=run_config_show)
    apply = actions.add_parser("apply", help="apply a saved configuration")
    apply.add_argument("name")
    apply.add_argument("devices", nargs="*", help="default: every device saved under the name")
    apply.set_defaults(run=run_config_apply)


# --- the service -----------------------------------------------------------------------------------


async def run_logger(args: argparse.Namespace) -> int:
    """A server hosting the manager, its loggers and a configuration manager, until SIGTERM."""
    from ..server import DeviceServer
    from .confmanager import ConfigurationManager
    from .datalogger import DataLogger, DataLoggerManager

    store = await open_store(args.database)  # unreachable: ArchiveUnavailable now, not later
    await store.close()
    server = DeviceServer(
        args.service_id,
        classes=[DataLoggerManager, DataLogger, ConfigurationManager],
        broker=args.broker,
        domain=args.domain,
        heartbeat_interval=args.heartbeat_interval,
        entry_points=False,
    )
    await server.start()
    try:
        await server.instantiate(
            "ConfigurationManager", f"{args.service_id}-configurations", {"database": args.database}
        )
        await server.instantiate(
            "DataLoggerManager",
            f"{args.service_id}-manager",
            {
                "database": args.database,
                "exclude": list(args.exclude),
                "max_loggers": args.max_loggers,
                "batch_size": args.batch_size,
                "flush_interval": args.flush_interval,
            },
        )
    except BaseException:
        await server.stop()
        raise
    print(f"logger {args.service_id} online, archiving into {redact_url(args.database)}", flush=True)
    await server.run_forever()
    return 0


@contextlib.asynccontextmanager
async def _client(args: argparse.Namespace) -> AsyncIterator[SignalSlotable]:
    client = SignalSlotable(f"{short_hostname()}-cli-{os.getpid()}", broker=args.broker, domain=args.domain)
    await client.start()
    push_default_instance(client)
    try:
        yield client
    finally:
        pop_default_instance(client)
        await client.stop()


# --- queries ----------------------------------------------------------------------------------------


async def run_history(args: argparse.Namespace) -> int:
    async with _client(args):
        points = await api.get_property_history(
            args.device, args.property, args.since, args.until, max_points=args.max_points
        )
    if args.csv:
        write_csv(points, args.csv)
    if args.plot:
        plot_history(points, f"{args.device}.{args.property}", args.plot)
    if args.json:
        print_json(
            {
                "device": args.device,
                "property": args.property,
                "reduced": points.reduced,
                "total": points.total,
                "points": [{"time": t, "train_id": t.train_id, "value": v} for t, v in points],
            }
        )
    elif not args.csv and not args.plot:
        print(f"{'time':<32} {'train id':>10}  value")
        for stamp, value in points:
            print(f"{stamp.to_iso():<32} {stamp.train_id:>10}  {value!r}")
    note = f", reduced from {points.total}" if points.reduced else ""
    print(f"{len(points)} points{note}", file=sys.stderr)
    return 0


def write_csv(points: list[tuple[Timestamp, Any]], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["time", "train_id", "value"])
        for stamp, value in points:
            writer.writerow([stamp.to_iso(), stamp.train_id, value])


def plot_history(points: list[tuple[Timestamp, Any]], title: str, path: str) -> None:
    """A PNG of numeric history (steps: a value holds until the next change)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = [(s.time, float(v)) for s, v in points if isinstance(v, int | float)]
    if not numeric:
        raise ValueError(f"{title} has no numeric values to plot")
    fig, ax = plt.subplots(figsize=(10, 4))
    try:
        start = numeric[0][0]
        ax.step([t - start for t, _ in numeric], [v for _, v in numeric], where="post")
        ax.set_title(title)
        ax.set_xlabel(f"seconds since {Timestamp.from_float(start).to_iso()}")
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def plain(value: Any) -> Any:
    """JSON data of what the archive hands out, for ``--json``: array references by their shape and
    a Hash as flat paths, the rest as the CLI shows it."""
    if isinstance(value, ArrayRef):
        return {"shape": list(value.shape), "dtype": value.dtype, "nbytes": value.nbytes}
    if isinstance(value, Hash):
        return plain(flat_values(value))
    return json_data(value, plain)


def print_json(value: Any) -> None:
    print(json.dumps(plain(value), indent=2), flush=True)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


async def run_config_at(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        past = await api.get_configuration_from_past(args.device, args.time)
        live = await client.request(args.device, "get_configuration") if args.diff_now else None
    if live is None and args.json:
        print_json(
            {p: {"value": past[p], "timestamp": past.get_attribute(p, "timestamp")} for p in past.paths()}
        )
        return 0
    if live is None:
        for path in past.paths():
            stamp = past.get_attribute(path, "timestamp")
            print(f"{path:<32} {_show(past[path]):<40} {stamp.to_iso()}")
        return 0
    print_diff(flat_values(past), flat_values(live), "then", "now", args.json)
    return 0


def print_diff(
    old: dict[str, Any], new: dict[str, Any], old_label: str, new_label: str, as_json: bool = False
) -> int:
    """Print the paths whose values differ (JSON: ``{path: {old_label: v, new_label: v}}``, absent
    values left out); returns how many."""
    differing = [p for p in sorted(set(old) | set(new)) if not values_equal(old.get(p), new.get(p))]
    if as_json:
        print_json(
            {
                p: {label: side[p] for label, side in ((old_label, old), (new_label, new)) if p in side}
                for p in differing
            }
        )
        return len(differing)
    print(f"{'property':<32} {old_label:<40} {new_label}")
    for path in differing:
        before = _show(old[path]) if path in old else "(absent)"
        after = _show(new[path]) if path in new else "(absent)"
        print(f"{path:<32} {before:<40} {after}")
    print(f"{len(differing)} differ", file=sys.stderr)
    return len(differing)


# --- saved configurations -----------------------------------------------------------------------------


async def run_config_save(args: argparse.Namespace) -> int:
    async with _client(args):
        saved = await api.save_configuration(
            args.name, args.devices, args.description, overwrite=args.overwrite
        )
    if args.json:
        print_json({"name": args.name, "saved": saved})
    else:
        print(f"saved {args.name!r} for {', '.join(saved)}")
    return 0


async def run_config_list(args: argparse.Namespace) -> int:
    async with _client(args):
        infos = await api.list_configurations(args.device)
    if args.json:
        print_json([dataclasses.asdict(info) for info in infos])
        return 0
    for info in infos:
        print(
            f"{info.name:<24} {info.device_id:<24} {info.timestamp.to_iso():<32} {info.user:<12} {info.description}"
        )
    return 0


async def run_config_show(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        saved = await api.get_saved_configuration(args.name, args.device)
        live = await client.request(args.device, "get_configuration") if args.diff_now else None
        other = None if args.diff is None else await api.get_saved_configuration(args.diff, args.device)
    if other is not None:
        if not args.json:
            print(_header(saved))
            print(_header(other))
        print_diff(saved.config, other.config, saved.name, other.name, args.json)
        return 0
    if isinstance(live, Hash):
        if not args.json:
            print(_header(saved))
        print_diff(saved.config, flat_values(live), "saved", "now", args.json)
        return 0
    if args.json:
        print_json(dataclasses.asdict(saved))
        return 0
    print(_header(saved))
    for path, value in saved.config.items():
        print(f"{path:<32} {_show(value)}")
    return 0


def _header(saved: SavedConfiguration) -> str:
    return f"# {saved.name} for {saved.device_id}, saved {saved.timestamp.to_iso()} by {saved.user}: {saved.description}"


async def run_config_apply(args: argparse.Namespace) -> int:
    async with _client(args):
        results = await api.apply_configuration(args.name, args.devices or None)
    refused = sum(len(result.refused) for result in results.values())
    if args.json:
        print_json({device_id: dataclasses.asdict(result) for device_id, result in results.items()})
        return 1 if refused else 0
    for device_id, result in results.items():
        print(
            f"{device_id}: applied {len(result.applied)}, unchanged {len(result.unchanged)},"
            f" skipped {len(result.skipped)}, refused {len(result.refused)}"
        )
        for path, value in result.applied.items():
            print(f"  applied  {path} = {_show(value)}")
        for path, reason in result.refused.items():
            print(f"  refused  {path}: {reason}")
    return 1 if refused else 0
