"""Macros: scripted procedures that are instances on the broker while they run.

A macro is a :class:`Device` (instance type ``macro``) whose properties are its parameters plus
``state``, ``status``, ``outcome`` and ``output``. :meth:`Macro.execute` runs ``run()`` once:

* success: state STOPPED, outcome ``finished``;
* the ``cancel`` slot (or a cancelled ``execute``): the run is cancelled at its next await, its
  ``finally`` blocks run, state STOPPED, outcome ``cancelled``;
* an exception: state ERROR, outcome ``failed``, the traceback appended to ``output``.

What the macro prints and logs (``self.log.info("step", i=i)``) is appended to ``output`` and sent
as the ``output`` signal, so that other clients can follow a run. Inside ``run`` the module-level
client functions (``connect_device``, ``set_wait`` ...) act for the macro.

A :class:`MacroServer` device loads the macros of a folder (and files added later), lists them with
their parameter schemas, starts runs and cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import difflib
import itertools
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, TextIO

import structlog

from .device import Device, to_wire
from .errors import MacroError
from .hash import Hash
from .hub import Hub
from .plugins import import_file
from .properties import PropertySpec
from .proxy import manager_of
from .schema import Property, schema_of, slot
from .signalslot import reset_current_instance, set_current_instance
from .states import State

log = structlog.get_logger(__name__)

MAX_OUTPUT = 64 * 1024
"""Characters of output a macro keeps in its ``output`` property (the oldest are dropped)."""
OUTPUT_SIGNAL = "output"
OUTCOMES = ("", "running", "finished", "cancelled", "failed")

# --- print and log capture --------------------------------------------------------------------------

_running_macro: contextvars.ContextVar[Macro | None] = contextvars.ContextVar("running_macro", default=None)


class _StdoutRouter:
    """Stands in for ``sys.stdout`` while macros run: what a macro's task prints goes to that macro's
    output; everything else goes to the real stdout. Installed with the first running macro and
    removed with the last, so a process without macros keeps its own stdout."""

    def __init__(self, inner: TextIO) -> None:
        self.inner = inner

    def write(self, text: str) -> int:
        macro = _running_macro.get()
        if macro is None:
            return self.inner.write(text)
        macro.append_output(text)
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


_router: _StdoutRouter | None = None
_router_users = 0


def _install_router() -> None:
    global _router, _router_users
    if _router_users == 0 or _router is None or sys.stdout is not _router:
        _router = _StdoutRouter(sys.stdout)
        sys.stdout = _router
    _router_users += 1


def _remove_router() -> None:
    global _router, _router_users
    _router_users = max(0, _router_users - 1)
    if _router_users == 0 and _router is not None:
        if sys.stdout is _router:
            sys.stdout = _router.inner
        _router = None


def real_stdout() -> TextIO:
    """The process's stdout, also while macros capture ``print``."""
    return _router.inner if _router is not None else sys.stdout


class MacroLog:
    """``self.log`` of a macro: each event becomes one line of the macro's output."""

    def __init__(self, macro: Macro) -> None:
        self._macro = macro

    def _line(self, level: str, event: str, fields: Mapping[str, Any]) -> None:
        stamp = time.strftime("%H:%M:%S")
        extra = "".join(
            f" {key}={value!r}" if isinstance(value, str) else f" {key}={value}"
            for key, value in fields.items()
        )
        self._macro.append_output(f"{stamp} {level:<7} {event}{extra}\n")

    def debug(self, event: str, **fields: Any) -> None:
        self._line("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._line("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._line("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._line("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._line("error", event, fields)
        self._macro.append_output(traceback.format_exc())


# --- the macro --------------------------------------------------------------------------------------


class Macro(Device):
    """Base class of macros: declare parameters as properties and write ``async def run(self)``."""

    outcome: str = Property("", readonly=True, options=OUTCOMES, description="How the last run ended")
    output: str = Property(
        "", readonly=True, archive=False, description="What the macro printed and logged (the latest 64 KiB)"
    )

    _counter: ClassVar[itertools.count[int]] = itertools.count(1)

    def __init__(self, configuration: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(configuration, **kwargs)
        self.signalslot.instance_type = "macro"
        self.log = MacroLog(self)
        self.output_listeners: list[Callable[[str], None]] = []
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def parameters(cls) -> dict[str, PropertySpec]:
        """The properties a user sets: what the macro class adds to :class:`Macro`, except readonly
        ones (those are its results)."""
        own = schema_of(Macro).properties
        return {
            path: spec
            for path, spec in schema_of(cls).properties.items()
            if path not in own and not spec.readonly
        }

    @classmethod
    def results(cls) -> list[str]:
        """The readonly properties the macro class adds: what a run leaves behind."""
        own = schema_of(Macro).properties
        return [path for path, spec in schema_of(cls).properties.items() if path not in own and spec.readonly]

    @classmethod
    def parameter_document(cls) -> dict[str, Any]:
        """The schema document restricted to the parameters (what a macro server lists)."""
        doc = schema_of(cls).to_document()
        names = cls.parameters()
        doc["properties"] = {p: entry for p, entry in doc["properties"].items() if p in names}
        doc["slots"] = {}
        return doc

    async def run(self) -> None:
        """The macro's work; override it."""
        raise NotImplementedError(f"{type(self).__name__} does not define run()")

    @slot
    async def cancel(self) -> None:
        """Stop the run at its next await; its ``finally`` blocks run, then the state is STOPPED."""
        if self._task is not None and not self._task.done():
            self.append_output("cancel requested\n")
            self._task.cancel()

    def append_output(self, text: str) -> None:
        if not text:
            return
        output = (self._values.get("output", "") + text)[-MAX_OUTPUT:]
        self.set_property("output", output)
        if self.online:
            self.signalslot._spawn(self.signalslot.emit(OUTPUT_SIGNAL, text))
        for listener in list(self.output_listeners):
            try:
                listener(text)
            except Exception as exc:  # a broken listener must not break the macro
                log.warning("macro output listener failed", macro=self.device_id, error=str(exc))

    async def execute(self) -> str:
        """Run ``run()`` once (the macro must be online); returns the outcome. Cancelling ``execute``
        cancels the run the same way as the ``cancel`` slot, then re-raises."""
        self.set_properties({"state": State.RUNNING, "status": "running", "outcome": "running"})
        started = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run_in_context(), name=self.device_id)
        interrupted = False
        try:
            await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if self._task.done():
                pass  # the run itself was cancelled (the cancel slot)
            else:
                interrupted = True
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
        except Exception:  # the run raised: _record reports it (output, state, log line)
            pass
        seconds = time.monotonic() - started
        outcome = self._record(self._task, seconds)
        await manager_of(self.signalslot).close()
        if interrupted:
            raise asyncio.CancelledError
        return outcome

    async def _run_in_context(self) -> None:
        token = set_current_instance(self.signalslot)
        macro_token = _running_macro.set(self)
        _install_router()
        try:
            await self.run()
        finally:
            _remove_router()
            _running_macro.reset(macro_token)
            reset_current_instance(token)

    def _record(self, task: asyncio.Task[None], seconds: float) -> str:
        if task.cancelled():
            self.set_properties(
                {"state": State.STOPPED, "status": f"cancelled after {seconds:.1f} s", "outcome": "cancelled"}
            )
            return "cancelled"
        exc = task.exception()
        if exc is not None:
            self.append_output("".join(traceback.format_exception(exc)))
            log.info("macro failed", macro=self.device_id, error=f"{type(exc).__name__}: {exc}")
            self.set_properties(
                {"state": State.ERROR, "status": f"failed: {type(exc).__name__}: {exc}", "outcome": "failed"}
            )
            return "failed"
        self.set_properties(
            {"state": State.STOPPED, "status": f"finished in {seconds:.1f} s", "outcome": "finished"}
        )
        return "finished"

    @classmethod
    def new_id(cls, prefix: str = "") -> str:
        """``<prefix>-<Class>-<n>``; the prefix defaults to ``<host>-<pid>`` so that runs started on
        one host at the same time never claim the same id."""
        from .hub import short_hostname

        return f"{prefix or f'{short_hostname()}-{os.getpid()}'}-{cls.__name__}-{next(Macro._counter)}"


# --- loading macro files ----------------------------------------------------------------------------


def load_macro_file(path: str | Path) -> dict[str, type[Macro]]:
    """The Macro classes a file defines, by class name; MacroError (one line) when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise MacroError(f"no macro file {str(path)!r}")
    try:
        module = import_file(path, "karabo_macros")
    except SyntaxError as exc:
        raise MacroError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from exc
    except Exception as exc:
        raise MacroError(f"{path}: importing it raised {type(exc).__name__}: {exc}") from exc
    return _macro_classes(module)


def _macro_classes(module: ModuleType) -> dict[str, type[Macro]]:
    return {
        value.__name__: value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Macro)
        and value is not Macro
        and value.__module__ == module.__name__
    }


def pick_macro(classes: Mapping[str, type[Macro]], name: str | None, origin: str) -> type[Macro]:
    if not classes:
        raise MacroError(f"{origin} defines no Macro subclass")
    if name is None:
        if len(classes) > 1:
            raise MacroError(f"{origin} defines several macros ({', '.join(sorted(classes))}): name one")
        return next(iter(classes.values()))
    cls = classes.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, list(classes), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (it has {', '.join(sorted(classes))})"
        raise MacroError(f"{origin} has no macro {name!r}{hint}")
    return cls


async def run_macro(
    cls: type[Macro],
    params: Mapping[str, Any] | None = None,
    *,
    broker: str | None = None,
    domain: str | None = None,
    hub: Hub | None = None,
    device_id: str | None = None,
    on_output: Callable[[str], None] | None = None,
) -> Macro:
    """Start a macro instance, run it once and take it offline; returns the finished macro (its
    ``outcome``, ``output`` and any results it stored are readable). Bad parameters raise
    ConfigurationError before anything goes online."""
    macro = cls(
        dict(params or {}), device_id=device_id or cls.new_id(), hub=hub, broker=broker, domain=domain
    )
    if on_output is not None:
        macro.output_listeners.append(on_output)
    await macro.start_device()
    try:
        await macro.execute()
    finally:
        await macro.stop_device()
    return macro


# --- the macro server -------------------------------------------------------------------------------


class MacroServer(Device):
    """Offers the macros of some folders: lists them, runs them, cancels runs, keeps their output."""

    macro_dirs: list[str] = Property(["macros"], init_only=True, description="Folders with macro files")
    scan_interval: float = Property(1.0, ge=0.05, init_only=True, unit="s", description="Folder scan period")
    macros: list[str] = Property([], readonly=True, description="Names of the macros offered")
    running: list[str] = Property([], readonly=True, description="Instance ids of runs in progress")
    load_errors: list[str] = Property([], readonly=True, description="Macro files that failed to load")
    history: int = Property(100, ge=1, description="Finished runs kept for get_run")

    def __init__(self, configuration: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(configuration, **kwargs)
        self.classes: dict[str, type[Macro]] = {}
        self.origins: dict[str, str] = {}
        self.runs: dict[str, Macro] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._files: dict[Path, float] = {}
        self._errors: dict[str, str] = {}
        self._watcher: asyncio.Task[None] | None = None

    async def on_initialization(self) -> None:
        self.scan()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def on_destruction(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def scan(self) -> bool:
        """Load new and changed macro files; True when something changed."""
        changed = False
        for folder in map(Path, self.macro_dirs):
            for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
                if path.name.startswith("_"):
                    continue
                mtime = path.stat().st_mtime
                if self._files.get(path) == mtime:
                    continue
                self._files[path] = mtime
                changed = True
                try:
                    classes = load_macro_file(path)
                except MacroError as exc:
                    self._errors[str(path)] = str(exc)
                    log.warning("macro file not loaded", server=self.device_id, error=str(exc))
                    continue
                self._errors.pop(str(path), None)
                for name, cls in classes.items():
                    if self.origins.get(name, str(path)) != str(path):
                        log.warning(
                            "macro name defined twice; the later file wins", macro=name, file=str(path)
                        )
                    self.classes[name] = cls
                    self.origins[name] = str(path)
        if changed:
            self.set_properties(
                {"macros": sorted(self.classes), "load_errors": sorted(self._errors.values())}
            )
        return changed

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.scan_interval)
            try:
                self.scan()
            except OSError as exc:
                log.warning("macro folder scan failed", server=self.device_id, error=str(exc))

    # --- slots ----------------------------------------------------------------------------------
    @slot
    def list_macros(self) -> dict[str, Any]:
        """``{name: {"description", "file", "schema"}}`` with each macro's parameter schema."""
        return {
            name: {
                "description": (cls.__doc__ or "").strip(),
                "file": self.origins.get(name, ""),
                "schema": cls.parameter_document(),
            }
            for name, cls in sorted(self.classes.items())
        }

    @slot
    async def run_macro(self, name: str, params: Mapping[str, Any] | None = None) -> str:
        """Start a run of macro ``name``; returns the run's instance id once it is online."""
        cls = pick_macro(self.classes, str(name), f"macro server {self.device_id}")
        values = params.to_dict() if isinstance(params, Hash) else dict(params or {})
        macro = cls(
            values, device_id=cls.new_id(self.device_id), hub=self.signalslot.hub, server_id=self.device_id
        )
        await macro.start_device()
        self.runs[macro.device_id] = macro
        self._tasks[macro.device_id] = asyncio.get_running_loop().create_task(self._run(macro))
        self.set_property("running", sorted(self._tasks))
        return macro.device_id

    @slot
    async def cancel_macro(self, run_id: str) -> None:
        """Cancel a run in progress (its ``finally`` blocks run)."""
        macro = self.runs.get(run_id)
        if macro is None or run_id not in self._tasks:
            raise MacroError(f"{self.device_id} has no run {run_id!r} in progress")
        await macro.cancel()

    @slot
    def get_run(self, run_id: str) -> dict[str, Any]:
        """State, outcome, status, parameters and output of a run (in progress or finished)."""
        macro = self.runs.get(run_id)
        if macro is None:
            raise MacroError(f"{self.device_id} knows no run {run_id!r}")
        return {
            "macro": type(macro).__name__,
            "state": macro.state.value,
            "outcome": macro.outcome,
            "status": macro.status,
            "output": macro.output,
            "parameters": {p: to_wire(macro._values.get(p)) for p in type(macro).parameters()},
            "results": {p: to_wire(macro._values.get(p)) for p in type(macro).results()},
        }

    async def _run(self, macro: Macro) -> None:
        try:
            outcome = await macro.execute()
        except asyncio.CancelledError:
            outcome = "cancelled"
        finally:
            self._tasks.pop(macro.device_id, None)
            await macro.stop_device()
            self._forget_old_runs()
            self.set_property("running", sorted(self._tasks))
        await self.emit("run_finished", macro.device_id, outcome)

    def _forget_old_runs(self) -> None:
        finished = [run_id for run_id in self.runs if run_id not in self._tasks]
        for run_id in finished[: max(0, len(finished) - self.history)]:
            del self.runs[run_id]


__all__ = ["Macro", "MacroLog", "MacroServer", "load_macro_file", "pick_macro", "real_stdout", "run_macro"]
