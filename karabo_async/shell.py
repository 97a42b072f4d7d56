"""``karabo-async shell``: IPython with the client API imported and top-level ``await``.

The framework's event loop runs in a thread of its own, all the time, so heartbeats go out and proxies
stay up to date while the user types; IPython runs each cell that awaits on that loop (its
``loop_runner``). Tab completion adds device ids inside the client functions' string arguments
(``connect_device("mo<TAB>``) and the properties and slots of proxies (``motor.pos<TAB>``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, TypeVar

import structlog

from . import client as client_api
from .client import Client, connect
from .proxy import NodeProxy, Proxy

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEVICE_FUNCTIONS = (
    "connect_device",
    "get_device",
    "get_schema",
    "get_configuration",
    "execute",
    "shutdown",
    "lock",
    "set_wait",
    "set_no_wait",
)
_STRING_ARGUMENT = re.compile(r"\b(?P<function>\w+)\(\s*(?P<quote>['\"])(?P<prefix>[\w\-/]*)$")
_ATTRIBUTE = re.compile(r"(?P<owner>[A-Za-z_][\w.]*)\.(?P<prefix>\w*)$")


class ShellSession:
    """The framework's loop in a background thread, with a client connected for the shell."""

    def __init__(self, broker: str | None = None, domain: str | None = None) -> None:
        self.broker = broker
        self.domain = domain
        self.loop = asyncio.new_event_loop()
        self.client: Client | None = None
        self._thread = threading.Thread(target=self._serve, name="karabo-loop", daemon=True)
        self._connection: Any = None

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> Client:
        self._thread.start()
        self._connection = connect(self.broker, self.domain)
        self.client = self.run(self._connection.__aenter__())
        return self.client

    def stop(self) -> None:
        if self._connection is not None:
            try:
                self.run(self._connection.__aexit__(None, None, None), timeout=10)
            except (concurrent.futures.TimeoutError, OSError) as exc:
                log.warning("shell client did not stop cleanly", error=str(exc))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the framework's loop and wait for it (IPython's ``loop_runner``).
        Ctrl-C cancels it there."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except KeyboardInterrupt:
            future.cancel()
            raise

    def device_ids(self) -> list[str]:
        if self.client is None:
            return []
        return sorted(
            i for i, info in self.client.topology.items() if info.get("type") in ("device", "macro")
        )


def namespace(session: ShellSession) -> dict[str, Any]:
    """What the shell starts with: the whole public API, ``ka`` and the shell's ``client``."""
    import karabo_async as ka

    names: dict[str, Any] = {name: getattr(ka, name) for name in dir(ka) if not name.startswith("_")}
    names.update(ka=ka, client=session.client, session=session)
    names.update({name: getattr(client_api, name) for name in DEVICE_FUNCTIONS if hasattr(client_api, name)})
    return names


def device_id_completions(text_until_cursor: str, device_ids: Iterable[str]) -> list[str]:
    """Device ids for the first string argument of a client function: ``connect_device("mo``."""
    match = _STRING_ARGUMENT.search(text_until_cursor)
    if match is None or match["function"] not in DEVICE_FUNCTIONS:
        return []
    return sorted(i for i in device_ids if i.startswith(match["prefix"]))


def attribute_completions(text_until_cursor: str, names: Mapping[str, Any]) -> list[str]:
    """``motor.pos`` -> ``motor.position``: properties, nodes and slots of proxies (from the remote
    schema, also before the first completion of that proxy was ever asked for)."""
    match = _ATTRIBUTE.search(text_until_cursor)
    if match is None:
        return []
    head, *rest = match["owner"].split(".")
    obj = names.get(head)
    for part in rest:
        if not isinstance(obj, Proxy | NodeProxy):
            return []
        try:
            obj = getattr(obj, part)
        except AttributeError:
            return []
    if not isinstance(obj, Proxy | NodeProxy):
        return []
    return [f"{match['owner']}.{name}" for name in dir(obj) if name.startswith(match["prefix"])]


def install_completer(shell: Any, session: ShellSession) -> Any:
    """Add our matcher to IPython's completer (the v2 matcher API of IPython >= 8.6)."""
    from IPython.core.completer import CompletionContext, SimpleCompletion, context_matcher

    @context_matcher()  # type: ignore[untyped-decorator]
    def karabo_matcher(context: CompletionContext) -> dict[str, Any]:
        ids = device_id_completions(context.text_until_cursor, session.device_ids())
        if ids:
            return {"completions": [SimpleCompletion(i, type="device") for i in ids], "suppress": True}
        attrs = attribute_completions(context.token, shell.user_ns)
        return {"completions": [SimpleCompletion(a, type="property") for a in attrs], "suppress": False}

    shell.Completer.custom_matchers.append(karabo_matcher)
    return karabo_matcher


BANNER = """karabo-async shell: domain {domain}, connected as {client}.
The client API is imported (connect_device, get_device, set_wait, wait_until, ...); `await` works at
the prompt. Tab completes device ids in strings and properties/slots of proxies. Ctrl-D leaves.
"""


def run_shell(broker: str | None, domain: str | None) -> int:
    """Start IPython (blocking) with the session's loop as its ``await`` runner."""
    from IPython.terminal.interactiveshell import TerminalInteractiveShell

    session = ShellSession(broker, domain)
    client = session.start()
    try:
        shell = TerminalInteractiveShell(
            banner1=BANNER.format(domain=client.domain, client=client.instance_id),
            user_ns=namespace(session),
        )
        shell.autoawait = True
        shell.loop_runner = session.run
        install_completer(shell, session)
        shell.confirm_exit = False
        shell.show_banner()  # type: ignore[no-untyped-call]
        shell.mainloop()  # type: ignore[no-untyped-call]
    finally:
        session.stop()
    return 0
