"""``karabo-async macro``: run a macro file from the command line, list the macros of files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.table import Table

from ..errors import CommandLineError, ConfigurationError, MacroError
from ..macro import Macro, load_macro_file, pick_macro, real_stdout, run_macro
from .common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, console, parse_assignments, print_json, short

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

    try:
        macro = await run_macro(cls, params, broker=args.broker, domain=args.domain, on_output=echo)
    except ConfigurationError as exc:
        reasons = "; ".join(f"{key}: {reason}" for key, reason in exc.errors)
        raise CommandLineError(f"invalid parameters for {cls.__name__}: {reasons}") from None
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
