"""Helpers shared by the bench scripts: timing, percentiles, event-loop choice, result tables.

A bench script measures the framework beside a baseline in the same run and reports the ratio,
because absolute numbers on a shared 2-core machine move by a third between runs while ratios
measured side by side move much less. Each event-loop flavour runs in a child process of its own
(:func:`run_children`), so that nothing one loop leaves behind (connections, caches, a loop policy)
colours the other's numbers.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T")

LOOPS = ("asyncio", "uvloop")
Better = Literal["higher", "lower"]


# --- timing ---------------------------------------------------------------------------------------
class Stopwatch:
    """Wall time of a block, in seconds: ``with Stopwatch() as sw: ...; sw.elapsed``."""

    def __init__(self) -> None:
        self.start = 0.0
        self.stop = 0.0

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return (self.stop or time.perf_counter()) - self.start


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition with a deadline; a bench that hangs tells what it was waiting for."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.005)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Say on stderr what is being measured and how long it took, so a slow run shows where."""
    started = time.perf_counter()
    print(f"  {name} ...", file=sys.stderr, flush=True)
    yield
    print(f"  {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


# --- event loops ----------------------------------------------------------------------------------
def run_with_loop(main: Callable[[], Awaitable[T]], loop: str) -> T:
    """Run a coroutine function on the default asyncio loop or on uvloop."""
    if loop == "asyncio":
        factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    elif loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    else:
        raise ValueError(f"unknown event loop {loop!r}: use one of {', '.join(LOOPS)}")

    async def wrapped() -> T:
        return await main()

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(wrapped())


# --- results --------------------------------------------------------------------------------------
@dataclass(slots=True)
class Row:
    """One metric measured for the framework and the baseline.

    ``target`` is checked by :func:`check_target`: ``("ratio>=", 0.9)`` compares framework/baseline,
    ``("framework<", 50.0)`` the framework's own value.
    """

    metric: str
    unit: str
    framework: float
    baseline: float | None
    better: Better = "higher"
    target: tuple[str, float] | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0 or math.isnan(self.baseline):
            return None
        return self.framework / self.baseline


@dataclass(slots=True)
class LoopResult:
    """Everything one child process measured on one event loop."""

    loop: str
    rows: list[Row] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoopResult:
        data: dict[str, Any] = json.loads(text)
        rows = [Row(**{**r, "target": tuple(r["target"]) if r["target"] else None}) for r in data["rows"]]
        return cls(data["loop"], rows, data["checks"], data["notes"], data["seconds"])


def check_target(row: Row) -> bool | None:
    """True/False when the row has a target, None when it has none."""
    if row.target is None:
        return None
    kind, limit = row.target
    if kind == "ratio>=":
        return row.ratio is not None and row.ratio >= limit
    if kind == "framework<":
        return row.framework < limit
    raise ValueError(f"unknown target kind {kind!r}")


def describe_target(row: Row) -> str:
    if row.target is None:
        return ""
    kind, limit = row.target
    return f"ratio >= {limit:g}" if kind == "ratio>=" else f"< {limit:g} {row.unit}"


def run_children(script: str, loops: Sequence[str], extra_args: Sequence[str]) -> list[LoopResult]:
    """Run ``script --child --loop L --out FILE`` once per loop and collect what each measured.

    The child's stderr (progress) passes through; a failing child stops the bench with its exit code.
    """
    results: list[LoopResult] = []
    for loop in loops:
        print(f"== {loop}", file=sys.stderr, flush=True)
        fd, out = tempfile.mkstemp(prefix=f"bench-{loop}-", suffix=".json")
        os.close(fd)
        try:
            cmd = [sys.executable, script, "--child", "--loop", loop, "--out", out, *extra_args]
            proc = subprocess.run(cmd, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"bench child for {loop} failed with exit code {proc.returncode}")
            with open(out, encoding="utf-8") as f:
                results.append(LoopResult.from_json(f.read()))
        finally:
            os.unlink(out)
    return results


# --- tables ---------------------------------------------------------------------------------------
def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "ratio":
        return f"{value:.2f}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table_rows(results: Sequence[LoopResult]) -> tuple[list[str], list[list[str]]]:
    """Column headers and cells: one line per metric, one framework/baseline/ratio group per loop."""
    headers = ["metric"]
    for r in results:
        headers += [f"{r.loop}: framework", f"{r.loop}: raw aio-pika", f"{r.loop}: ratio"]
    headers.append("target")
    cells: list[list[str]] = []
    for i, first in enumerate(results[0].rows):
        line = [f"{first.metric} ({first.unit})"]
        for r in results:
            row = r.rows[i]
            ok = check_target(row)
            mark = "" if ok is None else " ok" if ok else " MISS"
            ratio = _fmt(row.ratio, "ratio")
            if row.target is not None and row.target[0] == "ratio>=":
                # three digits where a target is checked, so that 0.896 does not read as a met 0.90
                ratio = "-" if row.ratio is None else f"{row.ratio:.3f}{mark}"
                framework = _fmt(row.framework)
            else:
                framework = _fmt(row.framework) + mark
            line += [framework, _fmt(row.baseline), ratio]
        line.append(describe_target(first))
        cells.append(line)
    return headers, cells


def print_table(title: str, headers: Sequence[str], cells: Sequence[Sequence[str]], style: str) -> None:
    """``rich`` (default when installed), ``plain`` text, or ``markdown`` (for docs/)."""
    if style == "rich":
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            style = "plain"
        else:
            table = Table(title=title)
            for i, h in enumerate(headers):
                table.add_column(h, justify="left" if i == 0 else "right")
            for line in cells:
                table.add_row(*line)
            widths = [max(len(h), *(len(line[i]) for line in cells)) for i, h in enumerate(headers)]
            Console(width=max(80, sum(w + 3 for w in widths) + 1)).print(table)
            return
    if style == "markdown":
        print(f"**{title}**\n")
        print("| " + " | ".join(headers) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
        for line in cells:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(h), *(len(line[i]) for line in cells)) for i, h in enumerate(headers)]
    print(title)
    print(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    for line in cells:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
