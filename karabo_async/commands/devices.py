"""Inspect and command instances from a terminal: topology, get, set, call, instantiate, kill, schema.

Input is checked against the remote schema before anything is sent, so a typo or a wrong type is a
one-line error naming the property and what it accepts, not a remote traceback.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from ..errors import CommandLineError, ConfigurationError, NoSuchInstance
from ..hash import Hash
from ..schema import Schema
from ..signalslot import SignalSlotable
from .common import (
    cli_client,
    console,
    parse_assignments,
    parse_value,
    print_json,
    progress,
    request_timeout,
    short,
    suggest,
)

DEVICE_TYPES = ("device", "macro")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("topology", help="list the instances of the domain")
    p.add_argument("--type", dest="instance_type", default=None, help="only instances of this type")
    p.set_defaults(run=topology)

    p = sub.add_parser("get", help="read properties of a device (all when none are named)")
    p.add_argument("device_id", metavar="ID")
    p.add_argument("properties", nargs="*", metavar="PROPERTY")
    p.set_defaults(run=get)

    p = sub.add_parser("set", help="change properties of a device: set ID key=value...")
    p.add_argument("device_id", metavar="ID")
    p.add_argument("assignments", nargs="+", metavar="key=value")
    p.set_defaults(run=set_)

    p = sub.add_parser("call", help="call a slot: call ID SLOT [ARGS...]")
    p.add_argument("device_id", metavar="ID")
    p.add_argument("slot", metavar="SLOT")
    p.add_argument("arguments", nargs="*", metavar="ARG")
    p.set_defaults(run=call)

    p = sub.add_parser("instantiate", help="start a device: instantiate SERVER CLASS ID [key=value...]")
    p.add_argument("server_id", metavar="SERVER")
    p.add_argument("class_id", metavar="CLASS")
    p.add_argument("device_id", metavar="ID")
    p.add_argument("assignments", nargs="*", metavar="key=value")
    p.set_defaults(run=instantiate)

    p = sub.add_parser("kill", help="shut down a device or a server")
    p.add_argument("instance_id", metavar="ID")
    p.set_defaults(run=kill)

    p = sub.add_parser("schema", help="properties and slots of a device (ID) or a class (SERVER:CLASS)")
    p.add_argument("target", metavar="ID|SERVER:CLASS")
    p.set_defaults(run=schema)


# --- helpers ----------------------------------------------------------------------------------------


def _info(client: SignalSlotable, instance_id: str) -> dict[str, Any]:
    info = client.topology.get(instance_id)
    if info is None:
        raise NoSuchInstance(instance_id)
    return info


def _require_device(client: SignalSlotable, device_id: str, command: str) -> None:
    kind = _info(client, device_id).get("type", "")
    if kind not in DEVICE_TYPES:
        raise CommandLineError(f"{device_id!r} is a {kind}, not a device: `{command}` works on devices")


async def _device_schema(client: SignalSlotable, device_id: str) -> dict[str, Any]:
    doc = await client.request(device_id, "get_schema")
    if not isinstance(doc, dict):
        raise CommandLineError(f"{device_id!r} sent no schema document")
    return doc


def _check_properties(device_id: str, names: list[str], properties: dict[str, Any]) -> None:
    for name in names:
        if name not in properties:
            raise CommandLineError(f"{device_id} has no property {name!r}{suggest(name, properties)}")


# --- commands ---------------------------------------------------------------------------------------


async def topology(args: argparse.Namespace) -> int:
    async with cli_client(args) as client:
        instances = {
            iid: info
            for iid, info in sorted(client.topology.items())
            if iid != client.instance_id
            and (args.instance_type is None or info.get("type") == args.instance_type)
        }
    if args.json:
        print_json(instances)
        return 0
    console().print(topology_table(instances, client.domain))
    return 0


def topology_table(instances: dict[str, dict[str, Any]], domain: str) -> Table:
    table = Table(title=f"domain {domain}: {len(instances)} instances")
    for column in ("id", "type", "class", "server", "host", "status"):
        table.add_column(column)
    for iid, info in sorted(instances.items()):
        status = str(info.get("status", ""))
        style = "red" if status in ("error", "alarm") else "yellow" if status in ("warn", "unknown") else ""
        table.add_row(
            iid,
            str(info.get("type", "")),
            str(info.get("class", "")),
            str(info.get("server", "")),
            f"{info.get('host', '')}:{info.get('pid', '')}",
            f"[{style}]{status}[/]" if style else status,
        )
    return table


async def get(args: argparse.Namespace) -> int:
    async with cli_client(args) as client:
        _require_device(client, args.device_id, "get")
        if args.properties:
            doc = await _device_schema(client, args.device_id)
            _check_properties(args.device_id, args.properties, doc["properties"])
        config = await client.request(args.device_id, "get_configuration")
    if not isinstance(config, Hash):
        raise CommandLineError(f"{args.device_id!r} sent no configuration")
    wanted = args.properties
    paths = [p for p in config.paths() if not wanted or any(p == w or p.startswith(w + ".") for w in wanted)]
    if args.json:
        print_json({p: config[p] for p in paths})
        return 0
    if len(wanted) == 1 and paths == wanted:
        print(short(config[paths[0]], width=10_000))
        return 0
    table = Table(title=args.device_id)
    for column in ("property", "value", "timestamp", "alarm"):
        table.add_column(column)
    for path in paths:
        attrs = config.get_attributes(path)
        stamp = attrs.get("timestamp")
        table.add_row(path, short(config[path]), str(stamp) if stamp else "", str(attrs.get("alarm", "")))
    console().print(table)
    return 0


async def set_(args: argparse.Namespace) -> int:
    changes = parse_assignments(args.assignments)
    async with cli_client(args) as client:
        _require_device(client, args.device_id, "set")
        schema = Schema.from_document(await _device_schema(client, args.device_id))
        _check_properties(args.device_id, list(changes), schema.properties)
        for path, value in changes.items():
            spec = schema.properties[path]
            if spec.readonly:
                raise CommandLineError(f"{args.device_id}.{path} is readonly: only the device sets it")
            if spec.init_only:
                raise CommandLineError(
                    f"{args.device_id}.{path} is init-only: give it to `instantiate`, it cannot change later"
                )
            try:
                schema.validate_value(path, value)
            except ConfigurationError as exc:
                reasons = "; ".join(reason for _, reason in exc.errors)
                raise CommandLineError(
                    f"{args.device_id}.{path}: {value!r} is not a valid {spec.type_name}: {reasons}"
                ) from None
        async with progress(f"setting {', '.join(changes)} on {args.device_id}"):
            applied = await client.request(args.device_id, "set", changes)
    if args.json:
        print_json(applied)
    else:
        for path, value in (applied or {}).items():
            print(f"{args.device_id}.{path} = {short(value, 10_000)}")
    return 0


async def call(args: argparse.Namespace) -> int:
    arguments = [parse_value(a) for a in args.arguments]
    async with cli_client(args) as client:
        _info(client, args.device_id)
        slots = await client.request(args.device_id, "get_slots")
        if args.slot not in slots:
            raise CommandLineError(f"{args.device_id} has no slot {args.slot!r}{suggest(args.slot, slots)}")
        async with progress(f"waiting for {args.device_id}.{args.slot}"):
            result = await client.request(args.device_id, args.slot, *arguments)
    if args.json:
        print_json(result)
    elif result is not None:
        print(short(result, 10_000))
    return 0


async def instantiate(args: argparse.Namespace) -> int:
    config = parse_assignments(args.assignments)
    async with cli_client(args) as client:
        kind = _info(client, args.server_id).get("type")
        if kind != "server":
            raise CommandLineError(f"{args.server_id!r} is a {kind}, not a device server")
        classes = await client.request(args.server_id, "get_classes")
        if args.class_id not in classes:
            raise CommandLineError(
                f"server {args.server_id} has no class {args.class_id!r}{suggest(args.class_id, classes)}"
            )
        doc = await client.request(args.server_id, "get_class_schema", args.class_id)
        Schema.from_document(doc).validate_initial(config)
        async with progress(f"starting {args.device_id} on {args.server_id}"):
            device_id = await client.request(
                args.server_id,
                "instantiate",
                args.class_id,
                args.device_id,
                config,
                timeout=request_timeout(args, 30.0),
            )
    if args.json:
        print_json({"device_id": device_id})
    else:
        print(f"{device_id} started on {args.server_id}")
    return 0


async def kill(args: argparse.Namespace) -> int:
    async with cli_client(args) as client:
        kind = _info(client, args.instance_id).get("type")
        if kind not in ("server", *DEVICE_TYPES):
            raise CommandLineError(
                f"{args.instance_id!r} is a {kind}: only devices and servers can be killed"
            )
        seconds = request_timeout(args, 30.0)
        async with progress(f"shutting down {args.instance_id}"):
            await client.request(args.instance_id, "shutdown", timeout=seconds)
            await client.topology.wait_for(args.instance_id, timeout=seconds, gone=True)
    if args.json:
        print_json({"gone": args.instance_id})
    else:
        print(f"{args.instance_id} shut down")
    return 0


async def schema(args: argparse.Namespace) -> int:
    server, sep, class_id = args.target.partition(":")
    async with cli_client(args) as client:
        if sep:
            if server not in client.topology:
                raise NoSuchInstance(server)
            classes = await client.request(server, "get_classes")
            if class_id not in classes:
                raise CommandLineError(
                    f"server {server} has no class {class_id!r}{suggest(class_id, classes)}"
                )
            doc = await client.request(server, "get_class_schema", class_id)
        else:
            _require_device(client, args.target, "schema")
            doc = await _device_schema(client, args.target)
    if args.json:
        print_json(doc)
        return 0
    print_schema(doc, args.target)
    return 0


def print_schema(doc: dict[str, Any], title: str) -> None:
    out = console()
    if doc.get("description"):
        out.print(f"[bold]{doc.get('class_id', '')}[/]: {doc['description']}")
    table = Table(title=f"{title}: properties")
    for column in ("property", "type", "default", "access", "unit", "description"):
        table.add_column(column)
    for path, entry in doc.get("properties", {}).items():
        table.add_row(
            path,
            str(entry.get("type", "")),
            short(entry["default"], 24) if "default" in entry else "",
            str(entry.get("access_mode", "")),
            str(entry.get("unit", "") or ""),
            str(entry.get("description", "") or ""),
        )
    out.print(table)
    slots = doc.get("slots", {})
    if slots:
        table = Table(title=f"{title}: slots")
        for column in ("slot", "allowed states", "description"):
            table.add_column(column)
        for name, entry in slots.items():
            states = entry.get("allowed_states") or []
            table.add_row(name, ", ".join(map(str, states)), str(entry.get("description", "") or ""))
        out.print(table)
