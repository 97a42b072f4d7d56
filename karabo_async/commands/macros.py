"""``karabo-async macro``: run a macro file from the command line, list the macros of files."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import structlog
from rich.table import Table

from ..errors import BrokerUnavailable, CommandLineError, ConfigurationError, MacroError
from ..hub import Hub
from ..macro import Macro, load_macro_file, pick_macro, real_stdout, run_macro
from .common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    console,
    parse_assignments,
    print_json,
    request_timeout,
    short,
)

log = structlog.get_logger(__name__)

EXIT_CODES = {"finished": EXIT_OK, "failed": EXIT_ERROR, "cancelled": EXIT_INTERRUPTED}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    macro = sub.add_parser("macro", help="run and list macros")
    macro_sub = macro.add_subparsers(dest="macro_command", required=True, metavar="ACTION")

    p = macro_sub.add_parser("run", help="run a macro file: macro run FILE [CLASS] [key=value...]")
    p.add_argument("file", metavar="FILE")
    p.add_argument("words", nargs="*", metavar="[CLASS] key=value")
    p.set_defaults(run=run)

    p = macro_sub.add_parser("list", help="the macros of files or folders, with their parameters")
    p.add_argument("paths", nargs="*", default=["macros"], metavar="FILE|DIR")
    p.set_defaults(run=list_)


BROKER_GRACE = 10.0
"""Seconds a run survives without its broker link (``--timeout`` overrides): the transport reconnects
by itself, so a blip is harmless, but a command must not hang on a broker that stays away."""


class _LinkGuard:
    """Cancels a command's run when the broker link stays down longer than ``grace`` seconds."""

    def __init__(self, task: asyncio.Task[Macro], grace: float) -> None:
        self.task = task
        self.grace = grace
        self.gave_up = False
        self.reason = ""
        self._timer: asyncio.TimerHandle | None = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.reason = str(exc) if exc else "connection closed"
        if self._timer is None and not self.task.done():
            self._timer = asyncio.get_running_loop().call_later(self.grace, self._give_up)

    def connection_restored(self) -> None:
        self.close()

    def queue_lost(self, queue: str, exc: BaseException) -> None:
        """The macro's own instance reports a lost queue; nothing to add here."""

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _give_up(self) -> None:
        self._timer = None
        if not self.task.done():
            log.warning("broker link still down; cancelling the macro run", grace=self.grace)
            self.gave_up = True
            self.task.cancel()


def split_words(words: list[str]) -> tuple[str | None, dict[str, object]]:
    """``[CLASS] key=value...``: a first word without ``=`` names the class."""
    class_name = None
    if words and "=" not in words[0]:
        class_name, words = words[0], words[1:]
    return class_name, parse_assignments(words, "parameter")


def load(path: str, class_name: str | None) -> type[Macro]:
    return pick_macro(load_macro_file(path), class_name, path)


async def run(args: argparse.Namespace) -> int:
    class_name, params = split_words(args.words)
    cls = load(args.file, class_name)
    out = sys.stderr if args.json else real_stdout()  # with --json, stdout carries only the report

    def echo(text: str) -> None:
        out.write(text)
        out.flush()

    device_id = cls.new_id()
    hub = Hub(device_id, broker=args.broker, domain=args.domain)
    try:
        cls(dict(params), device_id=device_id, hub=hub)  # bad parameters: refused before connecting
        await hub.start()
        task = asyncio.get_running_loop().create_task(
            run_macro(cls, params, hub=hub, device_id=device_id, on_output=echo)
        )
        guard = _LinkGuard(task, request_timeout(args, BROKER_GRACE))
        hub.transport.add_listener(guard)
        try:
            macro = await task
            if macro.outcome == "failed" and guard.reason:  # it failed because its broker link broke
                raise BrokerUnavailable(
                    f"connection to the broker lost while {cls.__name__} ran ({guard.reason}): {macro.status}"
                )
        except (asyncio.CancelledError, Exception) as exc:
            # Cancelled by the guard, or failing while the link is down: the link is the cause,
            # whatever exception the library under us happened to raise while it broke.
            if guard.gave_up:
                raise BrokerUnavailable(
                    f"connection to the broker lost while {cls.__name__} ran ({guard.reason}); "
                    f"the run was cancelled after {guard.grace:g} s without it"
                ) from None
            if guard.reason and not isinstance(exc, asyncio.CancelledError | MacroError | BrokerUnavailable):
                raise BrokerUnavailable(
                    f"connection to the broker lost while {cls.__name__} ran ({guard.reason}): "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            raise
        finally:
            guard.close()
            hub.transport.remove_listener(guard)
    except ConfigurationError as exc:
        reasons = "; ".join(f"{key}: {reason}" for key, reason in exc.errors)
        raise CommandLineError(f"invalid parameters for {cls.__name__}: {reasons}") from None
    finally:
        await hub.stop()
    if args.json:
        print_json({"id": macro.device_id, "outcome": macro.outcome, "status": macro.status})
    else:
        console().print(f"{macro.device_id}: {macro.status}", highlight=False)
    return EXIT_CODES.get(macro.outcome, EXIT_ERROR)


def collect(paths: list[str]) -> tuple[dict[str, tuple[str, type[Macro]]], list[str]]:
    """The macros of files and folders by name, and the files that failed to load."""
    found: dict[str, tuple[str, type[Macro]]] = {}
    errors: list[str] = []
    for given in paths:
        folder = Path(given)
        files = sorted(folder.glob("*.py")) if folder.is_dir() else [folder]
        for file in files:
            try:
                for name, cls in load_macro_file(file).items():
                    found[name] = (str(file), cls)
            except MacroError as exc:
                errors.append(str(exc))
    return found, errors


async def list_(args: argparse.Namespace) -> int:
    found, errors = collect(args.paths)
    if args.json:
        print_json(
            {name: {"file": f, "schema": cls.parameter_document()} for name, (f, cls) in found.items()}
        )
    else:
        table = Table(title="macros")
        for column in ("macro", "file", "parameters", "description"):
            table.add_column(column)
        for name, (origin, cls) in sorted(found.items()):
            params = ", ".join(
                f"{p}={short(spec.default, 16)}" if spec.has_default else f"{p} (required)"
                for p, spec in cls.parameters().items()
            )
            doc = (cls.__doc__ or "").strip()
            table.add_row(name, origin, params, doc.splitlines()[0] if doc else "")
        console().print(table)
    for line in errors:
        print(f"karabo-async: warning: {line}")
    return EXIT_OK if not errors else EXIT_ERROR
