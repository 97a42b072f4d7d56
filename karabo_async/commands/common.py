"""What every subcommand shares: global options anywhere on the line, value parsing, one-line errors
with exit codes, rich or JSON output, a progress note for waits, and a client instance."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import difflib
import json
import os
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import numpy as np
import structlog
import yaml
from rich.console import Console

from ..errors import (
    BrokerUnavailable,
    CommandLineError,
    ConfigurationError,
    DeviceGone,
    DeviceLocked,
    InstanceIdInUse,
    InvalidInstanceId,
    MacroError,
    NoSuchInstance,
    NoSuchSlot,
    RemoteError,
    RequestTimeout,
    SlotRefused,
)
from ..hash import Hash
from ..jsondata import json_data
from ..signalslot import SignalSlotable, generate_instance_id
from ..transport.amqp import _redact

log = structlog.get_logger(__name__)

# --- global options ---------------------------------------------------------------------------------

VALUE_OPTIONS = ("--broker", "--domain", "--timeout")
FLAG_OPTIONS = ("--json", "--debug")
# Subcommands that parse their own options (a --timeout there is theirs, not ours).
OWN_OPTIONS = frozenset({"shm"})

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_TIMEOUT = 4
EXIT_BROKER = 5
EXIT_INTERRUPTED = 130


def hoist_global_options(argv: Sequence[str]) -> list[str]:
    """Move ``--broker/--domain/--timeout/--json/--debug`` from anywhere on the line to its front, so
    that ``karabo-async get motor-1 --json --broker URL`` parses like ``karabo-async --json ... get``.

    Stops at ``--`` and, for subcommands that have options of their own (``shm``), at the subcommand.
    """
    front: list[str] = []
    rest: list[str] = []
    command: str | None = None
    i = 0
    args = list(argv)
    while i < len(args):
        arg = args[i]
        if arg == "--" or (command in OWN_OPTIONS):
            rest.extend(args[i:])
            break
        name = arg.split("=", 1)[0]
        if name in VALUE_OPTIONS:
            if "=" in arg:
                front.append(arg)
            elif i + 1 < len(args):
                front.extend(args[i : i + 2])
                i += 1
            else:
                front.append(arg)  # argparse says the value is missing
        elif arg in FLAG_OPTIONS:
            front.append(arg)
        else:
            if command is None and not arg.startswith("-"):
                command = arg
            rest.append(arg)
        i += 1
    return front + rest


# --- values from the command line -------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A command-line value as a YAML/JSON scalar or collection: ``5`` is an int, ``2.5`` a float,
    ``true`` a bool, ``[1, 2]`` a list, anything else the string itself. JSON is tried first:
    YAML 1.1 reads ``1e-05`` as a string."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if value is None and text.strip() not in ("null", "~"):
        return text
    if isinstance(value, datetime.date):  # YAML reads 2024-01-01 as a date: keep what was typed
        return text
    return value


def parse_assignments(items: Iterable[str], what: str = "argument") -> dict[str, Any]:
    """``["steps=3", "stop=5"]`` -> ``{"steps": 3, "stop": 5}``; a malformed item is a CommandLineError."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise CommandLineError(f"{what} {item!r} is not key=value (e.g. steps=3)")
        result[key.strip()] = parse_value(text)
    return result


def suggest(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a close match exists, else a short list of what there is."""
    options = sorted(choices)
    close = difflib.get_close_matches(name, options, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if options and len(options) <= 12:
        return f" (known: {', '.join(options)})"
    return ""


# --- errors -----------------------------------------------------------------------------------------


def error_line(exc: BaseException, broker: str | None = None) -> tuple[int, str]:
    """The exit code and one line saying what went wrong and, where it helps, what to do."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, BrokerUnavailable):
        where = f" at {_redact(broker)}" if broker else ""
        return EXIT_BROKER, (
            f"broker unavailable{where}: {text} (is RabbitMQ running? try `make broker` or pass --broker URL)"
        )
    if isinstance(exc, NoSuchInstance | DeviceGone):
        return EXIT_NOT_FOUND, f"{text} (see `karabo-async topology` for what is running)"
    if isinstance(exc, RequestTimeout | TimeoutError):
        return EXIT_TIMEOUT, f"timed out: {text} (raise --timeout if the device is just slow)"
    if isinstance(exc, NoSuchSlot):
        return EXIT_USAGE, f"{text} (see `karabo-async schema ID` for its slots)"
    if isinstance(exc, ConfigurationError | CommandLineError | InvalidInstanceId | MacroError):
        return EXIT_USAGE, text
    if isinstance(exc, SlotRefused | DeviceLocked | InstanceIdInUse):
        return EXIT_ERROR, text
    if isinstance(exc, RemoteError):
        return EXIT_ERROR, text
    return EXIT_ERROR, f"{type(exc).__name__}: {text}"


# --- output -----------------------------------------------------------------------------------------


def console() -> Console:
    """Tables go to stdout; width from the terminal, or wide enough for logs when piped."""
    return Console(width=None if sys.stdout.isatty() else 160, highlight=False)


def err_console() -> Console:
    return Console(stderr=True, highlight=False)


def jsonable(value: Any) -> Any:
    """Plain JSON data of anything the framework returns (Hash, Timestamp, arrays, enums, bytes)."""
    if isinstance(value, Hash):
        return {k: jsonable(v) for k, v in value.items()}
    return json_data(value, jsonable)


def print_json(value: Any) -> None:
    print(json.dumps(jsonable(value), indent=2, sort_keys=False), flush=True)


def short(value: Any, width: int = 60) -> str:
    """A value in one line of at most ``width`` characters."""
    if isinstance(value, np.ndarray):
        text = f"array{list(value.shape)} {value.dtype}"
    else:
        try:
            text = json.dumps(jsonable(value), separators=(",", ":"))
        except (TypeError, ValueError):
            text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@contextlib.asynccontextmanager
async def progress(text: str, delay: float = 1.0) -> AsyncIterator[None]:
    """A spinner on stderr when the wait lasts longer than ``delay`` (never for quick answers, never
    when stderr is not a terminal)."""
    err = err_console()
    if not err.is_terminal:
        yield
        return
    status = err.status(text)

    async def show() -> None:
        await asyncio.sleep(delay)
        status.start()

    task = asyncio.get_running_loop().create_task(show())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        status.stop()


# --- the command's own instance ---------------------------------------------------------------------


def request_timeout(args: Any, default: float = 10.0) -> float:
    value = getattr(args, "timeout", None)
    return float(value) if value is not None else default


@contextlib.asynccontextmanager
async def cli_client(args: Any) -> AsyncIterator[SignalSlotable]:
    """A short-lived client instance on the broker for one command (topology tracked, so the
    command knows what runs)."""
    client = SignalSlotable(
        generate_instance_id("client", "cli"),
        broker=args.broker,
        domain=args.domain,
        request_timeout=request_timeout(args),
        info={"purpose": "command line", "pid": os.getpid()},
    )
    async with progress("connecting to the broker"):
        await client.start()
    try:
        yield client
    finally:
        await client.stop()
