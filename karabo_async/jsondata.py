"""Plain JSON data of the values the framework hands out, for ``--json`` output.

The CLI and the archive services each put a few types of their own first (a Hash, an array
reference) and leave everything else to :func:`json_data`; it lives down here so that both layers
may use it.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .timestamp import Timestamp


def json_data(value: Any, inner: Callable[[Any], Any]) -> Any:
    """``value`` as JSON data: mappings, sequences and sets with their items passed through
    ``inner`` (the caller's own converter, so its special types are seen at every depth),
    timestamps as ISO text, numpy arrays and scalars as Python ones, enums by value, bytes as
    base64, anything else unknown as its ``str``."""
    if isinstance(value, Mapping):
        return {str(k): inner(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [inner(v) for v in value]
    if isinstance(value, Timestamp):
        return value.to_iso()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, enum.Enum):
        return inner(value.value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)
