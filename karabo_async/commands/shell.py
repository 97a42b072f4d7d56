"""``karabo-async shell``: IPython with the client API (see :mod:`karabo_async.shell`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("shell", help="IPython with the client API imported and top-level await")
    p.set_defaults(run_sync=run)


def run(args: argparse.Namespace) -> int:
    """Blocking: IPython runs its own prompt loop; the framework's loop runs in a thread."""
    from ..shell import run_shell

    return run_shell(args.broker, args.domain)
